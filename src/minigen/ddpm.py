"""Denoising diffusion probabilistic models in discrete time (Ho et al., 2020) and DDIM
(Song, Meng & Ermon, 2021).

DDPM counts steps k = 0, 1, ..., T with k = 0 the data and k = T (almost) pure noise.
This module keeps the paper's discrete time and names — ``x0`` is the **data** and
``xk`` the latent at step k — and maps it once to minigen's time (DESIGN.md):

    =====================  ===========  ========================================
    DDPM (Ho et al.)       minigen      relation
    =====================  ===========  ========================================
    step k = 0 .. T        t in [0, 1]  t = 1 - k / T   (k = T is t = 0)
    x_0 (data)             x1           same tensor
    epsilon (noise)        x0 (source)  same tensor
    sqrt(alpha_bar_k)      alpha(t)     alpha(1 - k/T) ≈ sqrt(alpha_bar_k) on
    sqrt(1 - alpha_bar_k)  sigma(t)     ``VPLinearBetaPath(T b_1, T b_T)``
    =====================  ===========  ========================================

**Model convention.** Every network takes minigen's ``model(x, t)`` with t in [0, 1]
(shape (B,)); the samplers here call ``eps_model(x_k, t = 1 - k/T)``, so one network
serves the discrete chain, DDIM and (through ``velocity_from_epsilon_model``) the ODE
solvers of the foundation.

Arrays are indexed by step: ``betas[k]``, ``alphas[k]``, ``alpha_bar[k]`` for k = 0..T,
with the convention beta_0 = 0, alpha_bar_0 = 1 (the data). Steps passed as tensors
have shape (B,) (or are an int for the whole batch).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

from .paths import VPLinearBetaPath

Tensor = torch.Tensor
EpsModel = Callable[[Tensor, Tensor], Tensor]
VARIANCES = ("beta", "beta_tilde")


def _bcast(v: Tensor, x: Tensor) -> Tensor:
    """(B,) coefficients -> (B, 1, ..., 1) in x's dtype and device."""
    return v.to(dtype=x.dtype, device=x.device).view(-1, *([1] * (x.ndim - 1)))


def _initial(shape, generator: torch.Generator, dtype: torch.dtype, x_init: Tensor | None) -> Tensor:
    """x_init, checked against shape, or a fresh N(0, I) draw."""
    if x_init is None:
        return torch.randn(*shape, generator=generator, dtype=dtype)
    if tuple(x_init.shape) != tuple(shape):
        raise ValueError(f"x_init must have shape {tuple(shape)}, got {tuple(x_init.shape)}")
    return x_init


