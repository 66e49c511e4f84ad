"""Time-broadcast helpers shared by every part: ``expand_t`` makes a time (scalar or (B,)) or
any per-sample coefficient broadcast against a batch x of shape (B, ...); ``batch_time`` gives
one time to the whole batch as the (B,) tensor a model takes; ``check_time`` (and the
``time_checked`` decorator every path's schedule gets) rejects a t outside [0, 1].
"""

from __future__ import annotations

import functools

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


T_SLACK = 1e-6  # float rounding at the ends of [0, 1]


def check_time(t, path: str, fn: str = "") -> None:
    """Raise ValueError unless every t (float or tensor) lies in the time domain [0, 1]
    (within ``T_SLACK``): a schedule evaluated outside it extrapolates silently (the VP cosine
    path's alpha(1.5) would be sin(0.75 pi) = 0.71, a valid-looking number)."""
    lo, hi = (float(t.min()), float(t.max())) if isinstance(t, torch.Tensor) and t.numel() else \
        (float(t), float(t)) if not isinstance(t, torch.Tensor) else (0.0, 0.0)
    if lo < -T_SLACK or hi > 1 + T_SLACK or lo != lo or hi != hi:
        raise ValueError(f"{path}.{fn}: t must lie in [0, 1] (t = 0 source, t = 1 data), "
                         f"got t in [{lo:.6g}, {hi:.6g}]")


def time_checked(fn):
    """A schedule method that checks its t first (``check_time``)."""
    @functools.wraps(fn)
    def method(self, t, *args, **kwargs):
        check_time(t, type(self).__name__, fn.__name__)
        return fn(self, t, *args, **kwargs)
    method.time_checked = True
    return method
