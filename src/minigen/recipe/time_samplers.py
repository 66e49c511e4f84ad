"""Time samplers: where on [0, 1] a training loss looks (book/design.md, part 3 of 5).

* ``sample_time``: uniform, logit-normal and mode sampling (Esser et al., 2024,
  "Scaling Rectified Flow Transformers", eqs. 19-20), and a constant time (one-step
  distillation, Liu et al., 2023);
* ``LikelihoodTimeSampler``: importance sampling q(t) ∝ g(t)² / sigma(t)² for the
  likelihood-weighted score-matching loss (Song, Durkan et al., 2021, §5);
* ``log_normal_sigma``: EDM's noise-level sampler ln sigma ~ N(p_mean, p_std²)
  (Karras et al., 2022, Table 1), used by PFGM++.
"""

from __future__ import annotations

import math

import torch

from minigen.recipe.sde import SDE

Tensor = torch.Tensor


TIME_SAMPLERS = ("uniform", "logit_normal", "mode", "constant")

MODE_SCALE_MAX = 2.0 / (math.pi - 2.0)  # f_mode is monotone on [0, 1] for -1 <= s <= this

def mode_map(u: Tensor, scale: float) -> Tensor:
    """f_mode(u; s) = 1 - u - s (cos²(pi u / 2) - 1 + u) (Esser et al., 2024, eq. 20).

    Monotone on [0, 1] for -1 <= s <= 2 / (pi - 2); s = 0 is the reversed identity 1 - u
    (uniform t). f(1 - u) = 1 - f(u), so the density is symmetric about 1/2 and the same in
    their time (t = 1 noise) and ours (t = 0 noise). Shapes: u (n,) -> (n,).
    """
    check_mode_scale(scale)
    return 1 - u - scale * (torch.cos(0.5 * math.pi * u) ** 2 - 1 + u)

def check_mode_scale(scale: float) -> None:
    """Raise ValueError unless -1 <= s <= 2 / (pi - 2), where f_mode is a bijection of [0, 1]."""
    if not -1.0 <= scale <= MODE_SCALE_MAX:
        raise ValueError(f"mode scale must be in [-1, 2/(pi-2) = {MODE_SCALE_MAX:.3f}], got {scale}")

def mode_time_density(t: Tensor, scale: float, iters: int = 60) -> Tensor:
    """pi_mode(t; s) = |d f_mode^{-1}(t) / dt| = 1 / |f'(u)| at u = f^{-1}(t), with
    f'(u) = -1 + s (pi/2 sin(pi u) - 1); f is inverted by bisection. Shapes: t (n,) -> (n,)."""
    t = t.double()
    lo, hi = torch.zeros_like(t), torch.ones_like(t)
    for _ in range(iters):  # f is decreasing: f(mid) > t means the root lies to the right
        mid = 0.5 * (lo + hi)
        right = mode_map(mid, scale) > t
        lo, hi = torch.where(right, mid, lo), torch.where(right, hi, mid)
    u = 0.5 * (lo + hi)
    return 1.0 / (1.0 - scale * (0.5 * math.pi * torch.sin(math.pi * u) - 1.0)).abs()

def check_time_sampler(sampler: str, loc: float = 0.0, scale: float = 1.0) -> None:
    """Raise ValueError for an unknown sampler or parameters outside its range."""
    if sampler not in TIME_SAMPLERS:
        raise ValueError(f"unknown time sampler {sampler!r}; choose from {TIME_SAMPLERS}")
    if sampler == "logit_normal" and not scale > 0:
        raise ValueError(f"logit-normal scale must be > 0, got {scale}")
    if sampler == "mode":
        check_mode_scale(scale)
    if sampler == "constant" and not 0.0 <= loc <= 1.0:
        raise ValueError(f"constant time (loc) must be in [0, 1], got {loc}")

def sample_time(n: int, generator: torch.Generator, sampler: str = "uniform",
                loc: float = 0.0, scale: float = 1.0) -> Tensor:
    """Training times t in [0, 1]: (n,).

    ``uniform``: t ~ U[0, 1]. ``logit_normal``: t = sigmoid(u), u ~ N(loc, scale²)
    (Esser et al., 2024, "Scaling Rectified Flow Transformers", eq. 19). ``mode``: mode
    sampling with heavy tails, t = f_mode(u; scale), u ~ U[0, 1] (their eq. 20; their best
    setting is scale = 1.29; ``mode_map``). ``constant``: t ≡ loc — with loc = 0 the CFM loss
    on reflow pairs is the one-step distillation loss E||v(Z0, 0) - (Z1 - Z0)||²
    (Liu et al., 2023, §2.3).
    """
    check_time_sampler(sampler, loc, scale)
    if sampler == "uniform":
        return torch.rand(n, generator=generator)
    if sampler == "logit_normal":
        return torch.sigmoid(loc + scale * torch.randn(n, generator=generator))
    if sampler == "mode":
        return mode_map(torch.rand(n, generator=generator), scale)
    return torch.full((n,), float(loc))

class LikelihoodTimeSampler:
    """Importance sampler of the training time, q(t) = g(t)² / (Z sigma(t)²) on [t_min, t_max]
    (Song, Durkan et al., 2021, §5), by inverting its CDF tabulated on ``grid`` points.

    The density grows like 1/(1 - t) at the data end of VP / sub-VP, so the table is geometric in
    s = 1 - t there. ``z`` = Z = ∫ g² / sigma² dt (trapezoid rule, float64).
    """

    def __init__(self, sde: SDE, grid: int = 4097):
        self.sde = sde
        s_lo, s_hi = 1 - sde.t_max, 1 - sde.t_min
        if s_lo > 0:
            s = torch.logspace(math.log10(s_lo), math.log10(s_hi), grid, dtype=torch.float64)
        else:
            s = torch.linspace(s_lo, s_hi, grid, dtype=torch.float64)
        t = (1 - s).flip(0)  # increasing t
        dens = sde.diffusion(t) ** 2 / sde.path.sigma(t) ** 2
        cdf = torch.cat([torch.zeros(1, dtype=torch.float64),
                         torch.cumsum(0.5 * (dens[1:] + dens[:-1]) * (t[1:] - t[:-1]), 0)])
        self.t, self.cdf, self.z = t, cdf / cdf[-1], float(cdf[-1])

    def density(self, t: Tensor) -> Tensor:
        """q(t) = g² / (Z sigma²): shape of t."""
        return self.sde.diffusion(t) ** 2 / self.sde.path.sigma(t) ** 2 / self.z

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """n times from q by linear interpolation of the inverse CDF: (n,) float32."""
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        i = torch.searchsorted(self.cdf, u).clamp(1, len(self.cdf) - 1)
        c0, c1, t0, t1 = self.cdf[i - 1], self.cdf[i], self.t[i - 1], self.t[i]
        return (t0 + (u - c0) / (c1 - c0).clamp_min(1e-300) * (t1 - t0)).float()

def log_normal_sigma(n: int, generator: torch.Generator, p_mean: float = -1.2,
                     p_std: float = 1.2) -> Tensor:
    """EDM's noise levels: ln sigma ~ N(p_mean, p_std²) (Karras et al., 2022, Table 1): (n,)."""
    return (p_mean + p_std * torch.randn(n, generator=generator)).exp()
