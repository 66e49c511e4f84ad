"""PFGM++: Poisson flows with D augmented dimensions (Xu, Liu, Tian, Tegmark & Jaakkola, 2023).

Data x in R^N are augmented with D extra dimensions; a charge at y in the
N+D dimensional space, seen from the hyperplane at augmented radius r, gives
the perturbation kernel (PFGM++, §3)

    p_r(x | y) = C(N, D) r^D / (||x - y||² + r²)^((N+D)/2),
    C(N, D)    = Gamma((N+D)/2) / (pi^(N/2) Gamma(D/2)),

a multivariate Student t with D degrees of freedom and scale r / sqrt(D).
With the alignment r = sigma sqrt(D) (§4) it tends to N(y, sigma² I) as
D -> infinity (``D = math.inf`` here means that Gaussian limit, i.e. EDM).

Training is EDM's (Karras et al., 2022, Table 1): a preconditioned denoiser
D_theta(x, sigma) regresses the clean y from x ~ p_r(. | y), sigma log-normal,
weight lambda(sigma) = (sigma² + sigma_data²) / (sigma sigma_data)². Sampling
integrates the ODE dx/dsigma = (x - D_theta(x, sigma)) / sigma (PFGM++ §4,
for every D) from sigma_max to sigma_min with ``solvers.heun_step`` on EDM's
rho = 7 grid; minigen's time t in [0, 1] indexes the grid (t = 0 noise =
sigma_max, t = 1 data = sigma_min).

Not a Gaussian path: conversions to epsilon or a Gaussian score do not apply
for finite D, so this module stands apart from ``paths.py`` (book/design.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from minigen.recipe.ode_solvers import heun_step
from minigen.recipe.results import LossResult, SampleResult
from minigen.recipe.time_samplers import log_normal_sigma

Tensor = torch.Tensor
Denoiser = Callable[[Tensor, Tensor], Tensor]  # D(x (B, ...), sigma (B,)) -> (B, ...)


# ---------------------------------------------------------------- checks

def check_D(D: float) -> float:
    """D must be a positive number of augmented dimensions, or math.inf (the Gaussian limit)."""
    if isinstance(D, bool) or not isinstance(D, (int, float)) or not D > 0:
        raise ValueError(f"D (augmented dimensions) must be > 0 or math.inf, got {D!r}")
    return float(D)


def _sigma_column(sigma, x: Tensor) -> Tensor:
    """sigma (scalar or (B,)) as a (B, 1, ...) tensor broadcasting against x (B, ...), checked > 0."""
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.ndim == 0:
        s = s.expand(x.shape[0])
    if s.shape != (x.shape[0],):
        raise ValueError(f"sigma must be a scalar or of shape ({x.shape[0]},), got {tuple(s.shape)}")
    if not bool((s > 0).all()):
        raise ValueError("sigma must be > 0")
    return s.view(-1, *([1] * (x.ndim - 1)))


def radius_from_sigma(sigma, D: float):
    """The alignment r = sigma sqrt(D) (PFGM++ §4); D = inf has no finite radius."""
    D = check_D(D)
    if math.isinf(D):
        raise ValueError("D = inf has no finite radius: use sigma directly (the Gaussian kernel)")
    return sigma * math.sqrt(D)


# ---------------------------------------------------------------- the kernel

def perturbation(shape, sigma, D: float, generator: torch.Generator,
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """x - y for x ~ p_r(. | y), r = sigma sqrt(D): (B, *S), with N = prod(S).

    PFGM++ §3 and App. B: the radius R = ||x - y|| has density proportional to
    R^(N-1) / (R² + r²)^((N+D)/2). Substituting B = R² / (R² + r²) turns it into
    B^(N/2 - 1) (1 - B)^(D/2 - 1), so B ~ Beta(N/2, D/2) and

        R = r sqrt(B / (1 - B)),   x - y = R u,   u uniform on the unit sphere S^(N-1).

    D = inf draws sigma * N(0, I). ``sigma``: scalar or (B,). The Beta draws come from
    numpy, seeded from ``generator``, so a seeded generator gives the same draws.
    """
    D = check_D(D)
    shape = tuple(shape)
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"shape must be (B, ...) with positive sizes, got {shape}")
    g = torch.randn(shape, generator=generator, dtype=torch.float64)
    s = _sigma_column(sigma, g)
    if math.isinf(D):
        return (s * g).to(dtype)
    n = math.prod(shape[1:])
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
    b = rng.beta(n / 2, D / 2, size=shape[0])
    ratio = b / np.maximum(1.0 - b, np.finfo(np.float64).tiny)
    radius = s * math.sqrt(D) * torch.from_numpy(np.sqrt(ratio)).view(s.shape)
    u = g / g.flatten(1).norm(dim=1).view_as(s)
    return (radius * u).to(dtype)


def kernel_log_prob(x: Tensor, y: Tensor, sigma, D: float) -> Tensor:
    """log p_r(x | y) with r = sigma sqrt(D), normalised on R^N (PFGM++ §3): (B,).

        log p = log Gamma((N+D)/2) - N/2 log pi - log Gamma(D/2) + D log r
                - (N+D)/2 log(||x - y||² + r²).

    D = inf gives log N(x; y, sigma² I). x: (B, *S); y: (B, *S) or broadcastable; sigma: scalar or (B,).
    """
    D = check_D(D)
    if x.ndim < 2:
        raise ValueError(f"x must be (B, ...), got shape {tuple(x.shape)}")
    s = _sigma_column(sigma, x).flatten()
    n = math.prod(x.shape[1:])
    d2 = (x - y).flatten(1).pow(2).sum(1)
    if math.isinf(D):
        return -0.5 * d2 / s**2 - n * torch.log(s) - 0.5 * n * math.log(2 * math.pi)
    r = s * math.sqrt(D)
    log_c = math.lgamma((n + D) / 2) - 0.5 * n * math.log(math.pi) - math.lgamma(D / 2)
    return log_c + D * torch.log(r) - 0.5 * (n + D) * torch.log(d2 + r**2)


def expected_squared_radius(n: int, sigma: float, D: float) -> float:
    """E ||x - y||² under the kernel: r² N / (D - 2) = sigma² N D / (D - 2) for D > 2,
    infinite for D <= 2, and N sigma² for D = inf.

    From B ~ Beta(N/2, D/2): E[B / (1 - B)] = (N/2) / (D/2 - 1) (a beta-prime mean).
    """
    D = check_D(D)
    if math.isinf(D):
        return n * sigma**2
    if D <= 2:
        return math.inf
    return sigma**2 * D * n / (D - 2)


def exact_denoiser(x: Tensor, data: Tensor, sigma, D: float, weights: Tensor | None = None) -> Tensor:
    """E[y | x] for y drawn from a finite data set (with ``weights``) and x ~ p_r(. | y).

    The posterior is proportional to w_i p_r(x | y_i), so the minimiser of the
    denoising loss is  sum_i softmax_i(log w_i + log p_r(x | y_i)) y_i  for any D.
    x: (B, *S), data: (M, *S), sigma: scalar or (B,), weights: (M,) or None -> (B, *S).
    """
    if data.ndim != x.ndim or data.shape[1:] != x.shape[1:]:
        raise ValueError(f"data must be (M, {tuple(x.shape[1:])}), got {tuple(data.shape)}")
    b, m = x.shape[0], data.shape[0]
    s = _sigma_column(sigma, x).flatten()
    xs = x.unsqueeze(1).expand(b, m, *x.shape[1:]).reshape(b * m, *x.shape[1:])
    ys = data.unsqueeze(0).expand(b, m, *x.shape[1:]).reshape(b * m, *x.shape[1:])
    logits = kernel_log_prob(xs, ys, s.repeat_interleave(m), D).view(b, m)
    if weights is not None:
        logits = logits + torch.log(weights.to(x.dtype)).view(1, m)
    post = torch.softmax(logits, dim=1)
    return (post @ data.flatten(1)).view_as(x)


# ---------------------------------------------------------------- EDM's denoiser and loss

def edm_scalings(sigma: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EDM preconditioning (Karras et al., 2022, Table 1): (c_skip, c_out, c_in, c_noise), each like sigma.

    c_skip = sd² / (sigma² + sd²), c_out = sigma sd / sqrt(sigma² + sd²),
    c_in = 1 / sqrt(sigma² + sd²), c_noise = log(sigma) / 4.
    """
    v = sigma**2 + sigma_data**2
    return sigma_data**2 / v, sigma * sigma_data / v.sqrt(), 1 / v.sqrt(), sigma.log() / 4


