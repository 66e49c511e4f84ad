"""Time-broadcast helpers shared by every part: ``expand_t`` makes a time (scalar or (B,)) or
any per-sample coefficient broadcast against a batch x of shape (B, ...); ``batch_time`` gives
one time to the whole batch as the (B,) tensor a model takes; ``check_time`` (and the
``time_checked`` wrapper every method of a path, gamma schedule or SDE that takes t gets,
``time_checked_methods``) rejects a t outside [0, 1].
"""

from __future__ import annotations

import functools
import inspect
import threading

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


T_SLACK = 1e-6  # float rounding at the ends of [0, 1]: t = 1 + 1e-7 is accepted as 1
_inside = threading.local()  # set while a checked call runs: its nested schedule calls skip


def check_time(t, path: str, fn: str = "") -> None:
    """Raise ValueError unless every t (a number or a tensor of any shape) lies in the time domain
    [0, 1] (within ``T_SLACK``; NaN is refused): a schedule evaluated outside it extrapolates
    silently (the VP cosine path's alpha(1.5) would be sin(0.75 pi) = 0.71, a valid-looking
    number). One reduction and one host sync per call."""
    if isinstance(t, (int, float)):
        lo = hi = float(t)
    else:
        t = torch.as_tensor(t)
        if not t.numel():
            return
        lo, hi = torch.stack(torch.aminmax(t.detach())).tolist()
    if not (-T_SLACK <= lo and hi <= 1 + T_SLACK):  # written so that NaN is refused too
        raise ValueError(f"{path}.{fn}: t must lie in [0, 1] (t = 0 source, t = 1 data), "
                         f"got t in [{lo:.6g}, {hi:.6g}]")


def time_checked(fn):
    """A method ``fn(self, ..., t, ...)`` that checks its argument t first (``check_time``, named
    after the class and the method). Calls made while it runs (SubVPPath.sigma calling its VP
    path's alpha, a conversion calling alpha, sigma, ...) are not checked again: they get the
    same t, and a training step then costs one check, not one per schedule call."""
    names = list(inspect.signature(fn).parameters)[1:]  # after self
    pos = names.index("t") if "t" in names else 0

    @functools.wraps(fn)
    def method(self, *args, **kwargs):
        if getattr(_inside, "on", False):
            return fn(self, *args, **kwargs)
        t = args[pos] if len(args) > pos else kwargs.get("t", 0.0)  # no t: fn raises TypeError
        check_time(t, type(self).__name__, fn.__name__)
        _inside.on = True
        try:
            return fn(self, *args, **kwargs)
        finally:
            _inside.on = False
    method.time_checked = True
    return method


def time_checked_methods(cls):
    """Wrap every method ``cls`` defines that has an argument named t with ``time_checked``
    (once; usable as a class decorator) and return ``cls``."""
    for name, fn in list(vars(cls).items()):
        if inspect.isfunction(fn) and "t" in inspect.signature(fn).parameters \
                and not getattr(fn, "time_checked", False):
            setattr(cls, name, time_checked(fn))
    return cls
