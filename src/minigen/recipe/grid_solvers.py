"""Fixed-step ODE solvers on any time grid (book/design.md, part 4 of 5).

``ode_solvers.integrate`` takes equal steps; the fast samplers of chapter 09 choose where the
steps go (a log-SNR grid, BOSS's dynamic programme), so this takes the grid itself: an
increasing (K+1,) tensor of times, and any one-step method of ``ode_solvers`` (Euler, midpoint,
Heun, RK4) applied on each interval. Returns a ``SampleResult`` with NFE = K x the method's
evaluations per step. The field is called as ``v(x, t, **cond)`` with t of shape (B,).
"""

from __future__ import annotations

import torch

from minigen.recipe.ode_solvers import FIXED_STEP, Velocity
from minigen.recipe.results import SampleResult

Tensor = torch.Tensor


def check_grid(times: Tensor) -> Tensor:
    """A grid as a strictly increasing (K+1,) float64 tensor inside [0, 1], K >= 1."""
    times = torch.as_tensor(times, dtype=torch.float64).flatten()
    if len(times) < 2 or not bool((times[1:] > times[:-1]).all()):
        raise ValueError(f"a time grid needs at least two strictly increasing times, got {times.tolist()}")
    if times[0] < 0 or times[-1] > 1:
        raise ValueError(f"grid times must lie in [0, 1], got [{float(times[0])}, {float(times[-1])}]")
    return times


def integrate_on_grid(v: Velocity, x: Tensor, times: Tensor, method: str = "euler",
                      return_trajectory: bool = False, **cond) -> SampleResult:
    """Solve dx/dt = v(x, t, **cond) from times[0] to times[-1], one ``method`` step per
    interval [t_k, t_{k+1}] (under no_grad). x: (B, ...) -> (B, ...)."""
    if method not in FIXED_STEP:
        raise ValueError(f"unknown fixed-step method {method!r}; choose from {tuple(FIXED_STEP)}")
    times = check_grid(times)
    step, per_step = FIXED_STEP[method]
    traj = [x] if return_trajectory else None
    with torch.no_grad():
        for t, t_next in zip(times[:-1].tolist(), times[1:].tolist()):
            x = step(v, x, t, t_next - t, **cond)
            if traj is not None:
                traj.append(x)
    return SampleResult(x, (len(times) - 1) * per_step,
                        torch.stack(traj) if traj is not None else None, times)