class DDPMSchedule:
    """Linear beta schedule beta_k = beta_start + (k-1)/(T-1) (beta_end - beta_start),
    alpha_k = 1 - beta_k, alpha_bar_k = prod_{i<=k} alpha_i (Ho et al., 2020, §4:
    T = 1000, beta from 1e-4 to 0.02). Tensors of shape (T+1,), float64.
    """

    def __init__(self, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        if not isinstance(T, int) or T < 1:
            raise ValueError(f"T must be a positive integer, got {T!r}")
        if not 0 < beta_start <= beta_end < 1:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
        self.T, self.beta_start, self.beta_end = T, beta_start, beta_end
        b = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
        self.betas = torch.cat([torch.zeros(1, dtype=torch.float64), b])
        self.alphas = 1 - self.betas
        self.alpha_bar = torch.cumprod(self.alphas, 0)
        self._coefficient_cache: dict[tuple, tuple[float, float, float]] = {}

    def __repr__(self) -> str:
        return f"DDPMSchedule(T={self.T}, beta_start={self.beta_start}, beta_end={self.beta_end})"

    # --- time ---
    def steps_tensor(self, k, batch: int, lo: int = 0) -> Tensor:
        """k as a LongTensor of shape (batch,), checked to lie in [lo, T]."""
        k = torch.as_tensor(k)
        if k.is_floating_point() or k.is_complex():
            raise ValueError(f"DDPM steps must be integers, got dtype {k.dtype}")
        k = k.long().cpu()  # the schedule lives on the CPU; coefficients move to x's device
        k = k.expand(batch) if k.ndim == 0 else k
        if k.shape != (batch,):
            raise ValueError(f"k must be an int or have shape ({batch},), got {tuple(k.shape)}")
        if k.numel() and (k.min() < lo or k.max() > self.T):
            raise ValueError(f"steps must lie in [{lo}, {self.T}], got {k.min()}..{k.max()}")
        return k

    def t_of_k(self, k: Tensor) -> Tensor:
        """minigen time t = 1 - k / T of DDPM step k."""
        return 1.0 - k.double() / self.T

    def continuous_path(self) -> VPLinearBetaPath:
        """The VP path this schedule discretises: beta(s) = T beta_{sT}, i.e.
        beta_min = T beta_start, beta_max = T beta_end (0.1 and 20 for the defaults;
        Song et al., 2021, App. B). alpha(1 - k/T) ≈ sqrt(alpha_bar_k)."""
        return VPLinearBetaPath(self.T * self.beta_start, self.T * self.beta_end)

    # --- forward process and posterior ---
    def q_sample(self, x0: Tensor, k, noise: Tensor) -> Tensor:
        """x_k ~ q(x_k | x_0) = N(sqrt(alpha_bar_k) x_0, (1 - alpha_bar_k) I)
        (Ho et al., 2020, eq. 4): x_k = sqrt(alpha_bar_k) x_0 + sqrt(1 - alpha_bar_k) eps.
        x0, noise: (B, ...); k: int or (B,) in 0..T."""
        if noise.shape != x0.shape:
            raise ValueError(f"noise must have x0's shape {tuple(x0.shape)}, got {tuple(noise.shape)}")
        ab = _bcast(self.alpha_bar[self.steps_tensor(k, len(x0))], x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def _pair(self, xk: Tensor, k, prev):
        k = self.steps_tensor(k, len(xk), lo=1)
        j = k - 1 if prev is None else self.steps_tensor(prev, len(xk), lo=0)
        if (j >= k).any():
            raise ValueError("the previous step must be smaller than k")
        return self.alpha_bar[k], self.alpha_bar[j]

    def posterior_mean_variance(self, x0: Tensor, xk: Tensor, k, prev=None) -> tuple[Tensor, Tensor]:
        """q(x_j | x_k, x_0) = N(mu_tilde, beta_tilde I) with j = ``prev`` (default k - 1):

            mu_tilde   = sqrt(ab_j) b_jk / (1 - ab_k) x_0 + sqrt(a_jk) (1 - ab_j) / (1 - ab_k) x_k,
            beta_tilde = (1 - ab_j) / (1 - ab_k) b_jk,

        a_jk = ab_k / ab_j, b_jk = 1 - a_jk (Ho et al., 2020, eqs. 6-7 for j = k - 1, where
        a_jk = alpha_k; the strided form is Nichol & Dhariwal, 2021, §4). Returns ((B, ...), (B,)).
        """
        ab_k, ab_j = self._pair(xk, k, prev)
        a_jk = ab_k / ab_j
        c0 = ab_j.sqrt() * (1 - a_jk) / (1 - ab_k)
        ck = a_jk.sqrt() * (1 - ab_j) / (1 - ab_k)
        mean = _bcast(c0, x0) * x0 + _bcast(ck, xk) * xk
        return mean, ((1 - ab_j) / (1 - ab_k) * (1 - a_jk)).to(xk)

    def x0_from_epsilon(self, eps: Tensor, xk: Tensor, k) -> Tensor:
        """x_0 = (x_k - sqrt(1 - ab_k) eps) / sqrt(ab_k) (inverse of eq. 4): (B, ...)."""
        ab = _bcast(self.alpha_bar[self.steps_tensor(k, len(xk), lo=1)], xk)
        return (xk - (1 - ab).sqrt() * eps) / ab.sqrt()

    def epsilon_to_mean(self, eps: Tensor, xk: Tensor, k, prev=None) -> Tensor:
        """Model mean mu_theta(x_k, k) = mu_tilde(x_k, x0_hat(eps)); for j = k - 1 this is
        mu_theta = (x_k - beta_k / sqrt(1 - alpha_bar_k) eps) / sqrt(alpha_k) (Ho et al., 2020, eq. 11).
        (B, ...)."""
        return self.posterior_mean_variance(self.x0_from_epsilon(eps, xk, k), xk, k, prev)[0]

    def model_variance(self, xk: Tensor, k, prev=None, variance: str | Tensor = "beta") -> Tensor:
        """sigma_k² of p(x_j | x_k): ``"beta"`` b_jk (= beta_k) or ``"beta_tilde"`` (Ho et al.,
        2020, §3.2: the two extremes for a N(0, I) and a point-mass x_0), or a (T+1,) tensor of
        per-step variances such as ``fitted_step_variances`` (single steps j = k - 1 only). (B,)."""
        if isinstance(variance, Tensor):
            if variance.shape != (self.T + 1,):
                raise ValueError(f"per-step variances must have shape ({self.T + 1},), "
                                 f"got {tuple(variance.shape)}")
            k = self.steps_tensor(k, len(xk), lo=1)
            if prev is not None and (self.steps_tensor(prev, len(xk)) != k - 1).any():
                raise ValueError("per-step variances are defined for single steps (prev = k - 1) only")
            return variance[k].to(xk)
        if variance not in VARIANCES:
            raise ValueError(f"unknown variance {variance!r}; choose from {VARIANCES} "
                             f"or a ({self.T + 1},) tensor")
        ab_k, ab_j = self._pair(xk, k, prev)
        if variance == "beta":
            return (1 - ab_k / ab_j).to(xk)
        return ((1 - ab_j) / (1 - ab_k) * (1 - ab_k / ab_j)).to(xk)

    def _eps(self, eps_model: EpsModel, xk: Tensor, k: int) -> Tensor:
        t = self.t_of_k(torch.full((len(xk),), k)).to(dtype=xk.dtype, device=xk.device)
        return eps_model(xk, t)

    # --- samplers ---
    def timesteps(self, steps: int | Sequence[int] | None = None) -> list[tuple[int, int]]:
        """(k, prev) pairs from noise to data: all of T..1 (None), ``steps`` evenly strided
        steps (an int; always including T), or an increasing sequence of steps in [1, T]."""
        if steps is None:
            seq = list(range(1, self.T + 1))
        elif isinstance(steps, int):
            if not 1 <= steps <= self.T:
                raise ValueError(f"steps must lie in [1, {self.T}], got {steps}")
            # spacing (T - 1) / (steps - 1) >= 1, so the rounded steps are distinct
            seq = sorted({round(v) for v in torch.linspace(self.T, 1, steps).tolist()})
        else:
            seq = [int(s) for s in steps]
            if not seq or any(b <= a for a, b in zip(seq, seq[1:])) or seq[0] < 1 or seq[-1] > self.T:
                raise ValueError(f"steps must be a strictly increasing sequence in [1, {self.T}]")
        prevs = [0, *seq[:-1]]
        return list(zip(reversed(seq), reversed(prevs)))

    def p_sample_step(self, eps_model: EpsModel, xk: Tensor, k: int, generator: torch.Generator,
                      variance: str = "beta", prev: int | None = None) -> Tensor:
        """One ancestral step x_j = mu_theta(x_k, k) + sigma_k z, z ~ N(0, I), with no noise
        when j = 0 (Ho et al., 2020, Alg. 2; j = prev, default k - 1). (B, ...)."""
        prev = k - 1 if prev is None else prev
        eps = self._eps(eps_model, xk, k)
        a, b, var = self._step_coefficients(k, prev, variance)
        mean = a * xk + b * eps
        if prev == 0:
            return mean
        z = torch.randn(xk.shape, generator=generator, dtype=xk.dtype).to(xk.device)
        return mean + math.sqrt(var) * z

    def _step_coefficients(self, k: int, prev: int, variance: str) -> tuple[float, float, float]:
        """(a, b, sigma²) with mu_theta(x_k, k) = a x_k + b eps_theta for the step k -> prev
        (cached by ``_fill_coefficients``)."""
        if (k, prev, variance) not in self._coefficient_cache:
            self._fill_coefficients([(k, prev)], variance)
        return self._coefficient_cache[k, prev, variance]

    def _fill_coefficients(self, pairs: Sequence[tuple[int, int]], variance: str) -> None:
        """The model mean is linear in (x_k, eps), so a and b are read off ``epsilon_to_mean``
        at unit inputs, for all (k, prev) pairs in one call: a sampler's per-step cost is then
        the network's."""
        k = torch.tensor([p[0] for p in pairs])
        j = torch.tensor([p[1] for p in pairs])
        one, zero = torch.ones(len(k), dtype=torch.float64), torch.zeros(len(k), dtype=torch.float64)
        a = self.epsilon_to_mean(zero, one, k, j).tolist()
        b = self.epsilon_to_mean(one, zero, k, j).tolist()
        var = self.model_variance(one, k, j, variance).tolist()
        for pair, coefficients in zip(pairs, zip(a, b, var)):
            self._coefficient_cache[(*pair, variance)] = coefficients

    def ancestral_sample(self, eps_model: EpsModel, shape, generator: torch.Generator,
                         steps: int | Sequence[int] | None = None, variance: str = "beta",
                         dtype: torch.dtype = torch.float32, x_init: Tensor | None = None) -> Tensor:
        """x_T ~ N(0, I) (or ``x_init``), then ``p_sample_step`` down to x_0 (Ho et al., 2020,
        Alg. 2); a strided ``steps`` re-spaces the chain (Nichol & Dhariwal, 2021, §4).
        NFE = number of steps. Returns (shape)."""
        x = _initial(shape, generator, dtype, x_init)
        pairs = self.timesteps(steps)
        self._fill_coefficients(pairs, variance)
        for k, j in pairs:
            x = self.p_sample_step(eps_model, x, k, generator, variance, prev=j)
        return x

    def ddim_step(self, eps_model: EpsModel, xk: Tensor, k: int, prev: int, eta: float,
                  generator: torch.Generator | None = None) -> Tensor:
        """x_j = sqrt(ab_j) x0_hat + sqrt(1 - ab_j - s²) eps_theta + s z with
        s = eta sqrt((1 - ab_j) / (1 - ab_k)) sqrt(1 - ab_k / ab_j)
        (Song, Meng & Ermon, 2021, eqs. 12 and 16; eta = 0 is deterministic). (B, ...)."""
        if not eta >= 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        ab_k, ab_j = float(self.alpha_bar[k]), float(self.alpha_bar[prev])
        eps = self._eps(eps_model, xk, k)
        x0_hat = (xk - math.sqrt(1 - ab_k) * eps) / math.sqrt(ab_k)
        s = eta * math.sqrt((1 - ab_j) / (1 - ab_k) * (1 - ab_k / ab_j))
        x = math.sqrt(ab_j) * x0_hat + math.sqrt(max(1 - ab_j - s * s, 0.0)) * eps
        if s > 0:
            if generator is None:
                raise ValueError("eta > 0 needs a torch.Generator")
            x = x + s * torch.randn(xk.shape, generator=generator, dtype=xk.dtype).to(xk.device)
        return x

    def ddim_sample(self, eps_model: EpsModel, shape, generator: torch.Generator,
                    steps: int | Sequence[int] | None = 50, eta: float = 0.0,
                    dtype: torch.dtype = torch.float32, x_init: Tensor | None = None) -> Tensor:
        """DDIM sampling on a (strided) step sequence from x_T ~ N(0, I) (or ``x_init``) (Song,
        Meng & Ermon, 2021, §4.2). NFE = number of steps. Returns (shape)."""
        x = _initial(shape, generator, dtype, x_init)
        for k, j in self.timesteps(steps):
            x = self.ddim_step(eps_model, x, k, j, eta, generator)
        return x

    # --- the variational bound, L = L_T + sum_{k>=2} L_{k-1} + L_0 (Ho et al., 2020, eq. 5) ---
    def prior_kl(self, x0: Tensor) -> Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)), summed over dimensions, in nats: (B,)."""
        ab = _bcast(self.alpha_bar[self.T].expand(len(x0)), x0)
        kl = kl_gaussians(ab.sqrt() * x0, 1 - ab, torch.zeros_like(x0), torch.ones_like(x0))
        return kl.flatten(1).sum(1)

    def step_kl(self, eps_model: EpsModel, x0: Tensor, k, noise: Tensor,
                variance: str = "beta") -> Tensor:
        """L_{k-1} = KL(q(x_{k-1} | x_k, x_0) || p_theta(x_{k-1} | x_k)) at x_k = q_sample(x_0, k,
        noise), for an epsilon model and fixed variance (Ho et al., 2020, eqs. 5, 11-12). k: int
        or (B,) in 2..T. Summed over dimensions, in nats: (B,)."""
        k = self.steps_tensor(k, len(x0), lo=2)
        xk = self.q_sample(x0, k, noise)
        mean, var = self.posterior_mean_variance(x0, xk, k)
        eps = eps_model(xk, self.t_of_k(k).to(xk))
        mean_p = self.epsilon_to_mean(eps, xk, k)
        var_p = self.model_variance(xk, k, variance=variance)
        return kl_gaussians(mean, _bcast(var, x0), mean_p, _bcast(var_p, x0)).flatten(1).sum(1)

    def decoder_mean(self, eps_model: EpsModel, x0: Tensor, noise: Tensor) -> Tensor:
        """mu_theta(x_1, 1) at x_1 = q_sample(x_0, 1, noise): the mean of the decoder
        p_theta(x_0 | x_1) (Ho et al., 2020, eq. 11 at k = 1). (B, ...)."""
        x1 = self.q_sample(x0, 1, noise)
        return self.epsilon_to_mean(self._eps(eps_model, x1, 1), x1, 1)

    def decoder_nll(self, eps_model: EpsModel, x0: Tensor, noise: Tensor,
                    bin_width: float = 2 / 255, low: float = -1.0, high: float = 1.0,
                    std: float | None = None, decoder: "LevelDecoder | None" = None) -> Tensor:
        """L_0 = -log p_theta(x_0 | x_1), the discretised Gaussian N(mu_theta(x_1, 1), std²)
        over the data's bins (Ho et al., 2020, eq. 13: std = sqrt(beta_1), the default;
        ``fitted_decoder_std`` fits it); ``unit_interval_bins`` gives the bins of
        ``data.to_unit_interval``. With ``decoder`` (a ``LevelDecoder``) the categorical decoder
        over the grey levels replaces the Gaussian. Summed over dimensions, nats: (B,)."""
        mean = self.decoder_mean(eps_model, x0, noise)
        if decoder is not None:
            return -decoder.log_prob(x0, mean).flatten(1).sum(1)
        std = math.sqrt(float(self.betas[1])) if std is None else std
        ll = discretized_gaussian_log_likelihood(x0, mean, std, bin_width, low, high)
        return -ll.flatten(1).sum(1)

    def decoder_nll_continuous(self, eps_model: EpsModel, x0: Tensor, noise: Tensor) -> Tensor:
        """L_0 for continuous data: -log N(x_0; mu_theta(x_1, 1), beta_1 I), summed over
        dimensions, in nats: (B,). Use it for 2D toys, where there are no bins."""
        mean = self.decoder_mean(eps_model, x0, noise)
        var = float(self.betas[1])
        nll = 0.5 * ((x0 - mean) ** 2 / var + math.log(2 * math.pi * var))
        return nll.flatten(1).sum(1)

    def nll_bound(self, eps_model: EpsModel, x0: Tensor, generator: torch.Generator,
                  variance: str | Tensor = "beta", bin_width: float | None = 2 / 255,
                  terms: int | None = None, low: float = -1.0, high: float = 1.0,
                  decoder_std: float | None = None, decoder: "LevelDecoder | None" = None) -> Tensor:
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
            return torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        if bin_width is None:
            total = self.prior_kl(x0) + self.decoder_nll_continuous(eps_model, x0, noise())
        else:
            total = self.prior_kl(x0) + self.decoder_nll(eps_model, x0, noise(), bin_width, low, high,
                                                         decoder_std, decoder)
        if terms is None:
            for k in range(2, self.T + 1):
                total = total + self.step_kl(eps_model, x0, k, noise(), variance)
            return total
        edges = self.bound_strata(terms)
        for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist()):
            k = torch.randint(lo, hi, (len(x0),), generator=generator)
            total = total + (hi - lo) * self.step_kl(eps_model, x0, k, noise(), variance)
        return total

    def bound_strata(self, terms: int) -> Tensor:
        """Edges 2 = e_0 < e_1 < ... < e_m = T + 1 of at most ``terms`` strata [e_i, e_{i+1}) of
        the middle steps, geometric in k (rounded, duplicates dropped): (m + 1,) int64."""
        if not isinstance(terms, int) or terms < 1:
            raise ValueError(f"terms must be a positive integer or None, got {terms!r}")
        if self.T < 2:
            raise ValueError("the bound has middle terms only for T >= 2")
        geo = torch.logspace(math.log10(2), math.log10(self.T + 1), terms + 1, dtype=torch.float64)
        edges = torch.unique(geo.round().long())
        edges[0], edges[-1] = 2, self.T + 1
        return torch.unique(edges)

    def fitted_step_variances(self, eps_model: EpsModel, x0: Tensor, generator: torch.Generator,
                              grid: int = 50) -> Tensor:
        """Per-step variances that minimise the bound for a given epsilon model:

            sigma_k*² = beta_tilde_k + E ||mu_tilde(x_k, x_0) - mu_theta(x_k, k)||² / d,

        the minimiser of E KL(N(mu_tilde, beta_tilde) || N(mu_theta, sigma²)) over an isotropic
        sigma² (set its derivative to zero). This is the per-step version of the learned
        variances of Nichol & Dhariwal (2021, §3.1) and, for an exact mean, the optimal
        variance of Analytic-DPM (Bao et al., 2022, Thm. 1); here it is measured from the
        model's own error on ``x0`` (training data) at ``grid`` geometric steps of 2..T; in
        between, log(sigma*² / beta_tilde) is interpolated linearly in k (the ratio is smooth,
        while sigma² itself spans two decades). Index 1 (decoder) and 0 hold beta_1 and 0.
        Returns (T+1,) float64."""
        if not isinstance(grid, int) or grid < 2:
            raise ValueError(f"grid must be an integer >= 2, got {grid!r}")
        geo = torch.logspace(math.log10(2), math.log10(self.T), grid, dtype=torch.float64)
        ks = torch.unique(geo.round().long())
        log_ratio = []
        for k in ks.tolist():
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
            xk = self.q_sample(x0, k, noise)
            mean, var = self.posterior_mean_variance(x0, xk, k)
            mean_p = self.epsilon_to_mean(self._eps(eps_model, xk, k), xk, k)
            err = float((mean - mean_p).double().pow(2).mean())
            log_ratio.append(math.log1p(err / float(var[0])))
        steps = torch.arange(2, self.T + 1)
        beta_tilde = self.model_variance(torch.ones(len(steps), dtype=torch.float64), steps,
                                         variance="beta_tilde")
        ratio = torch.from_numpy(np.interp(steps.double().numpy(), ks.double().numpy(), log_ratio)).exp()
        out = torch.zeros(self.T + 1, dtype=torch.float64)
        out[1] = self.betas[1]
        out[2:] = beta_tilde * ratio
        return out

    def fitted_decoder_std(self, eps_model: EpsModel, x0: Tensor, generator: torch.Generator,
                           bin_width: float = 2 / 255, low: float = -1.0, high: float = 1.0,
                           candidates: int = 41) -> float:
        """The decoder std that minimises the mean L_0 on ``x0`` (training data), searched on a
        log grid of ``candidates`` values from sqrt(beta_1)/20 to 4 sqrt(beta_1) with one
        network call (the mean mu_theta(x_1, 1) does not depend on the std). Learned decoder
        variances are Nichol & Dhariwal's (2021, §3.1); Ho et al. fix std = sqrt(beta_1)."""
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        mean = self.decoder_mean(eps_model, x0, noise)
        stds = self._decoder_std_grid(candidates)
        nll = [-float(discretized_gaussian_log_likelihood(x0, mean, s, bin_width, low, high).mean())
               for s in stds]
        return stds[min(range(len(stds)), key=nll.__getitem__)]

    def fitted_level_decoder(self, eps_model: EpsModel, x0: Tensor, generator: torch.Generator,
                             n_levels: int = 256, candidates: int = 41) -> "LevelDecoder":
        """``LevelDecoder.fitted`` on ``x0`` (training data on the ``data.to_unit_interval``
        grid) with the decoder means mu_theta(x_1, 1), its std searched on a log grid from
        sqrt(beta_1)/20 to 4 sqrt(beta_1)."""
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        mean = self.decoder_mean(eps_model, x0, noise)
        return LevelDecoder.fitted(x0, mean, n_levels, self._decoder_std_grid(candidates))

    def _decoder_std_grid(self, candidates: int) -> list[float]:
        """``candidates`` decoder stds, log-spaced from sqrt(beta_1)/20 to 4 sqrt(beta_1)."""
        base = math.sqrt(float(self.betas[1]))
        return torch.logspace(math.log10(base / 20), math.log10(base * 4), candidates).tolist()

    def vlb_weight(self, k: Tensor) -> Tensor:
        """lambda_k with L_{k-1} = lambda_k E||eps - eps_theta(x_k, k)||² + const for the fixed
        variance sigma_k² = beta_k: lambda_k = beta_k / (2 alpha_k (1 - alpha_bar_k)) (Ho et al.,
        2020, eq. 12; for k = 1 the Gaussian decoder gives the same form). L_simple sets
        lambda_k = 1. k: (B,) in 1..T -> (B,) float64."""
        k = self.steps_tensor(k, len(k), lo=1)
        return self.betas[k] / (2 * self.alphas[k] * (1 - self.alpha_bar[k]))

    def l_vlb(self, eps_model: EpsModel, x0: Tensor, generator: torch.Generator,
              importance: bool = False) -> tuple[Tensor, Tensor]:
        """The bound as a training loss for an epsilon model with fixed variances:
        sum_k lambda_k E||eps - eps_theta(x_k, k)||², summed over dimensions (the k-dependent
        part of eq. 5; ``vlb_weight``), in nats per sample, estimated with one k per sample:
        k ~ U{1..T} weighted by T lambda_k, or (``importance``) k ~ lambda_k / sum(lambda)
        weighted by sum(lambda) — the same expectation with less variance, since lambda_k spans
        a factor ~50 (importance sampling of the bound, Nichol & Dhariwal, 2021, §3.3).
        Returns per-sample losses (B,) and minigen times t = 1 - k/T (B,)."""
        lam = self.vlb_weight(torch.arange(1, self.T + 1))
        if importance:
            k = 1 + torch.multinomial(lam, len(x0), replacement=True, generator=generator)
            w = torch.full((len(x0),), float(lam.sum()), dtype=x0.dtype, device=x0.device)
        else:
            k = torch.randint(1, self.T + 1, (len(x0),), generator=generator)
            w = (self.T * lam[k - 1]).to(x0)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        t = self.t_of_k(k).to(x0)
        pred = eps_model(self.q_sample(x0, k, noise), t)
        return w * (pred - noise).pow(2).flatten(1).sum(1), t

    def l_simple(self, eps_model: EpsModel, x0: Tensor, generator: torch.Generator
                 ) -> tuple[Tensor, Tensor]:
        """L_simple = E_{k ~ U{1..T}, eps} ||eps - eps_theta(x_k, k)||² (Ho et al., 2020, eq. 14,
        Alg. 1), averaged over dimensions. Returns per-sample losses (B,) and their minigen
        times t = 1 - k/T (B,)."""
        k = torch.randint(1, self.T + 1, (len(x0),), generator=generator)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        t = self.t_of_k(k).to(x0)
        pred = eps_model(self.q_sample(x0, k, noise), t)
        return (pred - noise).pow(2).flatten(1).mean(1), t


