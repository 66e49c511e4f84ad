"""Gaussian probability paths  x_t = alpha(t)·x1 + sigma(t)·x0 (+ gamma(t)·z).

Time convention of minigen: t in [0, 1], t = 0 is the source (noise), t = 1 the
data; alpha multiplies the data, sigma the source (book/design.md).

A path knows its schedule and derivatives, samples (x_t, conditional velocity)
for a pair (x0, x1), and converts exactly between the four predictions a
network can make at (x_t, t):

    velocity  v = alpha' x1 + sigma' x0          (Lipman et al., 2023, eq. 20)
    x1-pred   x1 = E[x1 | x_t]
    epsilon   eps = E[x0 | x_t]                  (only for a N(0, I) source)
    score     grad log p_t(x_t) = -eps / sigma   (only for a N(0, I) source)

Given x_t = alpha x1 + sigma x0 and v = alpha' x1 + sigma' x0, the pair (x1, x0)
solves a 2x2 linear system, so any one prediction gives the others
(Kingma & Gao, 2023; Lipman et al., "Flow Matching Guide and Code", 2024, §4.8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from minigen.broadcast import expand_t, time_checked_methods
from minigen.recipe.gamma import BrownianGamma, ZeroGamma

Tensor = torch.Tensor

@dataclass
class PathSample:
    """A point on the conditional path and its target velocity (all (B, ...) except t: (B,))."""

    t: Tensor
    x0: Tensor
    x1: Tensor
    xt: Tensor
    dxt: Tensor
    z: Tensor | None = None


class GaussianPath:
    """Base class: subclasses define alpha, sigma and their time derivatives.

    ``source_is_gaussian`` says whether x0 ~ N(0, I); epsilon and score
    conversions need it. ``boundary`` = (alpha(0), sigma(0), alpha(1), sigma(1))
    expected values, checked at construction within ``tol``.
    """

    name = "gaussian"
    boundary: tuple[float, float, float, float] = (0.0, 1.0, 1.0, 0.0)
    tol = 1e-6
    t_min, t_max = 0.0, 1.0  # where the schedule's derivatives are finite

    def __init_subclass__(cls, **kwargs):
        """Every method a path defines that takes t (schedules, ``sample``, the conversions)
        rejects t outside [0, 1]: ``broadcast.time_checked``, one check per outermost call."""
        super().__init_subclass__(**kwargs)
        time_checked_methods(cls)

    def __init__(self, source_is_gaussian: bool = True):
        self.source_is_gaussian = source_is_gaussian
        self.check_boundaries()

    # --- schedule (override) ---
    def alpha(self, t: Tensor) -> Tensor: raise NotImplementedError
    def sigma(self, t: Tensor) -> Tensor: raise NotImplementedError
    def d_alpha(self, t: Tensor) -> Tensor: raise NotImplementedError
    def d_sigma(self, t: Tensor) -> Tensor: raise NotImplementedError
    def gamma(self, t: Tensor) -> Tensor: return torch.zeros_like(t)
    def d_gamma(self, t: Tensor) -> Tensor: return torch.zeros_like(t)

    has_bridge_noise = False

    def check_boundaries(self) -> None:
        """Assert alpha(0), sigma(0), alpha(1), sigma(1) equal ``boundary`` within ``tol``."""
        t = torch.tensor([0.0, 1.0], dtype=torch.float64)
        got = (self.alpha(t)[0], self.sigma(t)[0], self.alpha(t)[1], self.sigma(t)[1])
        names = ("alpha(0)", "sigma(0)", "alpha(1)", "sigma(1)")
        for name, g, want in zip(names, got, self.boundary):
            if not abs(float(g) - want) <= self.tol:
                raise ValueError(f"{type(self).__name__}: {name} = {float(g):.6g}, "
                                 f"expected {want} within {self.tol}")

    # --- sampling ---
    def sample(self, x0: Tensor, x1: Tensor, t: Tensor, z: Tensor | None = None) -> PathSample:
        """x_t = alpha x1 + sigma x0 + gamma z and dx_t/dt = alpha' x1 + sigma' x0 + gamma' z."""
        if x0.shape != x1.shape:
            raise ValueError(f"x0 and x1 must have the same shape, got {tuple(x0.shape)} "
                             f"and {tuple(x1.shape)}")
        tt = expand_t(t, x1)
        xt = self.alpha(tt) * x1 + self.sigma(tt) * x0
        dxt = self.d_alpha(tt) * x1 + self.d_sigma(tt) * x0
        if self.has_bridge_noise:
            if z is None:
                raise ValueError(f"{self.name} has bridge noise gamma(t) z: pass z")
            xt = xt + self.gamma(tt) * z
            dxt = dxt + self.d_gamma(tt) * z
        return PathSample(t=t, x0=x0, x1=x1, xt=xt, dxt=dxt, z=z)

    @property
    def prior_std(self) -> float:
        """sigma(0) in float64: the std of the t = 0 marginal once the data term alpha(0) x1 is
        neglected (alpha(0) = 0, or 0.0066 for VP linear-beta; VE: sigma_max)."""
        return float(self.sigma(torch.tensor(0.0, dtype=torch.float64)))

    def prior_sample(self, shape, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> Tensor:
        """x ~ N(0, prior_std² I), the t = 0 marginal of a N(0, I) source: (shape). The one prior
        sampler of the Gaussian paths; ``sde.SDE.prior_sample`` is this."""
        if not self.source_is_gaussian:
            raise ValueError(f"{self.name}: the source is not Gaussian; sample it from its data set")
        return self.prior_std * torch.randn(*shape, generator=generator, dtype=dtype)

    # --- conversions (gamma = 0 only) ---
    def _coeffs(self, xt: Tensor, t: Tensor):
        if self.has_bridge_noise:
            raise ValueError(f"{self.name}: conversions assume gamma(t) = 0 (no bridge noise)")
        tt = expand_t(t, xt)
        return self.alpha(tt), self.sigma(tt), self.d_alpha(tt), self.d_sigma(tt)

    def _need_gaussian(self, what: str) -> None:
        if not self.source_is_gaussian:
            raise ValueError(f"{what} needs a N(0, I) source; this {self.name} path was built with "
                             "source_is_gaussian=False (e.g. 8gaussians -> moons)")

    def velocity_from_x1(self, x1_hat: Tensor, xt: Tensor, t: Tensor) -> Tensor:
        """v = alpha' x1 + sigma' (x_t - alpha x1) / sigma."""
        a, s, da, ds = self._coeffs(xt, t)
        return da * x1_hat + ds * (xt - a * x1_hat) / s

    def x1_from_velocity(self, v: Tensor, xt: Tensor, t: Tensor) -> Tensor:
        """x1 = (sigma' x_t - sigma v) / (sigma' alpha - sigma alpha')."""
        a, s, da, ds = self._coeffs(xt, t)
        return (ds * xt - s * v) / (ds * a - s * da)

    def x0_from_velocity(self, v: Tensor, xt: Tensor, t: Tensor) -> Tensor:
        """x0 = (alpha' x_t - alpha v) / (alpha' sigma - alpha sigma')."""
        a, s, da, ds = self._coeffs(xt, t)
        return (da * xt - a * v) / (da * s - a * ds)

    def velocity_from_epsilon(self, eps: Tensor, xt: Tensor, t: Tensor) -> Tensor:
        """v = alpha' (x_t - sigma eps) / alpha + sigma' eps."""
        self._need_gaussian("epsilon")
        a, s, da, ds = self._coeffs(xt, t)
        return da * (xt - s * eps) / a + ds * eps

    def epsilon_from_velocity(self, v: Tensor, xt: Tensor, t: Tensor) -> Tensor:
        self._need_gaussian("epsilon")
        return self.x0_from_velocity(v, xt, t)

    def x1_from_epsilon(self, eps: Tensor, xt: Tensor, t: Tensor) -> Tensor:
        """x1 = (x_t - sigma eps) / alpha."""
        self._need_gaussian("epsilon")
        a, s, _, _ = self._coeffs(xt, t)
        return (xt - s * eps) / a

    def epsilon_from_x1(self, x1_hat: Tensor, xt: Tensor, t: Tensor) -> Tensor:
        """eps = (x_t - alpha x1) / sigma."""
        self._need_gaussian("epsilon")
        a, s, _, _ = self._coeffs(xt, t)
        return (xt - a * x1_hat) / s

    def score_from_epsilon(self, eps: Tensor, xt: Tensor, t: Tensor) -> Tensor:
        """grad log p_t(x_t) = -E[x0 | x_t] / sigma (Tweedie; Vincent, 2011)."""
        self._need_gaussian("score")
        _, s, _, _ = self._coeffs(xt, t)
        return -eps / s

    def epsilon_from_score(self, score: Tensor, xt: Tensor, t: Tensor) -> Tensor:
        self._need_gaussian("score")
        _, s, _, _ = self._coeffs(xt, t)
        return -s * score

    def velocity_from_score(self, score: Tensor, xt: Tensor, t: Tensor) -> Tensor:
        return self.velocity_from_epsilon(self.epsilon_from_score(score, xt, t), xt, t)

    def score_from_velocity(self, v: Tensor, xt: Tensor, t: Tensor) -> Tensor:
        return self.score_from_epsilon(self.epsilon_from_velocity(v, xt, t), xt, t)

    def convert(self, pred: Tensor, xt: Tensor, t: Tensor, src: str, dst: str) -> Tensor:
        """Convert a prediction of type ``src`` to ``dst`` (velocity, x1, epsilon, score)."""
        for k in (src, dst):
            if k not in PREDICTIONS:
                raise ValueError(f"unknown prediction type {k!r}; choose from {PREDICTIONS}")
        if src == dst:
            return pred
        to_v = {"velocity": lambda p: p, "x1": self.velocity_from_x1,
                "epsilon": self.velocity_from_epsilon, "score": self.velocity_from_score}
        v = pred if src == "velocity" else to_v[src](pred, xt, t)
        from_v = {"velocity": lambda p, *_: p, "x1": self.x1_from_velocity,
                  "epsilon": self.epsilon_from_velocity, "score": self.score_from_velocity}
        return from_v[dst](v, xt, t)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(source_is_gaussian={self.source_is_gaussian})"


time_checked_methods(GaussianPath)  # its sample and conversions; subclasses: __init_subclass__
PREDICTIONS = ("velocity", "x1", "epsilon", "score")


class LinearPath(GaussianPath):
    """CondOT / rectified-flow path: alpha = t, sigma = 1 - t (Lipman et al., 2023, eq. 22;
    Liu et al., 2023). Exact boundaries."""

    name = "linear"

    def alpha(self, t): return t
    def sigma(self, t): return 1 - t
    def d_alpha(self, t): return torch.ones_like(t)
    def d_sigma(self, t): return -torch.ones_like(t)

    def sample(self, x0: Tensor, x1: Tensor, t: Tensor, z: Tensor | None = None) -> PathSample:
        """x_t = t x1 + (1 - t) x0, dx_t/dt = x1 - x0: constants folded in (every training step)."""
        if self.has_bridge_noise or x0.shape != x1.shape:
            return super().sample(x0, x1, t, z)
        tt = expand_t(t, x1)
        return PathSample(t=t, x0=x0, x1=x1, xt=tt * x1 + (1 - tt) * x0, dxt=x1 - x0, z=z)


class VPCosinePath(GaussianPath):
    """Variance-preserving cosine path: alpha = sin(pi t / 2), sigma = cos(pi t / 2)
    (Nichol & Dhariwal, 2021, in our time; alpha² + sigma² = 1). Exact boundaries
    (to float rounding: cos(pi/2) ≈ 6e-17)."""

    name = "vp_cosine"

    def alpha(self, t): return torch.sin(0.5 * math.pi * t)
    def sigma(self, t): return torch.cos(0.5 * math.pi * t)
    def d_alpha(self, t): return 0.5 * math.pi * torch.cos(0.5 * math.pi * t)
    def d_sigma(self, t): return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)


