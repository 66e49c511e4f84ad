"""Time-broadcast helpers shared by every part: ``expand_t`` makes a time (scalar or (B,)) or
any per-sample coefficient broadcast against a batch x of shape (B, ...); ``batch_time`` gives
one time to the whole batch as the (B,) tensor a model takes.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def expand_t(t: Tensor, x: Tensor) -> Tensor:
    """Reshape t of shape (B,) (or scalar) to broadcast against x of shape (B, ...)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be a scalar or have shape ({x.shape[0]},), got {tuple(t.shape)}")
    return t.view(-1, *([1] * (x.ndim - 1)))


def batch_time(t: float | Tensor, x: Tensor) -> Tensor:
    """The time t (a number or a 0-d tensor) for every sample of x: (B,) in x's dtype and device."""
    return torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
