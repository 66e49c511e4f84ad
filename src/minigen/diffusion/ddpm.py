"""Denoising diffusion probabilistic models in discrete time (Ho et al., 2020) and DDIM
(Song, Meng & Ermon, 2021).

DDPM counts steps k = 0, 1, ..., T with k = 0 the data and k = T (almost) pure noise.
This module keeps the paper's discrete time k but uses minigen's names — ``x1`` is the
**data**, ``xk`` the latent at step k, ``eps`` the noise — with the paper's mapped once
(book/design.md); DDPM's x_0 is our x1 in every docstring below:

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from minigen.broadcast import expand_t
from minigen.recipe.paths import VPLinearBetaPath
from minigen.recipe.results import LossResult, SampleResult

Tensor = torch.Tensor
EpsModel = Callable[[Tensor, Tensor], Tensor]
VARIANCES = ("beta", "beta_tilde")


def _initial(shape, generator: torch.Generator, dtype: torch.dtype, x_init: Tensor | None,
             device: torch.device | str | None = None) -> Tensor:
    """x_init, checked against shape, or a fresh N(0, I) draw (on the CPU generator, then moved
    to ``device``)."""
    if x_init is None:
        return torch.randn(*shape, generator=generator, dtype=dtype).to(device or "cpu")
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
    def q_sample(self, x1: Tensor, k, noise: Tensor) -> Tensor:
        """x_k ~ q(x_k | x1) = N(sqrt(alpha_bar_k) x1, (1 - alpha_bar_k) I)
        (Ho et al., 2020, eq. 4): x_k = sqrt(alpha_bar_k) x1 + sqrt(1 - alpha_bar_k) eps.
        x1, noise: (B, ...); k: int or (B,) in 0..T."""
        if noise.shape != x1.shape:
            raise ValueError(f"noise must have the shape of the data x1, {tuple(x1.shape)}; "
                             f"got {tuple(noise.shape)}")
        ab = expand_t(self.alpha_bar[self.steps_tensor(k, len(x1))], x1)
        return ab.sqrt() * x1 + (1 - ab).sqrt() * noise

    def _pair(self, xk: Tensor, k, prev):
        k = self.steps_tensor(k, len(xk), lo=1)
        j = k - 1 if prev is None else self.steps_tensor(prev, len(xk), lo=0)
        if (j >= k).any():
            raise ValueError("the previous step must be smaller than k")
        return self.alpha_bar[k], self.alpha_bar[j]

    def posterior_mean_variance(self, x1: Tensor, xk: Tensor, k, prev=None) -> tuple[Tensor, Tensor]:
        """q(x_j | x_k, x1) = N(mu_tilde, beta_tilde I) with j = ``prev`` (default k - 1):

            mu_tilde   = sqrt(ab_j) b_jk / (1 - ab_k) x1 + sqrt(a_jk) (1 - ab_j) / (1 - ab_k) x_k,
            beta_tilde = (1 - ab_j) / (1 - ab_k) b_jk,

        a_jk = ab_k / ab_j, b_jk = 1 - a_jk (Ho et al., 2020, eqs. 6-7 for j = k - 1, where
        a_jk = alpha_k; the strided form is Nichol & Dhariwal, 2021, §4). Returns ((B, ...), (B,)).
        """
        ab_k, ab_j = self._pair(xk, k, prev)
        a_jk = ab_k / ab_j
        c0 = ab_j.sqrt() * (1 - a_jk) / (1 - ab_k)
        ck = a_jk.sqrt() * (1 - ab_j) / (1 - ab_k)
        mean = expand_t(c0, x1) * x1 + expand_t(ck, xk) * xk
        return mean, ((1 - ab_j) / (1 - ab_k) * (1 - a_jk)).to(xk)

    def x1_from_epsilon(self, eps: Tensor, xk: Tensor, k) -> Tensor:
        """x1 = (x_k - sqrt(1 - ab_k) eps) / sqrt(ab_k) (inverse of eq. 4): (B, ...)."""
        ab = expand_t(self.alpha_bar[self.steps_tensor(k, len(xk), lo=1)], xk)
        return (xk - (1 - ab).sqrt() * eps) / ab.sqrt()

    def epsilon_to_mean(self, eps: Tensor, xk: Tensor, k, prev=None) -> Tensor:
        """Model mean mu_theta(x_k, k) = mu_tilde(x_k, x1_hat(eps)); for j = k - 1 this is
        mu_theta = (x_k - beta_k / sqrt(1 - alpha_bar_k) eps) / sqrt(alpha_k) (Ho et al., 2020, eq. 11).
        (B, ...)."""
        return self.posterior_mean_variance(self.x1_from_epsilon(eps, xk, k), xk, k, prev)[0]

    def model_variance(self, xk: Tensor, k, prev=None, variance: str | Tensor = "beta") -> Tensor:
        """sigma_k² of p(x_j | x_k): ``"beta"`` b_jk (= beta_k) or ``"beta_tilde"`` (Ho et al.,
        2020, §3.2: the two extremes for a N(0, I) and a point-mass x1), or a (T+1,) tensor of
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

    def epsilon_at(self, eps_model: EpsModel, xk: Tensor, k: int, **cond) -> Tensor:
        """eps_theta(x_k, t = 1 - k/T, **cond) for the whole batch at step k: (B, ...)."""
        t = self.t_of_k(torch.full((len(xk),), k)).to(dtype=xk.dtype, device=xk.device)
        return eps_model(xk, t, **cond)

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
                      variance: str = "beta", prev: int | None = None, **cond) -> Tensor:
        """One ancestral step x_j = mu_theta(x_k, k) + sigma_k z, z ~ N(0, I), with no noise
        when j = 0 (Ho et al., 2020, Alg. 2; j = prev, default k - 1). (B, ...)."""
        prev = k - 1 if prev is None else prev
        eps = self.epsilon_at(eps_model, xk, k, **cond)
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
                         dtype: torch.dtype = torch.float32, x_init: Tensor | None = None,
                         device: torch.device | str | None = None, **cond) -> SampleResult:
        """x_T ~ N(0, I) (or ``x_init``), then ``p_sample_step`` down to x1 (Ho et al., 2020,
        Alg. 2); a strided ``steps`` re-spaces the chain (Nichol & Dhariwal, 2021, §4).
        NFE = number of steps. x: (shape); ``cond`` goes to the model."""
        x = _initial(shape, generator, dtype, x_init, device)
        pairs = self.timesteps(steps)
        self._fill_coefficients(pairs, variance)
        for k, j in pairs:
            x = self.p_sample_step(eps_model, x, k, generator, variance, prev=j, **cond)
        return SampleResult(x, len(pairs))

    def ddim_step(self, eps_model: EpsModel, xk: Tensor, k: int, prev: int, eta: float,
                  generator: torch.Generator | None = None, **cond) -> Tensor:
        """x_j = sqrt(ab_j) x1_hat + sqrt(1 - ab_j - s²) eps_theta + s z with
        s = eta sqrt((1 - ab_j) / (1 - ab_k)) sqrt(1 - ab_k / ab_j)
        (Song, Meng & Ermon, 2021, eqs. 12 and 16; eta = 0 is deterministic). (B, ...)."""
        if not eta >= 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        ab_k, ab_j = float(self.alpha_bar[k]), float(self.alpha_bar[prev])
        eps = self.epsilon_at(eps_model, xk, k, **cond)
        x1_hat = (xk - math.sqrt(1 - ab_k) * eps) / math.sqrt(ab_k)
        s = eta * math.sqrt((1 - ab_j) / (1 - ab_k) * (1 - ab_k / ab_j))
        x = math.sqrt(ab_j) * x1_hat + math.sqrt(max(1 - ab_j - s * s, 0.0)) * eps
        if s > 0:
            if generator is None:
                raise ValueError("eta > 0 needs a torch.Generator")
            x = x + s * torch.randn(xk.shape, generator=generator, dtype=xk.dtype).to(xk.device)
        return x

    def ddim_sample(self, eps_model: EpsModel, shape, generator: torch.Generator,
                    steps: int | Sequence[int] | None = 50, eta: float = 0.0,
                    dtype: torch.dtype = torch.float32, x_init: Tensor | None = None,
                    device: torch.device | str | None = None, **cond) -> SampleResult:
        """DDIM sampling on a (strided) step sequence from x_T ~ N(0, I) (or ``x_init``) (Song,
        Meng & Ermon, 2021, §4.2). NFE = number of steps. x: (shape); ``cond`` goes to the model."""
        x = _initial(shape, generator, dtype, x_init, device)
        pairs = self.timesteps(steps)
        for k, j in pairs:
            x = self.ddim_step(eps_model, x, k, j, eta, generator, **cond)
        return SampleResult(x, len(pairs))

    def vlb_weight(self, k: Tensor) -> Tensor:
        """lambda_k with L_{k-1} = lambda_k E||eps - eps_theta(x_k, k)||² + const for the fixed
        variance sigma_k² = beta_k: lambda_k = beta_k / (2 alpha_k (1 - alpha_bar_k)) (Ho et al.,
        2020, eq. 12; for k = 1 the Gaussian decoder gives the same form). L_simple sets
        lambda_k = 1. k: (B,) in 1..T -> (B,) float64."""
        k = self.steps_tensor(k, len(k), lo=1)
        return self.betas[k] / (2 * self.alphas[k] * (1 - self.alpha_bar[k]))

    def l_vlb(self, eps_model: EpsModel, x1: Tensor, generator: torch.Generator,
              importance: bool = False, **cond) -> tuple[Tensor, Tensor]:
        """The bound as a training loss for an epsilon model with fixed variances:
        sum_k lambda_k E||eps - eps_theta(x_k, k)||², summed over dimensions (the k-dependent
        part of eq. 5; ``vlb_weight``), in nats per sample, estimated with one k per sample:
        k ~ U{1..T} weighted by T lambda_k, or (``importance``) k ~ lambda_k / sum(lambda)
        weighted by sum(lambda) — the same expectation with less variance, since lambda_k spans
        a factor ~50 (importance sampling of the bound, Nichol & Dhariwal, 2021, §3.3).
        Returns per-sample losses (B,) and minigen times t = 1 - k/T (B,)."""
        lam = self.vlb_weight(torch.arange(1, self.T + 1))
        if importance:
            k = 1 + torch.multinomial(lam, len(x1), replacement=True, generator=generator)
            w = torch.full((len(x1),), float(lam.sum()), dtype=x1.dtype, device=x1.device)
        else:
            k = torch.randint(1, self.T + 1, (len(x1),), generator=generator)
            w = (self.T * lam[k - 1]).to(x1)
        noise = torch.randn(x1.shape, generator=generator, dtype=x1.dtype).to(x1.device)
        t = self.t_of_k(k).to(x1)
        pred = eps_model(self.q_sample(x1, k, noise), t, **cond)
        return w * (pred - noise).pow(2).flatten(1).sum(1), t

    def l_simple(self, eps_model: EpsModel, x1: Tensor, generator: torch.Generator, **cond
                 ) -> tuple[Tensor, Tensor]:
        """L_simple = E_{k ~ U{1..T}, eps} ||eps - eps_theta(x_k, k)||² (Ho et al., 2020, eq. 14,
        Alg. 1), averaged over dimensions. Returns per-sample losses (B,) and their minigen
        times t = 1 - k/T (B,)."""
        k = torch.randint(1, self.T + 1, (len(x1),), generator=generator)
        noise = torch.randn(x1.shape, generator=generator, dtype=x1.dtype).to(x1.device)
        t = self.t_of_k(k).to(x1)
        pred = eps_model(self.q_sample(x1, k, noise), t, **cond)
        return (pred - noise).pow(2).flatten(1).mean(1), t


