"""Time and label embeddings shared by the image networks.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Transformer sinusoids of the time (Vaswani et al., 2017; Ho et al., 2020, App. B).

        e(t) = [sin(s·t·w_0), ..., sin(s·t·w_{h-1}), cos(s·t·w_0), ..., cos(s·t·w_{h-1})],
        w_i = 10000^(-i / h),  h = dim / 2.

    t in [0, 1] is first multiplied by ``scale`` = 1000, so the fastest frequency
    resolves the 1000 discrete steps of DDPM. Shapes: t (B,) -> (B, dim).
    """
    if dim % 2:
        raise ValueError(f"embedding dim must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=t.dtype) / half)
    angles = scale * t[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], 1)

def add_label_embedding(emb: torch.Tensor, label_emb: nn.Embedding | None, num_classes: int | None,
                        cond: torch.Tensor | None, batch: int, name: str) -> torch.Tensor:
    """emb + label_emb(cond) for integer labels cond (B,) in 0..num_classes, where num_classes is
    the null label used when cond is None (classifier-free guidance); emb alone for a network
    without labels. Shapes: emb (B, E) -> (B, E)."""
    if label_emb is None:
        if cond is not None:
            raise ValueError(f"this {name} has no labels (num_classes=None) but got cond")
        return emb
    if cond is None:
        cond = torch.full((batch,), num_classes, dtype=torch.long, device=emb.device)
    if cond.shape != (batch,) or cond.dtype.is_floating_point:
        raise ValueError(f"cond must be integer labels of shape ({batch},), got "
                         f"{cond.dtype} {tuple(cond.shape)}")
    if cond.numel() and (cond.min() < 0 or cond.max() > num_classes):
        raise ValueError(f"labels must be in 0..{num_classes} ({num_classes} = null)")
    return emb + label_emb(cond.long())
