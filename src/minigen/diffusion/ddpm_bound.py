"""The variational bound of a DDPM and the fits that tighten it (Ho et al., 2020, eq. 5;
Nichol & Dhariwal, 2021, §3; Bao et al., 2022):

    L = L_T + sum_{k=2}^T L_{k-1} + L_0,

each term a function of a ``DDPMSchedule`` and an epsilon model, in DDPM's discrete time and
names (``x1`` is the data, as in ``ddpm.py``'s table). The decoders of L_0 (discretized
Gaussian, ``LevelDecoder``) live in ``minigen.eval.bits``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from minigen.broadcast import expand_t
from minigen.diffusion.ddpm import DDPMSchedule, EpsModel
from minigen.eval.bits import LevelDecoder, discretized_gaussian_log_likelihood

Tensor = torch.Tensor


def kl_gaussians(mean1: Tensor, var1: Tensor, mean2: Tensor, var2: Tensor) -> Tensor:
    """KL(N(mean1, var1) || N(mean2, var2)) per element (broadcast), in nats:
    ½ (log(var2 / var1) + (var1 + (mean1 - mean2)²) / var2 - 1)."""
    var1, var2 = torch.as_tensor(var1), torch.as_tensor(var2)
    if (var1 <= 0).any() or (var2 <= 0).any():
        raise ValueError("kl_gaussians needs positive variances")
    return 0.5 * (torch.log(var2 / var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1)

def prior_kl(schedule: DDPMSchedule, x1: Tensor) -> Tensor:
    """L_T = KL(q(x_T | x1) || N(0, I)), summed over dimensions, in nats: (B,)."""
    ab = expand_t(schedule.alpha_bar[schedule.T].expand(len(x1)), x1)
    kl = kl_gaussians(ab.sqrt() * x1, 1 - ab, torch.zeros_like(x1), torch.ones_like(x1))
    return kl.flatten(1).sum(1)

def step_kl(schedule: DDPMSchedule, eps_model: EpsModel, x1: Tensor, k, noise: Tensor,
            variance: str = "beta") -> Tensor:
    """L_{k-1} = KL(q(x_{k-1} | x_k, x1) || p_theta(x_{k-1} | x_k)) at x_k = q_sample(x1, k,
    noise), for an epsilon model and fixed variance (Ho et al., 2020, eqs. 5, 11-12). k: int
    or (B,) in 2..T. Summed over dimensions, in nats: (B,)."""
    k = schedule.steps_tensor(k, len(x1), lo=2)
    xk = schedule.q_sample(x1, k, noise)
    mean, var = schedule.posterior_mean_variance(x1, xk, k)
    eps = eps_model(xk, schedule.t_of_k(k).to(xk))
    mean_p = schedule.epsilon_to_mean(eps, xk, k)
    var_p = schedule.model_variance(xk, k, variance=variance)
    return kl_gaussians(mean, expand_t(var, x1), mean_p, expand_t(var_p, x1)).flatten(1).sum(1)

def decoder_mean(schedule: DDPMSchedule, eps_model: EpsModel, x1: Tensor, noise: Tensor) -> Tensor:
    """mu_theta(x_{k=1}, 1) at x_{k=1} = q_sample(x1, 1, noise): the mean of the decoder
    p_theta(x1 | x_{k=1}) (Ho et al., 2020, eq. 11 at k = 1). (B, ...)."""
    x_step1 = schedule.q_sample(x1, 1, noise)
    return schedule.epsilon_to_mean(schedule.epsilon_at(eps_model, x_step1, 1), x_step1, 1)

def decoder_nll(schedule: DDPMSchedule, eps_model: EpsModel, x1: Tensor, noise: Tensor,
                bin_width: float = 2 / 255, low: float = -1.0, high: float = 1.0,
                std: float | None = None, decoder: LevelDecoder | None = None) -> Tensor:
    """L_0 = -log p_theta(x1 | x_{k=1}), the discretised Gaussian N(mu_theta(x_{k=1}, 1), std²)
    over the data's bins (Ho et al., 2020, eq. 13: std = sqrt(beta_1), the default;
    ``fitted_decoder_std`` fits it); ``unit_interval_bins`` gives the bins of
    ``data.to_unit_interval``. With ``decoder`` (a ``LevelDecoder``) the categorical decoder
    over the grey levels replaces the Gaussian. Summed over dimensions, nats: (B,)."""
    mean = decoder_mean(schedule, eps_model, x1, noise)
    if decoder is not None:
        return -decoder.log_prob(x1, mean).flatten(1).sum(1)
    std = math.sqrt(float(schedule.betas[1])) if std is None else std
    ll = discretized_gaussian_log_likelihood(x1, mean, std, bin_width, low, high)
    return -ll.flatten(1).sum(1)

def decoder_nll_continuous(schedule: DDPMSchedule, eps_model: EpsModel, x1: Tensor, noise: Tensor) -> Tensor:
    """L_0 for continuous data: -log N(x1; mu_theta(x_{k=1}, 1), beta_1 I), summed over
    dimensions, in nats: (B,). Use it for 2D toys, where there are no bins."""
    mean = decoder_mean(schedule, eps_model, x1, noise)
    var = float(schedule.betas[1])
    nll = 0.5 * ((x1 - mean) ** 2 / var + math.log(2 * math.pi * var))
    return nll.flatten(1).sum(1)

def nll_bound(schedule: DDPMSchedule, eps_model: EpsModel, x1: Tensor, generator: torch.Generator,
              variance: str | Tensor = "beta", bin_width: float | None = 2 / 255,
              terms: int | None = None, low: float = -1.0, high: float = 1.0,
              decoder_std: float | None = None, decoder: LevelDecoder | None = None) -> Tensor:
    """The bound L_T + sum_{k=2}^T L_{k-1} + L_0 in nats, one noise draw per term: (B,).

    ``terms=None`` evaluates all T - 1 middle terms (T network calls); ``terms=m`` replaces
    their sum by a stratified estimate: 2..T is cut into m strata of geometrically growing
    width (``bound_strata``), and each stratum contributes its width times the term at one
    k drawn uniformly in it, per sample — unbiased (Ho et al., 2020, eq. 5 as an expectation
    over k), and the small-k terms, which are the largest and change fastest, get strata of
    width 1. With ``bin_width`` the decoder gives probabilities of the data's bins (eq. 13),
    so the bound is on the discrete 0..255 data: divide by D log 2 for bits/dim, no change
    of variables. ``bin_width=None`` uses the Gaussian decoder density (continuous data);
    ``low``/``high`` are the centres of the edge bins (``unit_interval_bins``). ``variance``
    and ``decoder_std`` choose sigma_k² (``model_variance``) and the decoder's std;
    ``decoder`` replaces the Gaussian decoder by a ``LevelDecoder``."""
    def noise():
        return torch.randn(x1.shape, generator=generator, dtype=x1.dtype).to(x1.device)
    if bin_width is None:
        total = prior_kl(schedule, x1) + decoder_nll_continuous(schedule, eps_model, x1, noise())
    else:
        total = prior_kl(schedule, x1) + decoder_nll(schedule, eps_model, x1, noise(), bin_width, low, high,
                                                     decoder_std, decoder)
    if terms is None:
        for k in range(2, schedule.T + 1):
            total = total + step_kl(schedule, eps_model, x1, k, noise(), variance)
        return total
    edges = bound_strata(schedule, terms)
    for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist()):
        k = torch.randint(lo, hi, (len(x1),), generator=generator)
        total = total + (hi - lo) * step_kl(schedule, eps_model, x1, k, noise(), variance)
    return total

def bound_strata(schedule: DDPMSchedule, terms: int) -> Tensor:
    """Edges 2 = e_0 < e_1 < ... < e_m = T + 1 of at most ``terms`` strata [e_i, e_{i+1}) of
    the middle steps, geometric in k (rounded, duplicates dropped): (m + 1,) int64."""
    if not isinstance(terms, int) or terms < 1:
        raise ValueError(f"terms must be a positive integer or None, got {terms!r}")
    if schedule.T < 2:
        raise ValueError("the bound has middle terms only for T >= 2")
    geo = torch.logspace(math.log10(2), math.log10(schedule.T + 1), terms + 1, dtype=torch.float64)
    edges = torch.unique(geo.round().long())
    edges[0], edges[-1] = 2, schedule.T + 1
    return torch.unique(edges)

def fitted_step_variances(schedule: DDPMSchedule, eps_model: EpsModel, x1: Tensor, generator: torch.Generator,
                          grid: int = 50) -> Tensor:
    """Per-step variances that minimise the bound for a given epsilon model:

        sigma_k*² = beta_tilde_k + E ||mu_tilde(x_k, x1) - mu_theta(x_k, k)||² / d,

    the minimiser of E KL(N(mu_tilde, beta_tilde) || N(mu_theta, sigma²)) over an isotropic
    sigma² (set its derivative to zero). This is the per-step version of the learned
    variances of Nichol & Dhariwal (2021, §3.1) and, for an exact mean, the optimal
    variance of Analytic-DPM (Bao et al., 2022, Thm. 1); here it is measured from the
    model's own error on ``x1`` (training data) at ``grid`` geometric steps of 2..T; in
    between, log(sigma*² / beta_tilde) is interpolated linearly in k (the ratio is smooth,
    while sigma² itself spans two decades). Index 1 (decoder) and 0 hold beta_1 and 0.
    Returns (T+1,) float64."""
    if not isinstance(grid, int) or grid < 2:
        raise ValueError(f"grid must be an integer >= 2, got {grid!r}")
    geo = torch.logspace(math.log10(2), math.log10(schedule.T), grid, dtype=torch.float64)
    ks = torch.unique(geo.round().long())
    log_ratio = []
    for k in ks.tolist():
        noise = torch.randn(x1.shape, generator=generator, dtype=x1.dtype).to(x1.device)
        xk = schedule.q_sample(x1, k, noise)
        mean, var = schedule.posterior_mean_variance(x1, xk, k)
        mean_p = schedule.epsilon_to_mean(schedule.epsilon_at(eps_model, xk, k), xk, k)
        err = float((mean - mean_p).double().pow(2).mean())
        log_ratio.append(math.log1p(err / float(var[0])))
    steps = torch.arange(2, schedule.T + 1)
    beta_tilde = schedule.model_variance(torch.ones(len(steps), dtype=torch.float64), steps,
                                     variance="beta_tilde")
    ratio = torch.from_numpy(np.interp(steps.double().numpy(), ks.double().numpy(), log_ratio)).exp()
    out = torch.zeros(schedule.T + 1, dtype=torch.float64)
    out[1] = schedule.betas[1]
    out[2:] = beta_tilde * ratio
    return out

def fitted_decoder_std(schedule: DDPMSchedule, eps_model: EpsModel, x1: Tensor, generator: torch.Generator,
                       bin_width: float = 2 / 255, low: float = -1.0, high: float = 1.0,
                       candidates: int = 41) -> float:
    """The decoder std that minimises the mean L_0 on ``x1`` (training data), searched on a
    log grid of ``candidates`` values from sqrt(beta_1)/20 to 4 sqrt(beta_1) with one
    network call (the mean mu_theta(x_{k=1}, 1) does not depend on the std). Learned decoder
    variances are Nichol & Dhariwal's (2021, §3.1); Ho et al. fix std = sqrt(beta_1)."""
    noise = torch.randn(x1.shape, generator=generator, dtype=x1.dtype).to(x1.device)
    mean = decoder_mean(schedule, eps_model, x1, noise)
    stds = decoder_std_grid(schedule, candidates)
    nll = [-float(discretized_gaussian_log_likelihood(x1, mean, s, bin_width, low, high).mean())
           for s in stds]
    return stds[min(range(len(stds)), key=nll.__getitem__)]

def fitted_level_decoder(schedule: DDPMSchedule, eps_model: EpsModel, x1: Tensor, generator: torch.Generator,
                         n_levels: int = 256, candidates: int = 41) -> LevelDecoder:
    """``LevelDecoder.fitted`` on ``x1`` (training data on the ``data.to_unit_interval``
    grid) with the decoder means mu_theta(x_{k=1}, 1), its std searched on a log grid from
    sqrt(beta_1)/20 to 4 sqrt(beta_1)."""
    noise = torch.randn(x1.shape, generator=generator, dtype=x1.dtype).to(x1.device)
    mean = decoder_mean(schedule, eps_model, x1, noise)
    return LevelDecoder.fitted(x1, mean, n_levels, decoder_std_grid(schedule, candidates))

def decoder_std_grid(schedule: DDPMSchedule, candidates: int) -> list[float]:
    """``candidates`` decoder stds, log-spaced from sqrt(beta_1)/20 to 4 sqrt(beta_1)."""
    base = math.sqrt(float(schedule.betas[1]))
    return torch.logspace(math.log10(base / 20), math.log10(base * 4), candidates).tolist()
