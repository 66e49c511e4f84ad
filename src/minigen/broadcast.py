"""Time-broadcast helpers shared by every part: a time given as a scalar or (B,) tensor made to
broadcast against a batch x of shape (B, ...).
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
