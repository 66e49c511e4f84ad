"""Samplers of the generative SDE of a score model (book/design.md, part 4 of 5): Euler–Maruyama
with a free diffusion coefficient and predictor–corrector (Song et al., 2021, "Score-Based
Generative Modeling through SDEs", §4 and Algs. 1-5). All integrate minigen's time from the
prior at ``sde.t_min`` (noise) to ``sde.t_max`` (data); ``score_fn(x, t, **cond)`` takes t of
shape (B,). Every sampler returns a ``SampleResult`` and passes its extra keywords to the score
function as the model's condition."""

from __future__ import annotations

import math

import torch

from minigen.broadcast import batch_time, expand_t
from minigen.recipe.results import SampleResult
from minigen.recipe.sde import SDE, ScoreFn

Tensor = torch.Tensor


def _grid(sde: SDE, steps: int) -> Tensor:
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    return torch.linspace(sde.t_min, sde.t_max, steps + 1, dtype=torch.float64)


def _noise(x: Tensor, generator: torch.Generator) -> Tensor:
    """z ~ N(0, I) like x (drawn on the generator's device, CPU, then moved)."""
    return torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)


def _start(sde: SDE, shape, generator, dtype, x_init, device) -> Tensor:
    """The prior draw (on the CPU generator, then moved to ``device``), or ``x_init``."""
    if x_init is not None:
        return x_init
    return sde.prior_sample(shape, generator, dtype).to(device or "cpu")


def euler_maruyama(sde: SDE, score_fn: ScoreFn, shape, generator: torch.Generator, steps: int = 500,
                   diffusion_scale: float = 1.0, dtype: torch.dtype = torch.float32,
                   x_init: Tensor | None = None, device: torch.device | str | None = None,
                   return_trajectory: bool = False, **cond) -> SampleResult:
    """Sample the generative SDE with diffusion e = ``diffusion_scale`` · g(t) by Euler–Maruyama
    from the prior at t_min to t_max (Song et al., 2021, §4.1; scale 1 is the reverse-time SDE,
    0 the probability-flow ODE with Euler steps):

        x_{t+h} = x_t + h reverse_drift(x_t, t, score) + e(t) sqrt(h) z.

    ``x_init`` replaces the prior draw. NFE = steps. x: (shape)."""
    if not diffusion_scale >= 0:
        raise ValueError(f"diffusion_scale must be >= 0, got {diffusion_scale}")
    times = _grid(sde, steps)
    x = _start(sde, shape, generator, dtype, x_init, device)
    traj = [x] if return_trajectory else None
    for t, t_next in zip(times[:-1], times[1:]):
        h, tt = float(t_next - t), batch_time(t, x)
        e = diffusion_scale * sde.diffusion(tt).to(x.dtype)
        x = x + h * sde.reverse_drift(x, tt, score_fn(x, tt, **cond), e)
        if diffusion_scale > 0:
            x = x + expand_t(e, x) * math.sqrt(h) * _noise(x, generator)
        if traj is not None:
            traj.append(x)
    return SampleResult(x, steps, torch.stack(traj) if traj is not None else None, times)


def langevin_corrector_step(sde: SDE, score_fn: ScoreFn, x: Tensor, t: Tensor, alpha_ratio: float,
                            snr: float, generator: torch.Generator, **cond) -> Tensor:
    """One Langevin step x + e grad log p_t(x) + sqrt(2 e) z with the step size from the
    signal-to-noise ratio r = ``snr``:  e = 2 alpha_i (r ||z|| / ||grad log p_t||)²
    (Song et al., 2021, Algs. 4 (VE, alpha_i = 1) and 5 (VP, alpha_i = 1 - beta_i)); here
    alpha_i = (alpha(t - h) / alpha(t))², which is 1 for VE and 1 - beta_i for VP. The norms are
    batch means of per-sample norms, so one step size serves the batch: per sample, ||z|| /
    ||grad|| is heavy-tailed in low dimension (a sample near a mode has a tiny score and would
    take a huge step). (B, ...)."""
    grad = score_fn(x, t, **cond)
    z = _noise(x, generator)
    ratio = z.flatten(1).norm(dim=1).mean() / grad.flatten(1).norm(dim=1).mean().clamp_min(1e-12)
    eps = 2 * alpha_ratio * (snr * ratio) ** 2
    return x + eps * grad + (2 * eps).sqrt() * z


def predictor_corrector(sde: SDE, score_fn: ScoreFn, shape, generator: torch.Generator,
                        steps: int = 500, snr: float = 0.16, n_corrector: int = 1,
                        dtype: torch.dtype = torch.float32, x_init: Tensor | None = None,
                        device: torch.device | str | None = None, return_trajectory: bool = False,
                        **cond) -> SampleResult:
    """Predictor–corrector sampling (Song et al., 2021, Alg. 1; Algs. 2-3 for VE / VP): at each
    step an Euler–Maruyama predictor of the reverse-time SDE from t to t + h, then
    ``n_corrector`` Langevin corrector steps at t + h (``langevin_corrector_step``).
    ``x_init`` replaces the prior draw. NFE = steps (1 + n_corrector). x: (shape)."""
    if not snr > 0:
        raise ValueError(f"snr must be > 0, got {snr}")
    if not isinstance(n_corrector, int) or n_corrector < 0:
        raise ValueError(f"n_corrector must be a non-negative integer, got {n_corrector!r}")
    times = _grid(sde, steps)
    x = _start(sde, shape, generator, dtype, x_init, device)
    traj = [x] if return_trajectory else None
    for t, t_next in zip(times[:-1], times[1:]):
        h, tt, tn = float(t_next - t), batch_time(t, x), batch_time(t_next, x)
        g = sde.diffusion(tt).to(x.dtype)
        x = x + h * sde.reverse_drift(x, tt, score_fn(x, tt, **cond))
        x = x + expand_t(g, x) * math.sqrt(h) * _noise(x, generator)
        alpha_ratio = float(sde.path.alpha(t) / sde.path.alpha(t_next)) ** 2
        for _ in range(n_corrector):
            x = langevin_corrector_step(sde, score_fn, x, tn, alpha_ratio, snr, generator, **cond)
        if traj is not None:
            traj.append(x)
    return SampleResult(x, steps * (1 + n_corrector), torch.stack(traj) if traj is not None else None,
                        times)
