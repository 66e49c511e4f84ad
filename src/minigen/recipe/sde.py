"""Score-based generative modelling with SDEs (Song et al., 2021, "Score-Based Generative
Modeling through Stochastic Differential Equations"), derived from minigen's paths.

**Time.** The paper's forward SDE runs s = 0 (data) -> s = 1 (noise):

    dx = f(x, s) ds + g(s) dw_s.

minigen's time is t = 1 - s (t = 0 noise, t = 1 data), so generation integrates
*forward* in t. Each SDE here is built from a path x_t = alpha(t) x1 + sigma(t) x0 and
reports the paper's f and g at the same instant, written with our t and our
derivatives (' = d/dt = -d/ds):

    drift(x, t)    f = -(alpha'/alpha) x
    diffusion(t)   g² = 2 (alpha'/alpha) sigma² - (sigma²)'

(the affine SDE whose marginal is N(alpha x1, sigma² I); Song et al., 2021, §3.4 and
App. B). The noising process is "dx = f ds + g dw_s with ds = -dt", i.e. an
Euler–Maruyama step of size h > 0 *backwards* in t:  x_{t-h} = x_t + f h + g sqrt(h) z.

The generative direction (Anderson, 1982; Song et al., 2021, eqs. 6 and 13), in our t:

    dx = [-f + ½ (g² + e²) grad log p_t(x)] dt + e dw_t,   any e(t) >= 0,

with e = g the reverse-time SDE and e = 0 the probability-flow ODE; all share the
marginals p_t because adding ½ e² score to the drift and e dw leaves the Fokker–Planck
equation unchanged.

    ======  ==========================  ===============================  ==================
    SDE     path (ours)                 g²(t), s = 1 - t                  prior (t = 0)
    ======  ==========================  ===============================  ==================
    VP      VPLinearBetaPath            beta(s)                          N(0, sigma(0)² I)
    sub-VP  alpha as VP, sigma = 1-a²   beta(s) (1 - alpha⁴)             N(0, sigma(0)² I)
    VE      VEPath                      d sigma²/ds = -(sigma²)'          N(0, sigma_max² I)
    ======  ==========================  ===============================  ==================

Score functions take minigen's ``score_fn(x, t)`` with t in [0, 1], shape (B,). Every SDE
method that takes t rejects one outside [0, 1], as the paths' do (``broadcast.time_checked``);
the samplers stay inside [t_min, t_max].
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from minigen.broadcast import time_checked_methods
from minigen.recipe.paths import GaussianPath, SubVPPath, VEPath, VPLinearBetaPath, expand_t

Tensor = torch.Tensor
ScoreFn = Callable[[Tensor, Tensor], Tensor]


def _t(t) -> Tensor:
    """A tensor t keeps its dtype; a Python number becomes float64."""
    return t if isinstance(t, Tensor) else torch.tensor(float(t), dtype=torch.float64)

class SDE:
    """Forward (noising) SDE derived from a Gaussian path (see the module docstring).

    ``path`` gives alpha and sigma; ``t_min``/``t_max`` the range where they are finite
    (samplers run from t_min to t_max).
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        time_checked_methods(cls)  # every method that takes t checks it, as SDE's own do

    def __init__(self, path: GaussianPath):
        if not path.source_is_gaussian:
            raise ValueError(f"an SDE needs a N(0, I) source; {path.name} has source_is_gaussian=False")
        self.path = path
        self.t_min, self.t_max = path.t_min, path.t_max

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={self.path!r})"

    def log_alpha_rate(self, t: Tensor) -> Tensor:
        """alpha'(t) / alpha(t) (d/dt, our time)."""
        return self.path.d_alpha(t) / self.path.alpha(t)

    def d_sigma2(self, t: Tensor) -> Tensor:
        """(sigma²)'(t) = 2 sigma sigma'."""
        return 2 * self.path.sigma(t) * self.path.d_sigma(t)

    def drift(self, x: Tensor, t) -> Tensor:
        """Forward drift f(x, s = 1 - t) = -(alpha'/alpha)(t) x: (B, ...)."""
        return -self.log_alpha_rate(expand_t(t, x)) * x

    def diffusion(self, t) -> Tensor:
        """Forward diffusion g(s = 1 - t) = sqrt(2 (alpha'/alpha) sigma² - (sigma²)'): t's shape."""
        t = _t(t)
        g2 = 2 * self.log_alpha_rate(t) * self.path.sigma(t) ** 2 - self.d_sigma2(t)
        return g2.clamp_min(0).sqrt()

    def marginal(self, x1: Tensor, t) -> tuple[Tensor, Tensor]:
        """Mean alpha(t) x1 (B, ...) and std sigma(t) (B,) of p_t(x | x1) (Song et al., 2021,
        §3.4 and App. B; for sub-VP the std is 1 - alpha², not sqrt(1 - alpha²))."""
        tt = expand_t(t, x1)
        return self.path.alpha(tt) * x1, self.path.sigma(tt).view(-1)

    @property
    def prior_std(self) -> float:
        """Std of the prior N(0, sigma(0)² I) (the data term alpha(0) x1 is neglected)."""
        return self.path.prior_std

    def prior_sample(self, shape, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> Tensor:
        """x ~ N(0, prior_std² I): (shape) (``GaussianPath.prior_sample``)."""
        return self.path.prior_sample(shape, generator, dtype)

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """log N(x; 0, prior_std² I), summed over all but the batch dimension: (B,)."""
        s, flat = self.prior_std, x.reshape(len(x), -1)
        return -0.5 * (flat / s).pow(2).sum(1) - flat.shape[1] * (math.log(s) + 0.5 * math.log(2 * math.pi))

    def reverse_drift(self, x: Tensor, t, score: Tensor, diffusion=None) -> Tensor:
        """Drift of the generative SDE in our time (t: noise -> data), for diffusion e:

            -f(x, t) + ½ (g(t)² + e²) score,   e = g(t) by default (the reverse-time SDE,
            Song et al., 2021, eq. 6), e = 0 the probability-flow ODE (eq. 13).

        ``score`` is grad log p_t(x) (B, ...); ``diffusion`` a float or (B,) tensor. (B, ...)."""
        tt = expand_t(t, x)
        g2 = self.diffusion(tt) ** 2
        e2 = g2 if diffusion is None else expand_t(torch.as_tensor(diffusion, dtype=x.dtype), x) ** 2
        return -self.drift(x, t) + 0.5 * (g2 + e2) * score

time_checked_methods(SDE)

class VPSDE(SDE):
    """Variance-preserving SDE dx = -½ beta(s) x ds + sqrt(beta(s)) dw (Song et al., 2021,
    §3.4), from a VP path (alpha² + sigma² = 1). (sigma²)' = -(alpha²)' is used so that
    g² = 2 alpha'/alpha = beta stays finite at t = 1 where sigma = 0. A path with alpha(0) = 0
    (``VPCosinePath``) has an infinite drift at t = 0: set ``t_min`` > 0 before sampling."""

    def __init__(self, path: GaussianPath | None = None):
        path = VPLinearBetaPath() if path is None else path
        t = torch.linspace(0, 1, 11, dtype=torch.float64)
        if not torch.allclose(path.alpha(t) ** 2 + path.sigma(t) ** 2, torch.ones_like(t), atol=1e-6):
            raise ValueError(f"VPSDE needs a variance-preserving path (alpha² + sigma² = 1), got {path.name}")
        super().__init__(path)

    def d_sigma2(self, t: Tensor) -> Tensor:
        return -2 * self.path.alpha(t) * self.path.d_alpha(t)

class SubVPSDE(SDE):
    """Sub-VP SDE dx = -½ beta(s) x ds + sqrt(beta(s) (1 - exp(-2 ∫_0^s beta))) dw (Song et al.,
    2021, §3.4): the VP drift with std 1 - alpha² instead of sqrt(1 - alpha²); built from a
    VP path, whose alpha it keeps (``SubVPPath``)."""

    def __init__(self, path: GaussianPath | None = None):
        vp = VPSDE(path).path  # checks the path is VP
        super().__init__(SubVPPath(vp))

class VESDE(SDE):
    """Variance-exploding SDE dx = sqrt(d sigma²/ds) dw (Song et al., 2021, §3.4) from a path
    with alpha ≡ 1 (``VEPath``): g(s)² = 2 sigma² log(sigma_max / sigma_min) there."""

    def __init__(self, path: GaussianPath | None = None):
        path = VEPath() if path is None else path
        t = torch.linspace(0, 1, 11, dtype=torch.float64)
        if not torch.allclose(path.alpha(t), torch.ones_like(t)):
            raise ValueError(f"VESDE needs a path with alpha ≡ 1, got {path.name}")
        super().__init__(path)