class VPLinearBetaPath(GaussianPath):
    """DDPM's linear-beta schedule as a continuous VP path (Ho et al., 2020;
    Song et al., 2021, eq. 33 with beta_min = 0.1, beta_max = 20 for T = 1000).

    In DDPM time s = 1 - t: beta(s) = b0 + s (b1 - b0) and
    alpha(t) = exp(-½ ∫_0^{1-t} beta) = exp(-½ (b0 s + ½ (b1 - b0) s²)),
    sigma = sqrt(1 - alpha²). alpha(0) = exp(-5.025) ≈ 0.0066, not 0 (tol 0.01);
    sigma' diverges at t = 1, so ``t_max`` = 1 - 1e-3 for training and sampling.
    """

    name = "vp_linear"
    tol = 0.01
    t_max = 1 - 1e-3

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0,
                 source_is_gaussian: bool = True):
        if not 0 < beta_min < beta_max:
            raise ValueError(f"need 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        self.b0, self.b1 = beta_min, beta_max
        super().__init__(source_is_gaussian)

    def beta(self, t):
        """beta at DDPM time s = 1 - t."""
        return self.b0 + (1 - t) * (self.b1 - self.b0)

    def alpha(self, t):
        s = 1 - t
        return torch.exp(-0.5 * (self.b0 * s + 0.5 * (self.b1 - self.b0) * s**2))

    def sigma(self, t): return torch.sqrt((1 - self.alpha(t) ** 2).clamp_min(0))
    def d_alpha(self, t): return 0.5 * self.beta(t) * self.alpha(t)

    def d_sigma(self, t):
        a = self.alpha(t)
        return -a * self.d_alpha(t) / self.sigma(t).clamp_min(1e-12)


class VEPath(GaussianPath):
    """Variance-exploding path of score SDEs (Song et al., 2021, eq. 31) in our time:
    alpha ≡ 1, sigma(t) = sigma_max (sigma_min / sigma_max)^t.

    The source is N(x1, sigma_max²) ≈ N(0, sigma_max² I) and the end point keeps
    sigma_min of noise: boundary (1, sigma_max, 1, sigma_min).
    """

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0,
                 source_is_gaussian: bool = True):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.smin, self.smax = sigma_min, sigma_max
        self.boundary = (1.0, sigma_max, 1.0, sigma_min)
        self.tol = 1e-6 * sigma_max
        super().__init__(source_is_gaussian)

    def alpha(self, t): return torch.ones_like(t)
    def sigma(self, t): return self.smax * (self.smin / self.smax) ** t
    def d_alpha(self, t): return torch.zeros_like(t)
    def d_sigma(self, t): return self.sigma(t) * math.log(self.smin / self.smax)


