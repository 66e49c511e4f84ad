"""Straight paths: rectified flow, reflow, one-step distillation, first-order (DDIM) sampling
of any path, and the time samplers of Scaling Rectified Flow Transformers.

* Liu, Gong & Liu (2023), "Flow Straight and Fast" (ICLR): the k-rectified flow is CFM with the
  linear path trained on the pairs (Z0, Z1) of the (k-1)-rectified flow — a *model-induced
  coupling* (``model_pairs``, ``ReflowCoupling``); training reuses ``objectives.CFM`` and
  ``train.train``. Distillation to one step is the same regression with t fixed at 0
  (``CustomTimeCFM`` with ``constant_time(0)``).
* The transport-cost identity (their Thm. 3.5 and Def. 3.6, stated exactly in
  ``identity_terms``): for the flow Z induced by a coupling (X0, X1),

      E||X1 - X0||² - E||Z1 - Z0||² = V(X) + S(Z),

  V(X) = E ∫ ||X1 - X0 - v(X_t, t)||² dt (the CFM loss at its optimum), S(Z) = straightness.
* Wang et al. (2024), "Rectified Diffusion": what reflow needs is matched (noise, sample) pairs
  and a *first-order* ODE in the path's own coordinates; ``ddim_sample`` is that solver for any
  Gaussian path (DDIM, Song et al., 2021, eq. 12 in our time), and equals Euler on the linear path.
* Esser et al. (2024), "Scaling Rectified Flow Transformers", §3.1: mode sampling with heavy
  tails, ``mode_time`` and its density ``mode_time_density`` (logit-normal is in objectives.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from .metrics import _sq, flow_terms  # flow_terms: the flow's per-sample terms (re-exported)
from .objectives import CFM
from .paths import GaussianPath, PathSample
from .solvers import _v, integrate

Tensor = torch.Tensor
Velocity = Callable[[Tensor, Tensor], Tensor]


# ---------------------------------------------------------------- the model-induced coupling

@torch.no_grad()
def model_pairs(v: Velocity, z0: Tensor, method: str = "rk4", steps: int = 100,
                t0: float = 0.0, t1: float = 1.0) -> tuple[Tensor, Tensor]:
    """The coupling induced by a flow: (Z0, Z1 = ODE_v(Z0)) (Liu et al., 2023, Alg. 1, "reflow").

    Solve dz/dt = v(z, t) from t0 to t1 with a fine solver. Shapes: z0 (N, ...) -> ((N, ...), (N, ...)).
    """
    if len(z0) == 0:
        raise ValueError("z0 is empty")
    return z0, integrate(v, z0, method, steps, t0, t1).x


class ReflowCoupling:
    """A fixed set of pairs (z0_i, z1_i) as a coupling ``(x0, x1, generator) -> (x0, x1)``.

    Each call draws len(x0) stored pairs uniformly with replacement; the incoming batch only
    sets the size, because the model-induced coupling replaces the independent draw entirely.
    ``batch(batch_size)`` is the matching ``sample_batch`` for ``train`` (placeholders of the
    right shape, so no data is drawn and thrown away).
    Shapes: z0, z1 (N, ...) with the same shape.
    """

    def __init__(self, z0: Tensor, z1: Tensor):
        if z0.shape != z1.shape or len(z0) == 0:
            raise ValueError(f"need non-empty z0 and z1 of one shape, got {tuple(z0.shape)}, "
                             f"{tuple(z1.shape)}")
        self.z0, self.z1 = z0.detach(), z1.detach()

    def __call__(self, x0: Tensor, x1: Tensor, generator: torch.Generator | None = None):
        idx = torch.randint(0, len(self.z0), (len(x0),), generator=generator)
        return self.z0[idx].to(x0), self.z1[idx].to(x0)

    def batch(self, batch_size: int) -> Callable:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        shape = (batch_size, *self.z0.shape[1:])
        return lambda generator: (torch.zeros(shape), torch.zeros(shape))

    def __len__(self) -> int:
        return len(self.z0)

    def __repr__(self) -> str:
        return f"ReflowCoupling({len(self)} pairs)"


# ---------------------------------------------------------------- time samplers

def constant_time(value: float) -> Callable:
    """A degenerate time sampler t ≡ value: with value = 0 the CFM loss on reflow pairs becomes
    the one-step distillation loss E||v(Z0, 0) - (Z1 - Z0)||² (Liu et al., 2023, §2.3)."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"time must be in [0, 1], got {value}")
    return lambda n, generator: torch.full((n,), float(value))