class LevelDecoder:
    """Categorical decoder over the K grey levels v_i = 2 (i + 1/2) / K - 1 of
    ``data.to_unit_interval``:

        p(x_0 = v_i | x_1) = softmax_i( log pi_i - (v_i - mu_theta(x_1, 1))² / (2 std²) ),

    per pixel. With a uniform pi, the mean x_1 / sqrt(alpha_bar_1) and std
    sqrt((1 - alpha_bar_1) / alpha_bar_1) this is the decoder of Variational Diffusion Models
    (Kingma et al., 2021: p(x | z_0) proportional to q(z_0 | x), normalised over the levels);
    here the mean is the network's and pi the training split's grey-level histogram (one
    histogram shared by every pixel), so it also knows that most MNIST pixels are exactly black,
    which a Gaussian around mu_theta cannot express when the noise at k = 1 (std 0.01) is wider
    than a level (2/256)."""

    def __init__(self, n_levels: int, log_prior: Tensor, std: float):
        if not isinstance(n_levels, int) or n_levels < 2:
            raise ValueError(f"n_levels must be an integer >= 2, got {n_levels!r}")
        log_prior = torch.as_tensor(log_prior, dtype=torch.float64)
        if log_prior.shape != (n_levels,) or not bool(torch.isfinite(log_prior).all()):
            raise ValueError(f"log_prior must be {n_levels} finite log-probabilities")
        if not std > 0:
            raise ValueError(f"std must be > 0, got {std}")
        self.n_levels, self.std = n_levels, float(std)
        self.log_prior = log_prior.log_softmax(0)
        self.levels = (torch.arange(n_levels, dtype=torch.float64) + 0.5) / n_levels * 2 - 1

    def __repr__(self) -> str:
        return f"LevelDecoder(n_levels={self.n_levels}, std={self.std:.4g})"

    @classmethod
    def fitted(cls, x0: Tensor, mean: Tensor, n_levels: int, std_grid: Sequence[float]) -> "LevelDecoder":
        """The decoder for data ``x0`` (on the level grid) and decoder means ``mean``: prior the
        add-one smoothed histogram of x0's levels, std the value of ``std_grid`` minimising the
        mean -log p(x0 | mean) (fit on training data; evaluate on test data)."""
        counts = torch.bincount(cls.level_index(x0, n_levels).flatten(), minlength=n_levels)
        log_prior = ((counts.double() + 1) / (counts.sum() + n_levels)).log()
        decoders = [cls(n_levels, log_prior, s) for s in std_grid]
        nll = [-float(dec.log_prob(x0, mean).mean()) for dec in decoders]
        return decoders[min(range(len(nll)), key=nll.__getitem__)]

    @staticmethod
    def level_index(x0: Tensor, n_levels: int) -> Tensor:
        """Index i of the level nearest to each x0 (x0 on the level grid): (B, ...) int64."""
        return ((x0.double() + 1) * n_levels / 2 - 0.5).round().long().clamp(0, n_levels - 1)

    def log_prob(self, x0: Tensor, mean: Tensor) -> Tensor:
        """log p(x_0 | x_1) per element, for decoder means ``mean``: (B, ...) float64."""
        logits = self.log_prior - (self.levels - mean.double().unsqueeze(-1)) ** 2 / (2 * self.std ** 2)
        idx = self.level_index(x0, self.n_levels).unsqueeze(-1)
        return logits.log_softmax(-1).gather(-1, idx).squeeze(-1)