class SubVPPath(GaussianPath):
    """The sub-VP path of Song et al. (2021, §3.4): the mean of a VP path and
    std sigma(t) = 1 - alpha(t)² (<= the VP std sqrt(1 - alpha²)); sigma' = -2 alpha alpha'."""

    name = "sub_vp"

    def __init__(self, vp: GaussianPath | None = None, source_is_gaussian: bool | None = None):
        if vp is None:
            vp = VPLinearBetaPath(source_is_gaussian=source_is_gaussian is not False)
        self.vp = vp
        self.tol, self.t_min, self.t_max = vp.tol, vp.t_min, vp.t_max
        super().__init__(vp.source_is_gaussian if source_is_gaussian is None else source_is_gaussian)

    def alpha(self, t): return self.vp.alpha(t)
    def sigma(self, t): return 1 - self.vp.alpha(t) ** 2
    def d_alpha(self, t): return self.vp.d_alpha(t)
    def d_sigma(self, t): return -2 * self.vp.alpha(t) * self.vp.d_alpha(t)


class Interpolant(GaussianPath):
    """x_t = alpha x1 + sigma x0 + gamma z: alpha, sigma from ``base`` (a GaussianPath with
    exact boundaries; default ``LinearPath``) and a gamma schedule (``minigen.recipe.gamma``;
    default none), the one way any path gains independent noise (Albergo et al., 2023).

    ``objectives.CFM(interpolant)`` is the velocity loss for b: it draws z, and clamps t to
    [t_min, t_max] = [t_eps, 1 - t_eps] where gamma' is singular. ``source_is_gaussian``
    defaults to the base's.
    """

    name = "interpolant"

    def __init__(self, base: GaussianPath | None = None, gamma=None,
                 source_is_gaussian: bool | None = None):
        base = LinearPath() if base is None else base
        if source_is_gaussian is None:
            source_is_gaussian = base.source_is_gaussian
        self.base, self.noise = base, gamma if gamma is not None else ZeroGamma()
        self.has_bridge_noise = not isinstance(self.noise, ZeroGamma)
        self.t_min, self.t_max = self.noise.t_eps, 1 - self.noise.t_eps
        super().__init__(source_is_gaussian)
        ends = self.noise(torch.tensor([0.0, 1.0], dtype=torch.float64))
        if ends.abs().max() > 1e-12:
            raise ValueError(f"gamma must vanish at t = 0 and 1, got {ends.tolist()}")

    def alpha(self, t): return self.base.alpha(t)
    def sigma(self, t): return self.base.sigma(t)
    def d_alpha(self, t): return self.base.d_alpha(t)
    def d_sigma(self, t): return self.base.d_sigma(t)
    def gamma(self, t): return self.noise(t)
    def d_gamma(self, t): return self.noise.deriv(t)

    def sample(self, x0: Tensor, x1: Tensor, t: Tensor, z: Tensor | None = None) -> PathSample:
        """x_t and its velocity alpha' x1 + sigma' x0 + gamma' z; t (B,) or scalar in [0, 1]."""
        t = torch.as_tensor(t)  # t is checked by time_checked (GaussianPath.__init_subclass__)
        if x0.shape != x1.shape:
            raise ValueError(f"x0 and x1 must have the same shape, got {tuple(x0.shape)} "
                             f"and {tuple(x1.shape)}")
        if z is not None and z.shape != x1.shape:
            raise ValueError(f"z must have the shape of x1 {tuple(x1.shape)}, got {tuple(z.shape)}")
        return super().sample(x0, x1, t, z)

    def __repr__(self) -> str:
        a = getattr(self.noise, "a", 0.0)
        return f"Interpolant({self.base.name}, gamma={self.noise.name}(a={a}))"


