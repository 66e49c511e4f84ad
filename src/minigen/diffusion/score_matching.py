"""Denoising score matching for the score SDEs of chapter 03, with and without likelihood weighting.

A network eps_theta(x, t) predicts the noise; its score is s_theta = -eps_theta / sigma(t)
(``score_from_epsilon_model``). Denoising score matching (Vincent, 2011; Song et al., 2021,
"Score-Based Generative Modeling through SDEs", eq. 7) with a weighting lambda(t):

    J_lambda(theta) = E_{t ~ U[t_min, t_max]} lambda(t) E_{x1, x0} || s_theta(x_t, t)
                                                              - grad log p_t(x_t | x1) ||²,

where x_t = alpha x1 + sigma x0 and grad log p_t(x_t | x1) = -x0 / sigma, so the per-sample
term is lambda / sigma² · ||eps_theta(x_t, t) - x0||² (mean over dimensions here). Two weightings:

* ``"variance"``: lambda = sigma² (Song et al., 2021, §3.3: lambda ∝ 1 / E||grad log p(x_t | x1)||²),
  which is DDPM's L_simple, ||eps_theta - x0||² (Ho et al., 2020, eq. 14);
* ``"likelihood"``: lambda = g(t)², the diffusion coefficient squared (Song, Durkan, Murray &
  Ermon, 2021, "Maximum Likelihood Training of Score-Based Diffusion Models", Thm. 1): then J
  bounds the KL from the data to the model's SDE, i.e. it is a negative ELBO up to constants.

g²/sigma² blows up near the data end of VP and sub-VP (≈ 1/s and 2/s with s = 1 - t), so a
Monte-Carlo estimate with uniform t has a large variance. Song, Durkan et al. (2021, §5) draw t
from q(t) ∝ g(t)² / sigma(t)² instead and divide by q: the per-sample loss becomes the constant
Z / (t_max - t_min) · ||eps_theta - x0||², with Z = ∫ g² / sigma² dt — the same expectation
(``LikelihoodTimeSampler``; ``importance_sampling=True``).

Batches are ``(x1,)``; the source noise x0 ~ N(0, I) is drawn inside the loss from the
training generator, as the SDE's source is Gaussian.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from minigen.broadcast import batch_time, expand_t
from minigen.recipe.likelihood import log_likelihood
from minigen.recipe.results import LossResult
from minigen.recipe.sde import SDE
from minigen.recipe.time_samplers import LikelihoodTimeSampler
from minigen.recipe.wrappers import probability_flow_velocity, score_from_epsilon_model

Tensor = torch.Tensor


WEIGHTINGS = ("variance", "likelihood")

def dsm_weight(sde: SDE, t: Tensor, weighting: str) -> Tensor:
    """lambda(t): sigma(t)² for ``"variance"``, g(t)² for ``"likelihood"`` (Song, Durkan et al.,
    2021, Thm. 1). Shape of t."""
    if weighting == "variance":
        return sde.path.sigma(t) ** 2
    if weighting == "likelihood":
        return sde.diffusion(t) ** 2
    raise ValueError(f"unknown weighting {weighting!r}; choose from {WEIGHTINGS}")

@dataclass
class DenoisingScoreMatching:
    """The DSM objective of the module docstring for an epsilon-predicting network.

    ``weighting``: ``"variance"`` (lambda = sigma²) or ``"likelihood"`` (lambda = g²);
    ``importance_sampling`` (likelihood weighting only) draws t ~ q ∝ g² / sigma².
    ``loss`` follows ``minigen.train``'s protocol: (model, x1, generator, per_sample) ->
    (scalar loss, per-sample losses (B,) or None, t (B,)).
    """

    sde: SDE
    weighting: str = "variance"
    importance_sampling: bool = False
    sampler: LikelihoodTimeSampler | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {self.weighting!r}; choose from {WEIGHTINGS}")
        if self.importance_sampling and self.weighting != "likelihood":
            raise ValueError("importance sampling of t is for the likelihood weighting")
        if self.importance_sampling and self.sampler is None:
            self.sampler = LikelihoodTimeSampler(self.sde)

    def sample_time(self, n: int, generator: torch.Generator) -> Tensor:
        """t ~ U[t_min, t_max], or t ~ q with importance sampling: (n,)."""
        if self.importance_sampling:
            return self.sampler.sample(n, generator)
        return self.sde.t_min + (self.sde.t_max - self.sde.t_min) * torch.rand(n, generator=generator)

    def time_weight(self, t: Tensor) -> Tensor:
        """The factor multiplying ||eps_theta - x0||²: lambda(t) / sigma(t)², or the constant
        Z / (t_max - t_min) under importance sampling (so both estimate the same J): (B,)."""
        if self.importance_sampling:
            return torch.full_like(t, self.sampler.z / (self.sde.t_max - self.sde.t_min))
        t64 = t.double()
        return (dsm_weight(self.sde, t64, self.weighting) / self.sde.path.sigma(t64) ** 2).to(t.dtype)

    def per_sample_loss(self, model, x1: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """lambda(t) || s_theta(x_t, t) - grad log p_t(x_t | x1) ||² per sample, averaged over
        dimensions: ((B,), t (B,))."""
        t = self.sample_time(len(x1), generator).to(x1)
        x0 = torch.randn(x1.shape, generator=generator).to(x1)
        xt = self.sde.path.sample(x0, x1, t).xt
        err = (model(xt, t) - x0).pow(2).flatten(1).mean(1)
        return self.time_weight(t) * err, t

    def loss(self, model, x1: Tensor, generator: torch.Generator, per_sample: bool = False) -> LossResult:
        losses, t = self.per_sample_loss(model, x1, generator)
        return LossResult(losses.mean(), losses.detach() if per_sample else None, t)

    def score(self, model) -> Callable[[Tensor, Tensor], Tensor]:
        """The score function of a model trained with this objective."""
        return score_from_epsilon_model(model, self.sde)

def probability_flow_log_likelihood(sde: SDE, score_fn: Callable, x1: Tensor, steps: int = 100,
                                    method: str = "rk4", estimator: str = "exact",
                                    generator: torch.Generator | None = None,
                                    warp: float = 1.0, t_end: float | None = None) -> Tensor:
    """log p_t(x1) at t = ``t_end`` (default t_max) of the probability-flow ODE (Song et al.,
    2021, eq. 13 and App. D.2) with the prior ``sde.prior_log_prob`` at t_min: (B,).

    ``minigen.recipe.likelihood.log_likelihood`` integrates over [0, 1]; VP and sub-VP stop at
    t_max < 1 (sigma(1) = 0 makes the score infinite), so the ODE is run in tau in [0, 1] with
    t = t_min + (1 - (1 - tau)^warp) (t_end - t_min) and dx/dtau = dt/dtau v(x, t): an exact
    change of variables (the divergence term scales with it) whose fixed steps, for warp > 1,
    crowd towards the data end, where the field changes fastest. Data are evaluated at t_end,
    where p_t still holds sigma(t)² of noise (Song et al. stop at 1e-5 likewise).
    Fixed steps bias the estimate: check convergence in ``steps`` before trusting a figure."""
    if not warp >= 1:
        raise ValueError(f"warp must be >= 1, got {warp}")
    t1 = sde.t_max if t_end is None else float(t_end)
    if not sde.t_min < t1 <= sde.t_max:
        raise ValueError(f"t_end must lie in ({sde.t_min}, {sde.t_max}], got {t_end}")
    v = probability_flow_velocity(sde, score_fn)
    t0, span = sde.t_min, t1 - sde.t_min

    def v_unit(x, tau):
        dt_dtau = span * warp * (1 - tau) ** (warp - 1)
        return expand_t(dt_dtau, x) * v(x, t0 + span * (1 - (1 - tau) ** warp))

    return log_likelihood(v_unit, x1, sde.prior_log_prob, steps=steps, method=method,
                          estimator=estimator, generator=generator)

def discrete_nll_bound(sde: SDE, eps_model: Callable, x: Tensor, decoder, t_end: float,
                       generator: torch.Generator, steps: int = 24, warp: float = 3.0,
                       estimator: str = "hutchinson") -> Tensor:
    """An upper bound on -log P(x) for data on a grid of grey levels, in nats: (B,).

    Noise x once to x_t = alpha x + sigma z at t = ``t_end`` and decode back to the levels:

        -log P(x) <= E_q[ -log p_t(x_t) - log p(x | x_t) + log q(x_t | x) ],  q = N(alpha x, sigma² I),

    (Jensen), with p_t the model's probability-flow density at t (``probability_flow_log_likelihood``)
    and p(x | x_t) a ``ddpm.LevelDecoder`` around Tweedie's mean (x_t - sigma eps_theta) / alpha.
    This is dequantization by Gaussian noise with a decoder, as in Variational Diffusion
    Models (Kingma et al., 2021), in place of uniform dequantization (the density of
    y = x + U(bin) bounds -log P(x) too, but a smooth model pays for the bins' sharp edges).
    One draw of z per image: an unbiased estimate of the bound."""
    t = batch_time(t_end, x)
    alpha, sigma = expand_t(sde.path.alpha(t), x), expand_t(sde.path.sigma(t), x)
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    xt = alpha * x + sigma * z
    score = score_from_epsilon_model(eps_model, sde)
    log_p = probability_flow_log_likelihood(sde, score, xt, steps=steps, estimator=estimator,
                                            generator=generator, warp=warp, t_end=t_end)
    log_q = (-0.5 * z ** 2 - torch.log(sigma) - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)
    log_dec = decoder.log_prob(x, denoise(sde, eps_model, xt, t_end)).flatten(1).sum(1)
    return -log_p - log_dec.to(log_p) + log_q

def time_at_sigma(sde: SDE, sigma: float, t_from: float = 0.5, points: int = 20001) -> float:
    """The t in [t_from, t_max] where the path's noise std sigma(t) is nearest ``sigma``, on a
    grid of ``points`` times: where to noise data to before decoding it (``discrete_nll_bound``)."""
    ts = torch.linspace(t_from, sde.t_max, points, dtype=torch.float64)
    sig = sde.path.sigma(ts)
    lo, hi = float(sig.min()), float(sig.max())
    if not lo <= sigma <= hi:
        raise ValueError(f"sigma must lie in [{lo:.3g}, {hi:.3g}] (sigma(t) for t in [{t_from}, "
                         f"{sde.t_max}]), got {sigma}")
    return float(ts[(sig - sigma).abs().argmin()])

def denoise(sde: SDE, eps_model: Callable, x: Tensor, t: float | None = None) -> Tensor:
    """Tweedie's denoising step: E[x1 | x_t = x] = (x - sigma eps_theta(x, t)) / alpha at
    t = ``t`` (default t_max, the end of sampling: Efron, 2011; Song et al., 2021, App. G
    removes the last sigma(t_max) of noise this way). One NFE. (B, ...) -> (B, ...)."""
    t = batch_time(sde.t_max if t is None else t, x)
    with torch.no_grad():
        return sde.path.x1_from_epsilon(eps_model(x, t), x, t)
