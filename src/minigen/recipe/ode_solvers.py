"""ODE solvers for a velocity field v(x, t) (DESIGN.md, part 4 of 5).

A solver takes a velocity model and a time grid; it knows nothing of training
(the split of Meta's flow_matching). Fixed-step methods take ``steps`` equal
steps from ``t0`` to ``t1`` (either direction); ``dopri5`` is adaptive
(Dormand & Prince, 1980, via torchdiffeq). Every call returns the samples, the
number of function evaluations (NFE) and, on request, the trajectory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Tensor = torch.Tensor
Velocity = Callable[[Tensor, Tensor], Tensor]


@dataclass
class ODESolution:
    """x: (B, ...) at t1; nfe: velocity evaluations; trajectory: (K+1, B, ...) or None;
    times: (K+1,) the grid the trajectory lives on."""

    x: Tensor
    nfe: int
    trajectory: Tensor | None = None
    times: Tensor | None = None


def _v(v: Velocity, x: Tensor, t: float | Tensor) -> Tensor:
    return v(x, torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device))


def euler_step(v: Velocity, x: Tensor, t: float, h: float) -> Tensor:
    """x + h v(x, t). Order 1, 1 NFE."""
    return x + h * _v(v, x, t)


def midpoint_step(v: Velocity, x: Tensor, t: float, h: float) -> Tensor:
    """x + h v(x + h/2 v(x, t), t + h/2). Order 2, 2 NFE."""
    return x + h * _v(v, x + 0.5 * h * _v(v, x, t), t + 0.5 * h)


def heun_step(v: Velocity, x: Tensor, t: float, h: float) -> Tensor:
    """Trapezoid predictor–corrector: x + h/2 (k1 + v(x + h k1, t + h)). Order 2, 2 NFE."""
    k1 = _v(v, x, t)
    return x + 0.5 * h * (k1 + _v(v, x + h * k1, t + h))


def rk4_step(v: Velocity, x: Tensor, t: float, h: float) -> Tensor:
    """Classical Runge–Kutta. Order 4, 4 NFE."""
    k1 = _v(v, x, t)
    k2 = _v(v, x + 0.5 * h * k1, t + 0.5 * h)
    k3 = _v(v, x + 0.5 * h * k2, t + 0.5 * h)
    k4 = _v(v, x + h * k3, t + h)
    return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


FIXED_STEP = {"euler": (euler_step, 1), "midpoint": (midpoint_step, 2),
              "heun": (heun_step, 2), "rk4": (rk4_step, 4)}
METHODS = (*FIXED_STEP, "dopri5")


def integrate(v: Velocity, x: Tensor, method: str = "euler", steps: int = 100,
              t0: float = 0.0, t1: float = 1.0, rtol: float = 1e-5, atol: float = 1e-5,
              return_trajectory: bool = False, grad: bool = False) -> ODESolution:
    """Solve dx/dt = v(x, t) from t0 to t1.

    ``grad=False`` runs under ``torch.no_grad()`` (sampling); pass True to
    differentiate through the solve. For dopri5, ``steps`` only sets how many
    points of the trajectory are returned.
    """
    if method not in METHODS:
        raise ValueError(f"unknown solver {method!r}; choose from {METHODS}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
        if method == "dopri5":
            return _dopri5(v, x, steps, t0, t1, rtol, atol, return_trajectory)
        step, nfe_per_step = FIXED_STEP[method]
        h = (t1 - t0) / steps
        traj = [x] if return_trajectory else None
        for k in range(steps):
            x = step(v, x, t0 + k * h, h)
            if traj is not None:
                traj.append(x)
        times = torch.linspace(t0, t1, steps + 1)
        return ODESolution(x, steps * nfe_per_step,
                           torch.stack(traj) if traj is not None else None, times)


def _dopri5(v, x, steps, t0, t1, rtol, atol, return_trajectory) -> ODESolution:
    from torchdiffeq import odeint

    nfe = 0

    def f(t, y):
        nonlocal nfe
        nfe += 1
        return _v(v, y, t)

    times = torch.linspace(t0, t1, steps + 1 if return_trajectory else 2, dtype=x.dtype)
    ys = odeint(f, x, times.to(x.device), method="dopri5", rtol=rtol, atol=atol)
    return ODESolution(ys[-1], nfe, ys if return_trajectory else None, times)


def sample(v: Velocity, x0: Tensor, method: str = "euler", steps: int = 100, **kw) -> ODESolution:
    """Push source samples x0 (t = 0) to data (t = 1)."""
    return integrate(v, x0, method, steps, 0.0, 1.0, **kw)