class BridgePath(Interpolant):
    """Linear path plus Brownian-bridge noise gamma(t) = s·sqrt(t (1 - t))
    (Schrödinger-bridge CFM, Tong et al., 2024, Prop. 3.4):

        x_t = t x1 + (1 - t) x0 + s sqrt(t(1-t)) z,
        u_t = x1 - x0 + s (1 - 2t) / (2 sqrt(t(1-t))) z.

    ``Interpolant(LinearPath(), BrownianGamma(s, t_eps))``: gamma' is singular at t = 0, 1, so
    it is evaluated at t clamped to [t_eps, 1 - t_eps] and training times are kept there.
    """

    name = "bridge"
    has_bridge_noise = True

    def __init__(self, s: float = 1.0, t_eps: float = 1e-4, source_is_gaussian: bool = True):
        if not s > 0:
            raise ValueError(f"bridge noise level s must be > 0, got {s}")
        self.s, self.t_eps = s, t_eps
        super().__init__(LinearPath(source_is_gaussian), BrownianGamma(s, t_eps), source_is_gaussian)

    def __repr__(self) -> str:
        return f"BridgePath(s={self.s}, t_eps={self.t_eps}, source_is_gaussian={self.source_is_gaussian})"


PATHS = {"linear": LinearPath, "bridge": BridgePath, "vp_cosine": VPCosinePath,
         "vp_linear": VPLinearBetaPath, "ve": VEPath,
         "sub_vp": SubVPPath, "interpolant": Interpolant}


def make_path(name: str, **kwargs) -> GaussianPath:
    """Build a path by name (see ``PATHS``)."""
    if name not in PATHS:
        raise ValueError(f"unknown path {name!r}; choose from {sorted(PATHS)}")
    return PATHS[name](**kwargs)