class EDMDenoiser(nn.Module):
    """D_theta(x, sigma) = c_skip x + c_out F_theta(c_in x, c_noise) (Karras et al., 2022, eq. 7).

    ``net(x, t)`` is any minigen network (MLP, UNet); it receives c_noise as its time.
    Shapes: x (B, ...), sigma (B,) or scalar -> (B, ...).
    """

    def __init__(self, net: nn.Module, sigma_data: float):
        super().__init__()
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
        self.net, self.sigma_data = net, float(sigma_data)

    def forward(self, x: Tensor, sigma, **cond) -> Tensor:
        s = _sigma_column(sigma, x)
        c_skip, c_out, c_in, c_noise = edm_scalings(s, self.sigma_data)
        return c_skip * x + c_out * self.net(c_in * x, c_noise.flatten(), **cond)


def edm_weight(sigma: Tensor, sigma_data: float) -> Tensor:
    """lambda(sigma) = (sigma² + sd²) / (sigma sd)² = 1 / c_out² (Karras et al., 2022, Table 1)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


@dataclass
class PFGMppLoss:
    """E_{sigma, y, x ~ p_r(.|y)} lambda(sigma) ||D_theta(x, sigma) - y||², r = sigma sqrt(D)
    (PFGM++ §4 with EDM's training: ln sigma ~ N(p_mean, p_std²), Karras et al., 2022, Table 1).

    ``loss(model, y, generator, per_sample)`` is a ``train.train`` loss_fn; ``model`` is an
    ``EDMDenoiser``. Per-sample losses are means over the data dimensions; no time is returned.
    """

    D: float
    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2

    def __post_init__(self):
        self.D = check_D(self.D)
        if not self.sigma_data > 0 or not self.p_std > 0:
            raise ValueError(f"need sigma_data > 0 and p_std > 0, got {self.sigma_data}, {self.p_std}")

    def sample_sigma(self, n: int, generator: torch.Generator) -> Tensor:
        """ln sigma ~ N(p_mean, p_std²): (n,) (``time_samplers.log_normal_sigma``)."""
        return log_normal_sigma(n, generator, self.p_mean, self.p_std)

    def per_sample_loss(self, model, y: Tensor, generator: torch.Generator) -> Tensor:
        """(B,) weighted squared errors, averaged over the data dimensions."""
        sigma = self.sample_sigma(y.shape[0], generator).to(y)
        x = y + perturbation(y.shape, sigma, self.D, generator, y.dtype).to(y.device)
        err = (model(x, sigma) - y).flatten(1).pow(2).mean(1)
        return edm_weight(sigma, self.sigma_data) * err

    def loss(self, model, y: Tensor, generator: torch.Generator, per_sample: bool = False) -> LossResult:
        ps = self.per_sample_loss(model, y, generator)
        return LossResult(ps.mean(), ps.detach() if per_sample else None, None)


# ---------------------------------------------------------------- sampling

def edm_sigma(t, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0):
    """EDM's grid in minigen time: sigma(t) = (smax^(1/rho) + t (smin^(1/rho) - smax^(1/rho)))^rho
    (Karras et al., 2022, eq. 5), so t = 0 is sigma_max (noise) and t = 1 is sigma_min (data)."""
    if not 0 < sigma_min < sigma_max or not rho > 0:
        raise ValueError(f"need 0 < sigma_min < sigma_max and rho > 0, got {sigma_min}, {sigma_max}, {rho}")
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (a + t * (b - a)) ** rho


def velocity_in_sigma(denoiser: Denoiser) -> Callable[..., Tensor]:
    """dx/dsigma = (x - D(x, sigma)) / sigma: PFGM++'s ODE (§4: dx/dr = (x - E[y | x]) / r, and
    r = sigma sqrt(D) gives the same field in sigma for every D; EDM's ODE is the D = inf case).
    The clock is sigma, not t: for D = inf it is the probability-flow velocity of
    ``recipe.wrappers`` written in sigma; kept in sigma because Heun steps on EDM's sigma grid.
    Shapes: x (B, ...), sigma (B,) -> (B, ...)."""

    def v(x: Tensor, sigma: Tensor, **cond) -> Tensor:
        return (x - denoiser(x, sigma, **cond)) / sigma.view(-1, *([1] * (x.ndim - 1)))

    return v


def prior_sample(shape, sigma_max: float, D: float, generator: torch.Generator) -> Tensor:
    """x ~ p_{r_max}(. | 0), the kernel centred at the origin: PFGM++'s prior (§3; data are
    negligible next to r_max). (B, *S)."""
    return perturbation(shape, sigma_max, D, generator)


def sample(denoiser: Denoiser, x: Tensor, steps: int = 18, sigma_min: float = 0.002,
           sigma_max: float = 80.0, rho: float = 7.0, noise: float = 0.0,
           generator: torch.Generator | None = None, return_trajectory: bool = False, **cond) -> SampleResult:
    """Integrate the PFGM++ ODE from sigma_max (t = 0) to sigma_min (t = 1) with ``steps`` Heun
    steps in sigma between the grid points sigma_k = edm_sigma(k / steps) (Karras et al., 2022,
    Alg. 1 without churn and without its last Euler step to sigma = 0). NFE = 2 steps.

    The steps are taken in sigma, not in t: far from the data x - D(x, sigma) is proportional
    to sigma, so the field is nearly constant in sigma and few large steps stay accurate.
    ``noise`` = alpha > 0 adds alpha sigma_(k+1) n, n ~ N(0, I), after every step: PFGM++'s
    robustness test (§6, Gaussian noise of scale alpha sigma_t added to the states).
    x: (B, ...) prior samples -> SampleResult with x (B, ...) and ``times`` = the sigma grid;
    ``cond`` goes to the denoiser.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if noise < 0 or (noise > 0 and generator is None):
        raise ValueError("noise must be >= 0, and noise > 0 needs a generator")
    sig = edm_sigma(torch.linspace(0, 1, steps + 1, dtype=torch.float64), sigma_min, sigma_max, rho)
    v, traj = velocity_in_sigma(denoiser), [x] if return_trajectory else None
    with torch.no_grad():
        for k in range(steps):
            x = heun_step(v, x, float(sig[k]), float(sig[k + 1] - sig[k]), **cond)
            if noise > 0:
                x = x + noise * float(sig[k + 1]) * torch.randn(x.shape, generator=generator).to(x)
            if traj is not None:
                traj.append(x)
    return SampleResult(x, 2 * steps, torch.stack(traj) if traj is not None else None, sig)