def mode_map(u: Tensor, scale: float) -> Tensor:
    """f_mode(u; s) = 1 - u - s (cos²(pi u / 2) - 1 + u) (Esser et al., 2024, eq. 20).

    Monotone on [0, 1] for -1 <= s <= 2 / (pi - 2); s = 0 is the identity-reversed map 1 - u
    (uniform t). f(1 - u) = 1 - f(u), so the density is symmetric about 1/2 and the same in
    their time (t = 1 noise) and ours (t = 0 noise). Shapes: u (n,) -> (n,).
    """
    if not -1.0 <= scale <= 2.0 / (math.pi - 2.0):
        raise ValueError(f"mode scale must be in [-1, 2/(pi-2) = {2 / (math.pi - 2):.3f}], got {scale}")
    return 1 - u - scale * (torch.cos(0.5 * math.pi * u) ** 2 - 1 + u)


def mode_time(n: int, generator: torch.Generator, scale: float = 1.29) -> Tensor:
    """Mode sampling: t = f_mode(u; s), u ~ U[0, 1] (Esser et al., 2024, §3.1; s = 1.29 is their
    best "mode" setting). s > 0 concentrates t near 1/2, s < 0 near the ends. Shape (n,)."""
    return mode_map(torch.rand(n, generator=generator), scale)


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


def time_sampler(name: str, **kw) -> Callable:
    """A time sampler ``(n, generator) -> t (n,)`` by name: uniform, logit_normal (loc, scale),
    mode (scale), constant (value)."""
    if name == "uniform":
        return lambda n, generator: torch.rand(n, generator=generator)
    if name == "logit_normal":
        loc, scale = kw.get("loc", 0.0), kw.get("scale", 1.0)
        if scale <= 0:
            raise ValueError(f"logit-normal scale must be > 0, got {scale}")
        return lambda n, generator: torch.sigmoid(loc + scale * torch.randn(n, generator=generator))
    if name == "mode":
        scale = kw.get("scale", 1.29)
        mode_map(torch.zeros(1), scale)  # validates the scale now, not at the first step
        return lambda n, generator: mode_time(n, generator, scale)
    if name == "constant":
        return constant_time(kw.get("value", 0.0))
    raise ValueError(f"unknown time sampler {name!r}; choose uniform, logit_normal, mode, constant")


@dataclass
class CustomTimeCFM(CFM):
    """``objectives.CFM`` with any time sampler ``draw_time(n, generator) -> (n,)`` in [0, 1]
    (mode sampling; t ≡ 0 for one-step distillation). Everything else is CFM's."""

    draw_time: Callable = field(default=None)

    def sample_path(self, x0: Tensor, x1: Tensor, generator: torch.Generator) -> PathSample:
        if self.draw_time is None:
            return super().sample_path(x0, x1, generator)
        x0, x1 = self.coupling(x0, x1, generator)
        t = self.draw_time(len(x1), generator).clamp(self.path.t_min, self.path.t_max).to(x1)
        z = torch.randn(x1.shape, generator=generator).to(x1) if self.path.has_bridge_noise else None
        return self.path.sample(x0, x1, t, z)


# ---------------------------------------------------------------- first-order sampling of a path

