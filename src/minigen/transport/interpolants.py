"""Stochastic interpolants (Albergo, Boffi & Vanden-Eijnden, 2023, "Stochastic
Interpolants: A Unifying Framework for Flows and Diffusions") in minigen's notation.

    x_t = alpha(t) x1 + sigma(t) x0 + gamma(t) z,   z ~ N(0, I) independent of (x0, x1),

with alpha on the data x1 and sigma on the source x0 (the paper writes
I_t = alpha(t) x0 + beta(t) x1 + gamma(t) z: its alpha is our sigma, its beta our
alpha; time runs the same way, t = 0 source, t = 1 data). gamma(0) = gamma(1) = 0.

Two fields are learned by regression (Albergo et al., 2023):

    velocity  b(x, t)   = E[alpha' x1 + sigma' x0 + gamma' z | x_t = x]
    denoiser  eta(x, t) = E[z | x_t = x],      score  s = grad log p_t = -eta / gamma,

and every member of the family of SDEs (forward in our time, 0 -> 1)

    dX_t = (b + eps(t) s)(X_t, t) dt + sqrt(2 eps(t)) dW_t,    eps(t) >= 0,

has the marginals p_t of x_t: the Fokker-Planck equation gains
-div(p eps s) + eps Laplacian(p) = -eps div(grad p) + eps Laplacian(p) = 0.
eps = 0 is the probability-flow ODE. When x0 is not Gaussian (8gaussians -> moons)
the score exists only through gamma z, which is why gamma > 0 is needed for eps > 0.

The ends: s = -eta / gamma is 0/0 where gamma = 0 (t = 0 and t = 1), and a learned
eta's error is divided by gamma. ``sample_sde`` therefore takes, by default,
eps(t) = eps · gamma(t) / max gamma: the noise level follows gamma and vanishes at the
ends, the drift term eps(t) s = -eps eta / max gamma stays bounded, and the marginals are
unchanged (any eps(t) >= 0 keeps them). The interpolant itself is a path of the recipe,
``minigen.recipe.paths.Interpolant`` (any base path plus a gamma of ``minigen.recipe.gamma``);
``paths.BridgePath`` is the special case linear + ``BrownianGamma(s)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from minigen.broadcast import batch_time, expand_t
from minigen.recipe.couplings import independent
from minigen.recipe.objectives import CFM
from minigen.recipe.paths import Interpolant
from minigen.recipe.results import SampleResult

Tensor = torch.Tensor
Field = Callable[[Tensor, Tensor], Tensor]


# ---------------------------------------------------------------- the two losses

def velocity_objective(interp: Interpolant, coupling: Callable = independent) -> CFM:
    """Loss for b: E_{t, x0, x1, z} || b(x_t, t) - (alpha' x1 + sigma' x0 + gamma' z) ||²
    (Albergo et al., 2023: b is the minimiser). It is CFM on the interpolant."""
    return CFM(interp, coupling=coupling, name=f"b[{interp.noise.name}]")


@dataclass
class DenoiserObjective:
    """Loss for the denoiser: E_{t, x0, x1, z} || eta(x_t, t) - z ||², minimised by
    eta(x, t) = E[z | x_t = x] = -gamma(t) s(x, t) (Albergo et al., 2023)."""

    interp: Interpolant
    coupling: Callable = independent

    def __post_init__(self):
        if not self.interp.has_bridge_noise:
            raise ValueError("the denoiser needs gamma > 0: this interpolant has gamma = 0")

    def loss(self, model, x0: Tensor, x1: Tensor, generator: torch.Generator,
             per_sample: bool = True):
        """(scalar loss, per-sample losses (B,) or None, t (B,)) as ``train`` expects."""
        ps = CFM(self.interp, coupling=self.coupling).sample_path(x0, x1, generator)
        pred = model(ps.xt, ps.t)
        losses = (pred - ps.z).detach().pow(2).flatten(1).mean(1) if per_sample else None
        return F.mse_loss(pred, ps.z), losses, ps.t


# ---------------------------------------------------------------- the SDE family

def score_from_denoiser(eta: Tensor, xt: Tensor, t: Tensor, interp: Interpolant) -> Tensor:
    """s(x, t) = -eta(x, t) / gamma(t): (B, d). Undefined where gamma(t) = 0."""
    g = interp.gamma(expand_t(t, xt))
    if (g <= 0).any():
        raise ValueError("the score -eta/gamma is undefined where gamma(t) = 0 (t = 0 or 1)")
    return -eta / g


def denoiser_from_velocity(b: Field, interp: Interpolant) -> Field:
    """eta(x, t) = E[z | x_t = x] from the velocity alone, for a Gaussian source: (B, d).

    With x0 ~ N(0, I), sigma x0 + gamma z = s n with s² = sigma² + gamma² and n ~ N(0, I);
    E[x0 | x] = (sigma / s) E[n | x], E[z | x] = (gamma / s) E[n | x] and
    x = alpha E[x1 | x] + s E[n | x]. Inserting these into b = E[alpha' x1 + sigma' x0
    + gamma' z | x] and solving for E[n | x] gives

        eta = gamma (alpha b - alpha' x) / (alpha (sigma sigma' + gamma gamma') - alpha' s²),

    so a one-sided interpolant needs one regression, not two (cf. Albergo et al., 2023,
    Sec. 3 on one-sided interpolants, where b and the score are linear in each other).
    The denominator is -(1 - t/2) (linear) and <= -1/2 (trig) for the Brownian gamma.
    """
    if not interp.source_is_gaussian:
        raise ValueError("denoiser_from_velocity needs a Gaussian source (x0 ~ N(0, I)); "
                         "for another source learn eta with DenoiserObjective")
    if not interp.has_bridge_noise:
        raise ValueError("the denoiser needs gamma > 0: this interpolant has gamma = 0")

    def eta(x: Tensor, t: Tensor) -> Tensor:
        tt = expand_t(t, x)
        a, s, g = interp.alpha(tt), interp.sigma(tt), interp.gamma(tt)
        da, ds, dg = interp.d_alpha(tt), interp.d_sigma(tt), interp.d_gamma(tt)
        den = a * (s * ds + g * dg) - da * (s**2 + g**2)
        if (den.abs() < 1e-8).any():
            raise ValueError("alpha (sigma sigma' + gamma gamma') = alpha' (sigma² + gamma²) "
                             "at some t: eta is not determined by b there")
        return g * (a * b(x, t) - da * x) / den
    return eta


def eps_following_gamma(eps: float, interp: Interpolant, grid: int = 1001) -> Callable:
    """eps(t) = eps · gamma(t) / max_t gamma: noise that vanishes with gamma at the ends."""
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if eps > 0 and not interp.has_bridge_noise:
        raise ValueError("eps > 0 needs gamma > 0 (the score comes from the denoiser)")
    g_max = float(interp.gamma(torch.linspace(0, 1, grid, dtype=torch.float64)).max()) or 1.0
    return lambda t: eps * interp.gamma(t) / g_max


def sde_drift(b: Field, eta: Field, interp: Interpolant, eps_t: Callable) -> Field:
    """The drift b + eps(t) s = b - eps(t) eta / gamma (Albergo et al., 2023, forward SDE).

    Where eps(t) = 0 the denoiser is not called; eps(t) > 0 where gamma(t) = 0 is an error."""
    def drift(x: Tensor, t: Tensor) -> Tensor:
        tt = expand_t(t, x)
        e = eps_t(tt)
        if (e < 0).any():
            raise ValueError("eps(t) must be >= 0")
        if not (e > 0).any():
            return b(x, t)
        g = interp.gamma(tt)
        if ((e > 0) & (g <= 0)).any():
            raise ValueError("eps(t) > 0 where gamma(t) = 0: the score is undefined there; "
                             "use eps_following_gamma")
        return b(x, t) - torch.where(e > 0, e / g.clamp_min(1e-30), 0.0) * eta(x, t)
    return drift


@torch.no_grad()
def sample_sde(b: Field, eta: Field | None, interp: Interpolant, x0: Tensor,
               eps: float | Callable, steps: int, generator: torch.Generator,
               return_trajectory: bool = False) -> SampleResult:
    """Euler–Maruyama for dX = (b + eps s) dt + sqrt(2 eps) dW from t = 0 to 1: x (B, d), and
    the trajectory (steps + 1, B, d) with ``return_trajectory``. NFE = steps (one call of b, and
    of eta where eps(t) > 0, per step).

    ``eps`` a float means eps(t) = eps · gamma(t) / max gamma (``eps_following_gamma``);
    a callable eps(t) (B, 1) -> (B, 1) is used as given. eps = 0 is the ODE (Euler).
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    eps_t = eps if callable(eps) else eps_following_gamma(eps, interp)
    if eta is None:
        def eta(x, t):
            raise ValueError("eps(t) > 0 needs the denoiser eta; pass it (eta=None is the ODE)")
    drift, h = sde_drift(b, eta, interp, eps_t), 1.0 / steps
    x, traj = x0, [x0]
    for k in range(steps):
        t = batch_time(k * h, x)
        noise = torch.sqrt(2 * eps_t(expand_t(t, x)) * h)
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        x = x + h * drift(x, t) + noise * z
        if return_trajectory:
            traj.append(x)
    times = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    return SampleResult(x, steps, torch.stack(traj) if return_trajectory else None, times)


# ---------------------------------------------------------------- closed forms

@dataclass
class GaussianMixture:
    """sum_k w_k N(mu_k, S_k): weights (K,), means (K, d), covs (K, d, d), float64."""

    weights: Tensor
    means: Tensor
    covs: Tensor

    def __post_init__(self):
        self.weights, self.means, self.covs = (torch.as_tensor(v, dtype=torch.float64)
                                               for v in (self.weights, self.means, self.covs))
        k, d = self.means.shape
        if self.weights.shape != (k,) or self.covs.shape != (k, d, d):
            raise ValueError(f"need weights (K,), means (K, d), covs (K, d, d); got "
                             f"{tuple(self.weights.shape)}, {(k, d)}, {tuple(self.covs.shape)}")
        if (self.weights < 0).any() or abs(float(self.weights.sum()) - 1) > 1e-9:
            raise ValueError("mixture weights must be >= 0 and sum to 1")

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        return self.means[k] + (torch.linalg.cholesky(self.covs)[k] @ z[..., None])[..., 0]

    def mean_cov(self) -> tuple[Tensor, Tensor]:
        m = self.weights @ self.means
        dev = self.means - m
        cov = torch.einsum("k,kij->ij", self.weights, self.covs + dev[:, :, None] * dev[:, None, :])
        return m, cov


def exact_fields(interp: Interpolant, src: GaussianMixture, dst: GaussianMixture):
    """Closed-form b(x, t) and eta(x, t) for x0 ~ src, x1 ~ dst (independent), z ~ N(0, I).

    Given components (i, j), x_t is Gaussian with mean m = alpha mu1_j + sigma mu0_i and
    covariance C = alpha² S1_j + sigma² S0_i + gamma² I, and (Gaussian conditioning)
        E[xdot | x_t, ij] = alpha' mu1_j + sigma' mu0_i + K C^-1 (x - m),
        K = alpha alpha' S1_j + sigma sigma' S0_i + gamma gamma' I,
        E[z | x_t, ij]    = gamma C^-1 (x - m);
    b and eta average these with the posterior weights of (i, j) given x_t.
    Shapes: x (B, d), t (B,) -> (B, d) each, float64.
    """
    w = (src.weights[:, None] * dst.weights[None, :]).reshape(-1)  # (P,) pairs i, j
    mu0 = src.means[:, None].expand(-1, len(dst.weights), -1).reshape(len(w), -1)
    mu1 = dst.means[None].expand(len(src.weights), -1, -1).reshape(len(w), -1)
    s0 = src.covs[:, None].expand(-1, len(dst.weights), -1, -1).reshape(len(w), *src.covs.shape[1:])
    s1 = dst.covs[None].expand(len(src.weights), -1, -1, -1).reshape(len(w), *dst.covs.shape[1:])
    eye = torch.eye(mu0.shape[1], dtype=torch.float64)

    def parts(x: Tensor, t: Tensor):
        x = x.double()
        tt = expand_t(t, x).double()[:, :, None, None]  # (B, 1, 1, 1)
        a, s, g = interp.alpha(tt), interp.sigma(tt), interp.gamma(tt)
        da, ds, dg = interp.d_alpha(tt), interp.d_sigma(tt), interp.d_gamma(tt)
        m = a[..., 0] * mu1 + s[..., 0] * mu0  # (B, P, d)
        c = a**2 * s1 + s**2 * s0 + g**2 * eye  # (B, P, d, d)
        k = a * da * s1 + s * ds * s0 + g * dg * eye
        r = torch.linalg.solve(c, (x[:, None] - m)[..., None])  # C^-1 (x - m): (B, P, d, 1)
        logp = (torch.log(w) - 0.5 * (x[:, None] - m)[..., None, :].matmul(r)[..., 0, 0]
                - 0.5 * torch.logdet(c))
        post = torch.softmax(logp, dim=1)[..., None]  # (B, P, 1)
        vel = da[..., 0] * mu1 + ds[..., 0] * mu0 + (k @ r)[..., 0]
        return (post * vel).sum(1), (post * g[..., 0] * r[..., 0]).sum(1)

    last = {}

    def cached(x: Tensor, t: Tensor):  # the SDE drift asks for b and eta at the same (x, t)
        if last.get("x") is not x or last.get("t") is not t:  # holds x, t: no id reuse
            last.update(x=x, t=t, val=parts(x, t))
        return last["val"]

    return (lambda x, t: cached(x, t)[0]), (lambda x, t: cached(x, t)[1])
