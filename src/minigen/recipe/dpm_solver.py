"""DPM-Solver and DPM-Solver++ (book/design.md, part 4 of 5): exponential integrators of the
probability-flow ODE of a Gaussian path, written in minigen's time (t = 0 noise, t = 1 data).

With lambda = log(alpha / sigma) (``time_grids.log_snr``) the ODE of x_t = alpha x1 + sigma x0
has an exact linear part; only the network's prediction is approximated, by a Taylor expansion
in lambda (Lu et al., 2022, "DPM-Solver", eq. 3.4; Lu et al., 2022b, "DPM-Solver++", eq. 9).
Stepping from s to t > s, h = lambda_t - lambda_s > 0, e^{-h} = alpha_s sigma_t / (sigma_s alpha_t):

    noise prediction eps:  x_t = (alpha_t / alpha_s) x_s - sigma_t (e^{h} - 1) eps(x_s, s)  + ...
    data prediction x1:    x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - e^{-h}) x1(x_s, s) + ...

The first-order terms are DDIM (Song et al., 2021) in both forms; on the linear path DDIM is
also Euler. Higher orders add differences of predictions at intermediate lambdas (singlestep,
DPM-Solver-2 / -3) or at earlier grid points (multistep, DPM-Solver++(2M)). The papers run
time from data (t = 0) to noise (t = T): their (alpha_t, sigma_t, lambda_t) at time t are our
alpha, sigma, lambda at the same noise level, so the formulas carry over with steps taken
toward larger lambda. Any network is used through ``wrappers.converted`` (a velocity network
on the linear path gives exact eps and x1 predictions). Every sampler returns a
``SampleResult`` counting NFE.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from minigen.broadcast import batch_time
from minigen.recipe.grid_solvers import check_grid
from minigen.recipe.paths import GaussianPath
from minigen.recipe.results import SampleResult
from minigen.recipe.time_grids import log_snr_times, time_at_log_snr

Tensor = torch.Tensor
Prediction = Callable[..., Tensor]  # eps(x, t, **cond) or x1(x, t, **cond), t of shape (B,)


def _alpha_sigma(path: GaussianPath, t: float) -> tuple[float, float]:
    tt = torch.tensor([t], dtype=torch.float64)
    return float(path.alpha(tt)), float(path.sigma(tt))


def dpm_solver_step(eps: Prediction, path: GaussianPath, x: Tensor, s: float, t: float,
                    order: int, **cond) -> Tensor:
    """One singlestep DPM-Solver step from s to t > s of ``order`` 1, 2 or 3 (Lu et al., 2022,
    eq. 3.7 and Algs. 1-2 with r1 = 1/2, resp. r1 = 1/3, r2 = 2/3); costs ``order`` NFE.

        order 1:  x_t = (a_t/a_s) x - s_t (e^h - 1) e_s
        order 2:  u = (a_1/a_s) x - s_1 (e^{h/2} - 1) e_s,   x_t = (a_t/a_s) x - s_t (e^h - 1) eps(u, s1)
        order 3:  u1, D1 = eps(u1, s1) - e_s, u2 (with D1), D2 = eps(u2, s2) - e_s,
                  x_t = (a_t/a_s) x - s_t (e^h - 1) e_s - (s_t / r2) ((e^h - 1)/h - 1) D2
    """
    if order not in (1, 2, 3):
        raise ValueError(f"DPM-Solver order must be 1, 2 or 3, got {order!r}")
    a_s, s_s = _alpha_sigma(path, s)
    a_t, s_t = _alpha_sigma(path, t)
    lam_s, lam_t = math.log(a_s / s_s), math.log(a_t / s_t)
    h = lam_t - lam_s
    e_s = eps(x, batch_time(s, x), **cond)

    def point(r: float) -> tuple[float, float, float]:  # the time at lambda_s + r h, its a, s
        ti = float(time_at_log_snr(path, torch.tensor(lam_s + r * h, dtype=torch.float64)))
        return (ti, *_alpha_sigma(path, ti))

    if order == 1:
        return (a_t / a_s) * x - s_t * math.expm1(h) * e_s
    if order == 2:
        t1, a1, s1 = point(0.5)
        u = (a1 / a_s) * x - s1 * math.expm1(0.5 * h) * e_s
        return (a_t / a_s) * x - s_t * math.expm1(h) * eps(u, batch_time(t1, x), **cond)
    r1, r2 = 1 / 3, 2 / 3
    t1, a1, s1 = point(r1)
    t2, a2, s2 = point(r2)
    u1 = (a1 / a_s) * x - s1 * math.expm1(r1 * h) * e_s
    d1 = eps(u1, batch_time(t1, x), **cond) - e_s
    u2 = ((a2 / a_s) * x - s2 * math.expm1(r2 * h) * e_s
          - (s2 * r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * d1)
    d2 = eps(u2, batch_time(t2, x), **cond) - e_s
    return (a_t / a_s) * x - s_t * math.expm1(h) * e_s - (s_t / r2) * (math.expm1(h) / h - 1) * d2


def fast_orders(nfe: int, order: int) -> list[int]:
    """The order of each step for a budget of ``nfe`` evaluations: as many steps of ``order`` as
    fit, the remainder as one lower-order step (DPM-Solver-fast's idea, Lu et al., 2022, §3.4,
    without its exact recipe). E.g. (10, 3) -> [3, 3, 3, 1]."""
    if not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe must be a positive integer, got {nfe!r}")
    if order not in (1, 2, 3):
        raise ValueError(f"DPM-Solver order must be 1, 2 or 3, got {order!r}")
    return [order] * (nfe // order) + ([nfe % order] if nfe % order else [])


def dpm_solver(eps: Prediction, path: GaussianPath, x: Tensor, nfe: int, order: int = 2,
               t0: float = 1e-3, t1: float = 1 - 1e-3, times: Tensor | None = None,
               **cond) -> SampleResult:
    """Singlestep DPM-Solver of ``order`` with ``nfe`` evaluations, on a log-SNR-uniform grid
    from t0 to t1 (or on ``times``, one step per interval; then nfe must equal the orders'
    sum). ``eps`` predicts the source x0 (epsilon); x: (B, ...) the draw at t0."""
    orders = fast_orders(nfe, order)
    times = log_snr_times(path, len(orders), t0, t1) if times is None else check_grid(times)
    if len(times) != len(orders) + 1:
        raise ValueError(f"{len(orders)} steps of orders {orders} need {len(orders) + 1} grid times, "
                         f"got {len(times)}")
    with torch.no_grad():
        for k, o in enumerate(orders):
            x = dpm_solver_step(eps, path, x, float(times[k]), float(times[k + 1]), o, **cond)
    return SampleResult(x, nfe, times=times)


def multistep_2m(predict_x1: Callable[[Tensor, int], Tensor], x: Tensor, alphas: Tensor,
                 sigmas: Tensor, lower_order_final: bool = False) -> SampleResult:
    """DPM-Solver++(2M) on a schedule given by its values (Lu et al., 2022b, Alg. 2): the grid
    points k = 0..K have (alpha_k, sigma_k), and ``predict_x1(x, k)`` is the data prediction at
    point k. With D_1 = x1_0 and, for k >= 2, r = h_{k-1} / h_k,

        D_k = (1 + 1/(2r)) x1_{k-1} - 1/(2r) x1_{k-2},
        x_k = (sigma_k / sigma_{k-1}) x_{k-1} + alpha_k (1 - e^{-h_k}) D_k.

    One NFE per step. ``lower_order_final`` takes the last step at first order (diffusers'
    option for few steps)."""
    alphas, sigmas = (torch.as_tensor(a, dtype=torch.float64).flatten() for a in (alphas, sigmas))
    if len(alphas) != len(sigmas) or len(alphas) < 2:
        raise ValueError("alphas and sigmas need the same length, at least 2")
    lam = torch.log(alphas) - torch.log(sigmas)
    steps, prev, h_prev = len(alphas) - 1, None, None
    with torch.no_grad():
        for k in range(1, steps + 1):
            x1 = predict_x1(x, k - 1)
            h = float(lam[k] - lam[k - 1])
            if prev is None or (lower_order_final and k == steps):
                d = x1
            else:
                r = h_prev / h
                d = (1 + 0.5 / r) * x1 - (0.5 / r) * prev
            x = float(sigmas[k] / sigmas[k - 1]) * x - float(alphas[k]) * math.expm1(-h) * d
            prev, h_prev = x1, h
    return SampleResult(x, steps)


def dpm_solver_pp_2m(x1_model: Prediction, path: GaussianPath, x: Tensor, steps: int,
                     t0: float = 1e-3, t1: float = 1 - 1e-3, times: Tensor | None = None,
                     lower_order_final: bool = False, **cond) -> SampleResult:
    """DPM-Solver++(2M) with ``steps`` NFE on a log-SNR-uniform grid from t0 to t1 (or on
    ``times``): ``multistep_2m`` with the path's alpha and sigma. ``x1_model`` predicts the
    data; x: (B, ...) the draw at t0."""
    times = log_snr_times(path, steps, t0, t1) if times is None else check_grid(times)
    alphas, sigmas = path.alpha(times), path.sigma(times)
    res = multistep_2m(lambda y, k: x1_model(y, batch_time(times[k], y), **cond), x, alphas, sigmas,
                       lower_order_final)
    return SampleResult(res.x, res.nfe, times=times)


def ddim(x1_model: Prediction, path: GaussianPath, x: Tensor, times: Tensor, **cond) -> SampleResult:
    """DDIM on any grid (Song et al., 2021, eq. 12), first-order DPM-Solver++ written with the
    predicted source: x_t = (sigma_t / sigma_s) x_s + (alpha_t - sigma_t alpha_s / sigma_s) x1_hat
    = alpha_t x1_hat + sigma_t eps_hat. Starts at t = 0 if the grid does (sigma_s > 0 is all it
    needs) and ends at t = 1 exactly. ``x1_model`` predicts the data. NFE = K."""
    times = check_grid(times)
    with torch.no_grad():
        for s, t in zip(times[:-1].tolist(), times[1:].tolist()):
            a_s, s_s = _alpha_sigma(path, s)
            a_t, s_t = _alpha_sigma(path, t)
            x = (s_t / s_s) * x + (a_t - s_t * a_s / s_s) * x1_model(x, batch_time(s, x), **cond)
    return SampleResult(x, len(times) - 1, times=times)
