"""Figures of merit for samples and flows.

* ``wasserstein2_squared`` / ``wasserstein2``: exact optimal transport between
  two empirical measures with squared Euclidean cost (network simplex, POT).
* ``mmd``: unbiased maximum mean discrepancy with a sum of RBF kernels
  (Gretton et al., 2012).
* ``sliced_wasserstein``: mean over random directions of 1D W2² (Rabin et al., 2011).
* ``path_energy`` and ``normalized_path_energy``: E ∫ ||v(x_t, t)||² dt along the
  flow, and |PE - W2²(p0, p1)| / W2²(p0, p1), which is 0 for the OT map
  (Tong et al., 2024, §5.1).
* ``straightness``: S(Z) = ∫ E ||(Z1 - Z0) - v(Z_t, t)||² dt, 0 for straight
  trajectories (Liu et al., 2023, Def. 3.6).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import ot
import torch

from minigen.recipe.ode_solvers import field_at

Tensor = torch.Tensor


def _flat(x: Tensor) -> np.ndarray:
    return x.detach().reshape(len(x), -1).cpu().double().numpy()


def wasserstein2_squared(x: Tensor, y: Tensor) -> float:
    """Exact W2² between the empirical measures of x (n, d) and y (m, d), uniform weights."""
    if x.ndim < 2 or x[0].numel() != y[0].numel():
        raise ValueError(f"x and y must be (n, d) and (m, d), got {tuple(x.shape)}, {tuple(y.shape)}")
    a, b = _flat(x), _flat(y)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):  # POT would answer 0 ("unbounded")
        raise ValueError("x and y must be finite (a diverged sampler?)")
    cost = ot.dist(a, b, metric="sqeuclidean")
    return float(ot.emd2(ot.unif(len(a)), ot.unif(len(b)), cost, numItermax=10_000_000))


def wasserstein2(x: Tensor, y: Tensor) -> float:
    """Exact W2 = sqrt(W2²)."""
    return wasserstein2_squared(x, y) ** 0.5


def mmd(x: Tensor, y: Tensor, bandwidths=(0.1, 0.5, 1.0, 2.0, 5.0)) -> float:
    """Unbiased MMD² with k(a, b) = sum_h exp(-||a - b||² / (2 h²))."""
    x, y = x.reshape(len(x), -1).double(), y.reshape(len(y), -1).double()

    def k(a, b):
        d = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-d / (2 * h * h)) for h in bandwidths)

    n, m = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return float((kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
                 + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1)) - 2 * kxy.mean())


def sliced_wasserstein(x: Tensor, y: Tensor, generator: torch.Generator,
                       n_projections: int = 256) -> float:
    """Sliced W2²: mean over random unit directions of the 1D W2² (equal sample counts)."""
    if len(x) != len(y):
        raise ValueError("sliced_wasserstein needs equal sample counts")
    x, y = x.reshape(len(x), -1).double(), y.reshape(len(y), -1).double()
    dirs = torch.randn(x.shape[1], n_projections, generator=generator, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    px, _ = torch.sort(x @ dirs, 0)
    py, _ = torch.sort(y @ dirs, 0)
    return float((px - py).pow(2).mean())


@torch.no_grad()
def path_energy(v: Callable, x0: Tensor, steps: int = 100) -> float:
    """E ∫_0^1 ||v(x_t, t)||² dt along Euler trajectories from x0 (left-point rule in t): the mean
    of ``flow_terms``' kinetic_z."""
    return float(flow_terms(v, x0, steps)["kinetic_z"].mean())


def normalized_path_energy(pe: float, w2sq: float) -> float:
    """|PE - W2²| / W2²; W2² between source and target is the least possible energy."""
    if w2sq <= 0:
        raise ValueError(f"W2² must be > 0, got {w2sq}")
    return abs(pe - w2sq) / w2sq


def squared_norm(x: Tensor) -> Tensor:
    """||x_i||² over all but the batch dimension: (B, ...) -> (B,)."""
    return x.reshape(len(x), -1).pow(2).sum(1)


@torch.no_grad()
def flow_terms(v: Callable, z0: Tensor, steps: int = 200) -> dict:
    """Per-sample terms of the flow Z on an Euler grid (left-point rule in t):

        cost_z = ||Z1 - Z0||²,  kinetic_z = ∫ ||v(Z_t, t)||² dt,
        straightness = ∫ ||(Z1 - Z0) - v(Z_t, t)||² dt       (Liu et al., 2023, Def. 3.6).

    On the Euler grid Z1 - Z0 = h sum_k v_k exactly, so kinetic_z - straightness = cost_z
    holds per sample. Returns a dict of (N,) tensors and ``z1`` (N, ...).
    """
    x, h, vels = z0, 1.0 / steps, []
    for k in range(steps):
        vel = field_at(v, x, k * h)
        vels.append(vel)
        x = x + h * vel
    disp = x - z0
    kinetic = sum(squared_norm(u) for u in vels) * h
    straight = sum(squared_norm(disp - u) for u in vels) * h
    return {"cost_z": squared_norm(disp), "kinetic_z": kinetic, "straightness": straight, "z1": x}


@torch.no_grad()
def straightness(v: Callable, x0: Tensor, steps: int = 100) -> float:
    """S(Z) = ∫ E ||(Z1 - Z0) - v(Z_t, t)||² dt along Euler trajectories (``flow_terms``)."""
    return float(flow_terms(v, x0, steps)["straightness"].mean())


def w2sq_at_steps(v: Callable, x0: Tensor, target: Tensor, steps=(1, 2, 4, 8, 100),
                  method: str = "euler") -> dict:
    """W2² between the flow's samples and ``target`` for each step count, plus the
    adaptive solver: {"euler1": ..., ..., "adaptive": ..., "nfe_adaptive": ...}."""
    from minigen.recipe.ode_solvers import sample

    out = {f"{method}{k}": wasserstein2_squared(sample(v, x0, method, k).x, target) for k in steps}
    sol = sample(v, x0, "dopri5")
    out["adaptive"] = wasserstein2_squared(sol.x, target)
    out["nfe_adaptive"] = sol.nfe
    return out


def mean_and_se(values: Tensor) -> tuple[float, float]:
    """Sample mean and its standard error std / sqrt(n) of per-sample values (n,), in float64."""
    values = values.double().flatten()
    if len(values) < 2:
        raise ValueError("need at least two values for a standard error")
    return float(values.mean()), float(values.std() / math.sqrt(len(values)))


def mean_and_std(values: Tensor) -> tuple[float, float]:
    """Mean and (n - 1) standard deviation of a figure over seeds (n,); std 0 for one seed."""
    values = torch.as_tensor(values).flatten()
    return float(values.mean()), float(values.std()) if len(values) > 1 else 0.0
