"""Network cost per call, in floating-point operations, for "quality at equal compute"
comparisons (chapter 08: latent vs pixel models; chapters 09–10: NFE budgets).

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass: the
matrix multiplications and convolutions (2 FLOPs per multiply-add), which dominate these
networks; elementwise operations and normalisations are not counted. A sampler's cost per
sample is then NFE x the network's FLOPs per sample (+ one decoder pass for a latent model).
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def forward_flops(fn, *args, **kwargs) -> int:
    """FLOPs of one call ``fn(*args, **kwargs)`` (a network or any function of tensors)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


def flops_per_sample(fn, *args, **kwargs) -> float:
    """``forward_flops`` divided by the batch size (the first dimension of the first argument)."""
    if not args or not torch.is_tensor(args[0]) or args[0].ndim == 0:
        raise ValueError("the first argument must be a batched tensor")
    return forward_flops(fn, *args, **kwargs) / len(args[0])
