"""Exact log-likelihood of a continuous normalizing flow (book/design.md, part 4 of 5).

Instantaneous change of variables (Chen et al., 2018, Thm. 1): along
dx/dt = v(x, t),  d log p_t(x_t) / dt = -div v(x_t, t). Integrating the data
point x1 backwards to t = 0,

    log p_1(x1) = log p_0(x0) - ∫_0^1 div v(x_t, t) dt.

The divergence is computed exactly (one backward pass per dimension; fine in
low dimension) or estimated without bias by Hutchinson's trace estimator
div v ≈ eps^T (dv/dx) eps with a fixed eps per trajectory (Grathwohl et al.,
2019, FFJORD).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from minigen.recipe.ode_solvers import FIXED_STEP

Tensor = torch.Tensor


def divergence_exact(v: Callable, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """v(x, t) and its exact divergence sum_i dv_i/dx_i: ((B, D), (B,)). x must be (B, D)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = v(x, t)
        div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for i in range(x.shape[1]):
            div = div + torch.autograd.grad(out[:, i].sum(), x, retain_graph=True)[0][:, i]
    return out.detach(), div.detach()


def divergence_hutchinson(v: Callable, x: Tensor, t: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """v(x, t) and the Hutchinson estimate eps^T J eps of its divergence: ((B, D), (B,))."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = v(x, t)
        vjp = torch.autograd.grad(out, x, grad_outputs=eps)[0]
    return out.detach(), (vjp * eps).reshape(len(x), -1).sum(1)


def log_likelihood(v: Callable, x1: Tensor, source_log_prob: Callable[[Tensor], Tensor],
                   steps: int = 100, method: str = "rk4", estimator: str = "exact",
                   generator: torch.Generator | None = None) -> Tensor:
    """log p_1(x1) of the flow dx/dt = v(x, t) with source density p_0: (B,).

    Integrates the augmented state (x, ∫ div v) from t = 1 back to t = 0 with a
    fixed-step method of ``solvers`` (``steps`` steps). ``estimator`` is
    ``"exact"`` or ``"hutchinson"`` (Rademacher eps, fixed along a trajectory).
    """
    if method not in FIXED_STEP:
        raise ValueError(f"log_likelihood uses a fixed-step method {tuple(FIXED_STEP)}, "
                         f"got {method!r}")
    if estimator == "exact":
        div_fn = lambda x, t: divergence_exact(v, x, t)
    elif estimator == "hutchinson":
        if generator is None:
            raise ValueError("the Hutchinson estimator needs a torch.Generator")
        eps = (torch.randint(0, 2, x1.shape, generator=generator) * 2 - 1).to(x1)
        div_fn = lambda x, t: divergence_hutchinson(v, x, t, eps)
    else:
        raise ValueError(f"unknown divergence estimator {estimator!r}; use exact or hutchinson")

    d = x1[0].numel()

    def augmented(state: Tensor, t: Tensor) -> Tensor:
        vx, div = div_fn(state[:, :d].reshape(x1.shape), t)
        return torch.cat([vx.reshape(len(state), -1), div[:, None]], 1)

    step = FIXED_STEP[method][0]
    state = torch.cat([x1.reshape(len(x1), -1), torch.zeros(len(x1), 1, dtype=x1.dtype, device=x1.device)], 1)
    h = -1.0 / steps
    for k in range(steps):
        state = step(augmented, state, 1.0 + k * h, h).detach()
    x0, int_div_1_to_0 = state[:, :d].reshape(x1.shape), state[:, d]
    # int_div_1_to_0 = ∫_1^0 div v dt = -∫_0^1 div v dt
    return source_log_prob(x0) + int_div_1_to_0


def standard_normal_log_prob(x: Tensor) -> Tensor:
    """log N(x; 0, I) summed over all but the batch dimension: (B,)."""
    flat = x.reshape(len(x), -1)
    return -0.5 * (flat.pow(2).sum(1) + flat.shape[1] * math.log(2 * math.pi))