def kl_gaussians(mean1: Tensor, var1: Tensor, mean2: Tensor, var2: Tensor) -> Tensor:
    """KL(N(mean1, var1) || N(mean2, var2)) per element (broadcast), in nats:
    ½ (log(var2 / var1) + (var1 + (mean1 - mean2)²) / var2 - 1)."""
    var1, var2 = torch.as_tensor(var1), torch.as_tensor(var2)
    if (var1 <= 0).any() or (var2 <= 0).any():
        raise ValueError("kl_gaussians needs positive variances")
    return 0.5 * (torch.log(var2 / var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1)


def _log_diff_ndtr(a: Tensor, b: Tensor) -> Tensor:
    """log(Phi(b) - Phi(a)) for a < b, stable in both tails (flip to the left tail)."""
    flip = (a + b) > 0
    a, b = torch.where(flip, -b, a), torch.where(flip, -a, b)
    la, lb = torch.special.log_ndtr(a), torch.special.log_ndtr(b)
    return lb + torch.log1p(-torch.exp((la - lb).clamp(max=0)).clamp(max=1 - 1e-12))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, std, bin_width: float = 2 / 255,
                                        low: float = -1.0, high: float = 1.0) -> Tensor:
    """log ∫ N(y; mean, std²) dy over the bin [delta-(x), delta+(x)] per element, where the bin around x
    has width ``bin_width`` and the edge bins extend to -inf at x = low and +inf at x = high
    (Ho et al., 2020, eq. 13; for 0..255 data scaled to [-1, 1], bin_width = 2/255).
    x, mean: (B, ...); std: float or broadcastable. Returns (B, ...)."""
    if not bin_width > 0:
        raise ValueError(f"bin_width must be > 0, got {bin_width}")
    std = torch.as_tensor(std, dtype=x.dtype)
    if (std <= 0).any():
        raise ValueError("std must be > 0")
    half = 0.5 * bin_width
    a = torch.where(x <= low + 0.5 * half, torch.full_like(x, -math.inf), (x - half - mean) / std)
    b = torch.where(x >= high - 0.5 * half, torch.full_like(x, math.inf), (x + half - mean) / std)
    return _log_diff_ndtr(a, b)


