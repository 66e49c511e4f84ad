"""Jacobi (fixed-point) iteration for inverting a causal map in parallel (Song et al., 2021,
"Accelerating Feedforward Computation via Parallel Nonlinear Equation Solving"; used for
TARFlow by STARFlow-V, Gu et al., 2025).

An affine autoregressive block maps x -> z with z_i = (x_i - μ_i(x_<i)) exp(-α_i(x_<i)), so its
inverse is the fixed point of

    x = g(x),   g(x)_i = z_i exp(α_i(x_<i)) + μ_i(x_<i),

for all positions at once. Each sweep x^{k+1} = g(x^k) costs one parallel pass. Because g_i
reads only x_<i, position 0 is exact after one sweep and, by induction, positions < k after k
sweeps: for a sequence of length L the iteration is **exact after at most L sweeps**, however
badly it starts, and in practice it converges in far fewer. Stopping rule: the relative
change ||x^{k+1} - x^k|| / ||x^{k+1}|| below ``tol`` (per batch).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Tensor = torch.Tensor


def jacobi_fixed_point(g: Callable[[Tensor], Tensor], x0: Tensor, max_sweeps: int,
                       tol: float = 0.0) -> tuple[Tensor, int, list[float]]:
    """Iterate x <- g(x) from ``x0`` until the relative change is below ``tol`` or
    ``max_sweeps`` sweeps: (x, sweeps, relative change after each sweep)."""
    if not isinstance(max_sweeps, int) or max_sweeps <= 0:
        raise ValueError(f"max_sweeps must be a positive integer, got {max_sweeps!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    x, changes = x0, []
    for sweep in range(1, max_sweeps + 1):
        x_new = g(x)
        changes.append(float(((x_new - x).norm() / x_new.norm().clamp_min(1e-30)).detach()))
        x = x_new
        if changes[-1] <= tol:
            return x, sweep, changes
    return x, max_sweeps, changes
