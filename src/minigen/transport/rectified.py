"""Straight paths: rectified flow, reflow, one-step distillation, first-order (DDIM) sampling
of any path, and the transport-cost identity, exact for any learned field.

* Liu, Gong & Liu (2023), "Flow Straight and Fast" (ICLR): the k-rectified flow is CFM with the
  linear path trained on the pairs (Z0, Z1) of the (k-1)-rectified flow — a *model-induced
  coupling* (``model_pairs``, ``ReflowCoupling``); training reuses ``objectives.CFM`` and
  ``train.train``. Distillation to one step is the same regression with t fixed at 0
  (``CFM(..., time_sampler="constant", time_loc=0.0)``).
* The transport-cost identity (their Thm. 3.5 and Def. 3.6, stated exactly in
  ``identity_terms``): for the flow Z induced by a coupling (X0, X1),

      E||X1 - X0||² - E||Z1 - Z0||² = V(X) + S(Z),

  V(X) = E ∫ ||X1 - X0 - v(X_t, t)||² dt (the CFM loss at its optimum), S(Z) = straightness.
* Wang et al. (2024), "Rectified Diffusion": what reflow needs is matched (noise, sample) pairs
  and a *first-order* ODE in the path's own coordinates; ``ddim_sample`` is that solver for any
  Gaussian path (DDIM, Song et al., 2021, eq. 12 in our time), and equals Euler on the linear path.
* For a learned field v the identity gains two measured terms and holds for ANY v
  (``identity_terms``): lhs = L(v) + S(Z) + [K_X(v) - K_Z(v)] + 2 C(v), see there.
  (The time samplers of Esser et al., 2024 — logit-normal, mode — are in objectives.py.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from minigen.broadcast import batch_time
from minigen.eval.metrics import flow_terms, mean_and_se, squared_norm
from minigen.recipe.ode_solvers import field_at, integrate
from minigen.recipe.paths import GaussianPath
from minigen.recipe.results import SampleResult

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


# ---------------------------------------------------------------- first-order sampling of a path

@torch.no_grad()
def ddim_sample(model: Callable, path: GaussianPath, prediction: str, x: Tensor, steps: int,
                t0: float = 0.0, t1: float | None = None, **cond) -> SampleResult:
    """First-order solver in the path's own coordinates (DDIM, Song et al., 2021, eq. 12;
    Rectified Diffusion, Wang et al., 2024, §3): at each grid time t

        x1_hat, x0_hat = predictions at (x, t),     x <- alpha(t') x1_hat + sigma(t') x0_hat.

    Exact in one step when the predictions are exact and every x_t lies on one pair's path
    x_t = alpha x1 + sigma x0 (a deterministic coupling). On the linear path it is Euler.
    ``model(x, t)`` returns the ``prediction`` (velocity, x1 or epsilon). t1 defaults to
    ``path.t_max``; ``cond`` goes to the model. NFE = steps. Shapes: x (B, ...) -> (B, ...).
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    t1 = path.t_max if t1 is None else t1
    grid = torch.linspace(t0, t1, steps + 1, dtype=torch.float64)
    for k in range(steps):
        t = batch_time(grid[k], x)
        pred = model(x, t, **cond)
        x1_hat = path.convert(pred, x, t, prediction, "x1")
        v = path.convert(pred, x, t, prediction, "velocity")
        x0_hat = path.x0_from_velocity(v, x, t)
        tn = torch.full((1,), float(grid[k + 1]), dtype=x.dtype, device=x.device)
        x = path.alpha(tn) * x1_hat + path.sigma(tn) * x0_hat
    return SampleResult(x, steps, times=grid)


# ---------------------------------------------------------------- the transport-cost identity

@torch.no_grad()
def coupling_terms(v: Velocity, x0: Tensor, x1: Tensor, n_t: int = 200) -> dict:
    """Per-sample terms of the training coupling (X0, X1) on the linear path, D = X1 - X0,
    midpoint rule in t with ``n_t`` nodes:

        cost_x = ||D||²,  kinetic_x = ∫ ||v(X_t, t)||² dt,
        conditional_variance = ∫ ||D - v(X_t, t)||² dt   (the CFM loss L(v); V(X) at the optimum),
        cross = ∫ v(X_t, t) · (D - v(X_t, t)) dt        (zero in expectation at the optimum).

    At every node ||D||² = ||v||² + ||D - v||² + 2 v·(D - v), so per sample
    cost_x = kinetic_x + conditional_variance + 2 cross exactly. Returns a dict of (N,) tensors.
    """
    if x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must have one shape, got {tuple(x0.shape)}, {tuple(x1.shape)}")
    d = x1 - x0
    kin, var, cross = (torch.zeros(len(x0), dtype=torch.float64, device=x0.device) for _ in range(3))
    for k in range(n_t):
        t = (k + 0.5) / n_t
        u = field_at(v, t * x1 + (1 - t) * x0, t)
        kin += squared_norm(u).double() / n_t
        var += squared_norm(d - u).double() / n_t
        cross += (u * (d - u)).reshape(len(u), -1).sum(1).double() / n_t
    return {"cost_x": squared_norm(d), "kinetic_x": kin, "conditional_variance": var, "cross": cross}