@dataclass
class DDPMLoss:
    """DDPM's training objective for an epsilon network, as ``train`` takes it:
    ``kind="simple"`` is L_simple (Ho et al., 2020, eq. 14), ``"vlb"`` the bound's weighted
    regression ``DDPMSchedule.l_vlb`` (with ``importance`` sampling of k, Nichol & Dhariwal,
    2021, §3.3). ``loss(model, x, generator, per_sample, **cond)`` -> ``LossResult`` with the
    minigen times t = 1 - k/T; ``cond`` (e.g. ``cond_image=y``) goes to the model."""

    schedule: DDPMSchedule
    kind: str = "simple"
    importance: bool = False

    def __post_init__(self):
        if self.kind not in ("simple", "vlb"):
            raise ValueError(f"kind must be 'simple' or 'vlb', got {self.kind!r}")
        if self.importance and self.kind != "vlb":
            raise ValueError("importance sampling of k is for the bound (kind='vlb')")

    def loss(self, model: EpsModel, x: Tensor, generator: torch.Generator, per_sample: bool = False,
             **cond) -> LossResult:
        if self.kind == "simple":
            per, t = self.schedule.l_simple(model, x, generator, **cond)
        else:
            per, t = self.schedule.l_vlb(model, x, generator, importance=self.importance, **cond)
        return LossResult(per.mean(), per.detach() if per_sample else None, t)