def unit_interval_bins(n_levels: int) -> dict:
    """Decoder bins of ``data.to_unit_interval`` (level k at 2 (k + ½) / K - 1): width 2/K and
    edge centres ±(1 - 1/K), as keyword arguments for ``decoder_nll`` / ``nll_bound``. Ho et
    al. map k to 2k/255 - 1 instead, the defaults there (width 2/255, edges ±1)."""
    if not isinstance(n_levels, int) or n_levels < 2:
        raise ValueError(f"n_levels must be an integer >= 2, got {n_levels!r}")
    return {"bin_width": 2 / n_levels, "low": -1 + 1 / n_levels, "high": 1 - 1 / n_levels}


def velocity_from_epsilon_model(eps_model: EpsModel, path: VPLinearBetaPath) -> Callable:
    """v(x, t) = path.convert(eps_model(x, t), x, t, "epsilon", "velocity") on the VP path of the
    schedule (``DDPMSchedule.continuous_path()``), so the foundation's ODE solvers sample a
    DDPM: v = alpha' (x - sigma eps) / alpha + sigma' eps. Integrate from t = 0 to
    ``path.t_max`` (sigma' diverges at t = 1)."""
    return lambda x, t: path.convert(eps_model(x, t), x, t, "epsilon", "velocity")