@torch.no_grad()
def ddim_sample(model: Callable, path: GaussianPath, prediction: str, x: Tensor, steps: int,
                t0: float = 0.0, t1: float | None = None) -> Tensor:
    """First-order solver in the path's own coordinates (DDIM, Song et al., 2021, eq. 12;
    Rectified Diffusion, Wang et al., 2024, §3): at each grid time t

        x1_hat, x0_hat = predictions at (x, t),     x <- alpha(t') x1_hat + sigma(t') x0_hat.

    Exact in one step when the predictions are exact and every x_t lies on one pair's path
    x_t = alpha x1 + sigma x0 (a deterministic coupling). On the linear path it is Euler.
    ``model(x, t)`` returns the ``prediction`` (velocity, x1 or epsilon). t1 defaults to
    ``path.t_max``. Shapes: x (B, ...) -> (B, ...).
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    t1 = path.t_max if t1 is None else t1
    grid = torch.linspace(t0, t1, steps + 1, dtype=torch.float64)
    for k in range(steps):
        t = torch.full((len(x),), float(grid[k]), dtype=x.dtype)
        pred = model(x, t)
        x1_hat = path.convert(pred, x, t, prediction, "x1")
        v = path.convert(pred, x, t, prediction, "velocity")
        x0_hat = path.x0_from_velocity(v, x, t)
        tn = torch.full((1,), float(grid[k + 1]), dtype=x.dtype)
        x = path.alpha(tn) * x1_hat + path.sigma(tn) * x0_hat
    return x


# ---------------------------------------------------------------- the transport-cost identity

def mean_and_se(values: Tensor) -> tuple[float, float]:
    """Sample mean and its standard error std / sqrt(n) of per-sample values (n,)."""
    values = values.double().flatten()
    if len(values) < 2:
        raise ValueError("need at least two values for a standard error")
    return float(values.mean()), float(values.std() / math.sqrt(len(values)))


@torch.no_grad()
def coupling_terms(v: Velocity, x0: Tensor, x1: Tensor, n_t: int = 200) -> dict:
    """Per-sample terms of the training coupling (X0, X1) on the linear path, midpoint rule in t:

        cost_x = ||X1 - X0||²,  kinetic_x = ∫ ||v(X_t, t)||² dt,
        conditional_variance = ∫ ||X1 - X0 - v(X_t, t)||² dt   (the CFM loss; V at the optimum).

    Returns a dict of (N,) tensors.
    """
    if x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must have one shape, got {tuple(x0.shape)}, {tuple(x1.shape)}")
    d = x1 - x0
    kin = torch.zeros(len(x0), dtype=torch.float64)
    var = torch.zeros(len(x0), dtype=torch.float64)
    for k in range(n_t):
        t = (k + 0.5) / n_t
        u = _v(v, t * x1 + (1 - t) * x0, t)
        kin += _sq(u).double() / n_t
        var += _sq(d - u).double() / n_t
    return {"cost_x": _sq(d), "kinetic_x": kin, "conditional_variance": var}


def identity_terms(v: Velocity, x0: Tensor, x1: Tensor, steps: int = 200) -> dict:
    """Both sides of E||X1 - X0||² - E||Z1 - Z0||² = V(X) + S(Z) with standard errors.

    Derivation (Liu et al., 2023, Thm. 3.5 made exact): v(x, t) = E[X1 - X0 | X_t = x], so
    E||X1 - X0||² = E∫||v(X_t)||² + V (orthogonality of a conditional expectation), and
    ||Z1 - Z0||² = ∫||v(Z_t)||² - ∫||Z1 - Z0 - v(Z_t)||² per trajectory; Z_t and X_t share
    their marginals, so the two kinetic energies are equal and the identity follows. The
    difference lhs - rhs is kinetic_x - kinetic_z: with Z0 = X0 sample for sample, its
    standard error is that of the paired differences. Returns means, SEs and the gap.
    """
    c = coupling_terms(v, x0, x1, steps)
    f = flow_terms(v, x0, steps)
    lhs = c["cost_x"].double() - f["cost_z"].double()
    rhs = c["conditional_variance"] + f["straightness"].double()
    out = {}
    for name, vals in (("cost_x", c["cost_x"]), ("cost_z", f["cost_z"]),
                       ("conditional_variance", c["conditional_variance"]),
                       ("straightness", f["straightness"]), ("lhs", lhs), ("rhs", rhs),
                       ("gap", lhs - rhs)):
        out[name], out[name + "_se"] = mean_and_se(vals)
    return out


# ---------------------------------------------------------------- a closed form

def gaussian_rectified_velocity(mean: Tensor, std: float) -> Velocity:
    """The exact 1-rectified-flow velocity for X0 ~ N(0, I), X1 ~ N(mean, std² I) independent:

        X_t ~ N(t m, s_t² I),  s_t² = t² std² + (1 - t)²,
        v(x, t) = E[X1 - X0 | X_t = x] = m + (s_t' / s_t) (x - t m),  s_t s_t' = t std² - (1 - t).

    Its flow is Z_t = t m + s_t Z0, so Z1 = m + std Z0 — the OT (monotone) map — reached on a
    curved-in-time path unless std = 1. Then E||X1-X0||² = |m|² + d(1 + std²),
    E||Z1-Z0||² = |m|² + d(1 - std)², and V + S = 2 d std. Shapes: x (B, d), t (B,) -> (B, d).
    """
    if std <= 0:
        raise ValueError(f"std must be > 0, got {std}")
    mean = torch.as_tensor(mean)

    def v(x: Tensor, t: Tensor) -> Tensor:
        tt = t.to(x.dtype).view(-1, 1)
        var_t = tt**2 * std**2 + (1 - tt) ** 2
        return mean.to(x) + (tt * std**2 - (1 - tt)) / var_t * (x - tt * mean.to(x))

    return v