def identity_terms(v: Velocity, x0: Tensor, x1: Tensor, steps: int = 200) -> dict:
    """Both sides of E||X1 - X0||² - E||Z1 - Z0||² = V(X) + S(Z), and the two terms that make
    it hold for ANY field v, with standard errors. Z is v's flow from Z0 = X0 (Euler, ``steps``).

    Exact field (Liu et al., 2023, Thm. 3.5 made exact): v(x, t) = E[X1 - X0 | X_t = x], so
    E||X1 - X0||² = E∫||v(X_t)||² + V (orthogonality of a conditional expectation), and
    ||Z1 - Z0||² = ∫||v(Z_t)||² - ∫||Z1 - Z0 - v(Z_t)||² per trajectory; Z_t and X_t share
    their marginals, so the two kinetic energies are equal and the identity follows.

    Any field: per sample, ||D||² = ∫||v(X_t)||² + ∫||D - v(X_t)||² + 2∫v·(D - v), hence

        lhs = L(v) + S(Z) + [K_X(v) - K_Z(v)] + 2 C(v),

    L(v) the CFM loss (``conditional_variance``; = V at the optimum, V + E∫||v - v*||² else),
    K_X - K_Z = ``kinetic_mismatch`` (v's energy under the interpolant's marginals minus under
    its own flow's: zero when the flow reproduces the marginals) and C(v) = ``cross`` =
    -½ d/dc L(c v) at c = 1 (zero at any stationary point of the loss in v's scale). The
    ``gap`` lhs - rhs = kinetic_mismatch + 2 cross per sample (``closure`` = the rounding
    left over). SEs are those of paired per-sample differences. Returns means and SEs.
    """
    c = coupling_terms(v, x0, x1, steps)
    f = flow_terms(v, x0, steps)
    lhs = c["cost_x"].double() - f["cost_z"].double()
    rhs = c["conditional_variance"] + f["straightness"].double()
    mismatch = c["kinetic_x"] - f["kinetic_z"].double()
    out = {}
    for name, vals in (("cost_x", c["cost_x"]), ("cost_z", f["cost_z"]),
                       ("conditional_variance", c["conditional_variance"]),
                       ("straightness", f["straightness"]), ("lhs", lhs), ("rhs", rhs),
                       ("gap", lhs - rhs), ("kinetic_mismatch", mismatch), ("cross", c["cross"]),
                       ("closure", lhs - rhs - mismatch - 2 * c["cross"])):
        out[name], out[name + "_se"] = mean_and_se(vals)
    return out


# ---------------------------------------------------------------- a closed form

def gaussian_rectified_velocity(mean: Tensor, std: float) -> Velocity:
    """The exact 1-rectified-flow velocity for X0 ~ N(0, I), X1 ~ N(mean, std² I) independent:

        X_t ~ N(t m, s_t² I),  s_t² = t² std² + (1 - t)²,
        v(x, t) = E[X1 - X0 | X_t = x] = m + (s_t' / s_t) (x - t m),  s_t s_t' = t std² - (1 - t).

    Its flow is Z_t = t m + s_t Z0, so Z1 = m + std Z0 — the OT (monotone) map — reached on a
    curved-in-time path unless std = 1. Then E||X1-X0||² = |m|² + d(1 + std²),
    E||Z1-Z0||² = |m|² + d(1 - std)², and V + S = 2 d std, of which
    V = d ∫ std² / s_t² dt = pi d std / 2 (so S = d std (2 - pi/2)). Shapes: x (B, d), t (B,) -> (B, d).
    """
    if std <= 0:
        raise ValueError(f"std must be > 0, got {std}")
    mean = torch.as_tensor(mean)

    def v(x: Tensor, t: Tensor) -> Tensor:
        tt = t.to(x.dtype).view(-1, 1)
        var_t = tt**2 * std**2 + (1 - tt) ** 2
        return mean.to(x) + (tt * std**2 - (1 - tt)) / var_t * (x - tt * mean.to(x))

    return v
