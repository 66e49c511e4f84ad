"""Time grids for fixed-step samplers (book/design.md, part 4 of 5), in minigen's time: t = 0
the source (noise), t = 1 the data; a grid is an increasing (K+1,) float64 tensor of times.

    uniform_times      equal steps in t (what ``ode_solvers.integrate`` takes)
    log_snr            lambda(t) = log alpha(t) - log sigma(t), increasing in t
    time_at_log_snr    its inverse, by bisection (any path whose lambda is monotone)
    log_snr_times      equal steps in lambda: the grid DPM-Solver is derived on (Lu et al., 2022,
                       §3.3 "time-uniform vs logSNR-uniform"); it crowds the steps near the data
                       end, where alpha / sigma changes fastest
"""

from __future__ import annotations

import torch

from minigen.recipe.paths import GaussianPath

Tensor = torch.Tensor


def _check(steps: int, t0: float, t1: float) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not 0.0 <= t0 < t1 <= 1.0:
        raise ValueError(f"need 0 <= t0 < t1 <= 1, got t0 = {t0}, t1 = {t1}")


def uniform_times(steps: int, t0: float = 0.0, t1: float = 1.0) -> Tensor:
    """t_k = t0 + k (t1 - t0) / steps, k = 0..steps: (steps + 1,) float64."""
    _check(steps, t0, t1)
    return torch.linspace(t0, t1, steps + 1, dtype=torch.float64)


def log_snr(path: GaussianPath, t: Tensor) -> Tensor:
    """lambda(t) = log(alpha(t) / sigma(t)), half the log signal-to-noise ratio (Lu et al., 2022,
    eq. 3.2 writes it for alpha_t, sigma_t of the diffusion; here alpha multiplies the data).
    -inf where alpha = 0 (the source end), +inf where sigma = 0 (the data end)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return torch.log(path.alpha(t)) - torch.log(path.sigma(t))


def time_at_log_snr(path: GaussianPath, lam: Tensor, iters: int = 80) -> Tensor:
    """t with lambda(t) = lam, by bisection on [0, 1] (80 halvings: below float64's resolution).
    Needs lambda increasing in t, which every Gaussian path of minigen satisfies."""
    lam = torch.as_tensor(lam, dtype=torch.float64)
    lo, hi = torch.zeros_like(lam), torch.ones_like(lam)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        below = log_snr(path, mid) < lam
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return 0.5 * (lo + hi)


def log_snr_times(path: GaussianPath, steps: int, t0: float, t1: float) -> Tensor:
    """Times with lambda equally spaced from lambda(t0) to lambda(t1): (steps + 1,) float64.
    Both ends must have finite lambda (0 < t0, t1 < 1 on a path that hits its boundaries)."""
    _check(steps, t0, t1)
    ends = log_snr(path, torch.tensor([t0, t1], dtype=torch.float64))
    if not torch.isfinite(ends).all():
        raise ValueError(f"lambda(t) is infinite at t0 = {t0} or t1 = {t1} on {path!r}; "
                         "start a little after 0 and stop a little before 1")
    grid = time_at_log_snr(path, torch.linspace(float(ends[0]), float(ends[1]), steps + 1,
                                                dtype=torch.float64))
    grid[0], grid[-1] = t0, t1
    return grid
