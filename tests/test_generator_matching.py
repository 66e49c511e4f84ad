"""Generator matching in 1D: the CondOT jump rate in closed form, the forward equations
of the flow and of both jump constructions on a grid, and simulated marginals."""

from __future__ import annotations

import math

import pytest
import torch

from minigen.transport import generator_matching as gm

torch.set_num_threads(1)
F64 = torch.float64
MIX = gm.MixturePath1D([0.3, 0.7], [-2.0, 1.5], [0.09, 0.25])
GRID = torch.linspace(-12, 12, 24001, dtype=F64)
DX = float(GRID[1] - GRID[0])


def test_condot_jump_rate_closed_form():
    """p_t(x|z) = N(t z, (1-t)²): lambda = [u² - u z - 1]_+ / (1 - t), u = (x - t z) / (1 - t)."""
    z = 1.7
    path = gm.MixturePath1D([1.0], [z], [0.0])
    for t in (0.1, 0.5, 0.9):
        u = (GRID - t * z) / (1 - t)
        want = (u**2 - u * z - 1).clamp_min(0) / (1 - t)
        for jump in gm.JUMPS:
            assert torch.allclose(gm.jump_rate(path, GRID, t, jump), want, atol=1e-9)


@pytest.mark.parametrize("t", [0.2, 0.6, 0.95])
def test_density_time_derivative(t):
    h = 1e-6
    fd = (MIX.density(GRID, t + h)[0] - MIX.density(GRID, t - h)[0]) / (2 * h)
    assert torch.allclose(MIX.density(GRID, t)[1], fd, atol=1e-7)


@pytest.mark.parametrize("t", [0.2, 0.6, 0.95])
def test_flow_solves_the_continuity_equation(t):
    """d_t p + d_x (p u) = 0 on a grid."""
    p, dp = MIX.density(GRID, t)
    flux = p * gm.flow_velocity(MIX, GRID, t)
    div = torch.gradient(flux, spacing=DX)[0]
    assert (dp + div).abs().max() < 1e-5 * dp.abs().max() + 1e-6


@pytest.mark.parametrize("t", [0.2, 0.6, 0.95])
def test_marginal_jump_solves_the_forward_equation(t):
    """inflow(x) - lambda(x) p(x) = d_t p(x): inflow = J(x) int lambda p."""
    p, dp = MIX.density(GRID, t)
    lam = gm.jump_rate(MIX, GRID, t, "marginal")
    rise = dp.clamp_min(0)
    inflow = rise / (rise.sum() * DX) * (lam * p).sum() * DX
    assert (inflow - lam * p - dp).abs().max() < 1e-6 * dp.abs().max()


@pytest.mark.parametrize("t", [0.2, 0.6, 0.95])
def test_posterior_averaged_jump_solves_the_forward_equation(t):
    """sum_k J_k(x) int p(y) p(k|y) lambda_k(y) dy - lambda(x) p(x) = d_t p(x)."""
    logp, dlog = MIX.component_terms(GRID, t)
    pk = logp.exp()  # w_k p_k, (G, K)
    p = pk.sum(1)
    rise = (pk * dlog).clamp_min(0)
    out_k = (pk * (-dlog).clamp_min(0)).sum(0) * DX  # int p(y) p(k|y) lambda_k(y) dy
    inflow = (rise / (rise.sum(0) * DX) * out_k).sum(1)
    lam = gm.jump_rate(MIX, GRID, t, "posterior")
    dp = MIX.density(GRID, t)[1]
    assert (inflow - lam * p - dp).abs().max() < 1e-6 * dp.abs().max()


def test_the_two_jump_constructions_differ():
    """Averaging [.]_- over components is not [.]_- of the average: two generators, one path
    (they differ where components overlap; measured max gap 1.58 at t = 0.2)."""
    gap = gm.jump_rate(MIX, GRID, 0.2, "posterior") - gm.jump_rate(MIX, GRID, 0.2, "marginal")
    assert gap.min() > -1e-9 and gap.max() > 1.0


def test_posterior_jump_destinations_follow_the_rate_weighted_mixture():
    """From x, the posterior jump picks k with prob ∝ p(k|x) lambda_k(x), then y ~ J_k:
    the mean destination is sum_k pi_k E_{J_k}[y] (grid quadrature)."""
    t, x = 0.3, torch.full((20000,), -2.4, dtype=F64)  # pi = (0.27, 0.73), p(k|x) = (0.98, 0.02)
    logp, dlog = MIX.component_terms(x[:1], t)
    pi = torch.softmax(logp, 1)[0] * (-dlog[0]).clamp_min(0)
    pi = pi / pi.sum()
    assert pi.min() > 0.05  # both components can be chosen here
    lg, dg = MIX.component_terms(GRID, t)
    rise = (lg.exp() * dg).clamp_min(0)
    want = float(pi @ ((rise * GRID[:, None]).sum(0) / rise.sum(0)))
    y = gm.jump_destinations(MIX, x, t, torch.Generator().manual_seed(0), "posterior")
    assert abs(float(y.mean()) - want) < 5 * float(y.std()) / math.sqrt(len(y))


def _check_moments(x, path, t, n):
    """Mean and variance within 5 standard errors (+ a small Euler-step allowance)."""
    mu, s, _, _ = path.components(t)
    mean = float(path.weights @ mu)
    var = float(path.weights @ (s**2 + mu**2)) - mean**2
    assert abs(float(x.mean()) - mean) < 5 * math.sqrt(var / n) + 0.01
    assert abs(float(x.var()) - var) < 5 * var * math.sqrt(2 / n) + 0.02 * var


@pytest.mark.parametrize("w", [0.0, 0.5, 1.0])
def test_conditional_condot_processes_share_the_closed_form_marginal(w):
    n, t_end = 8000, 0.8
    path = gm.MixturePath1D([1.0], [1.7], [0.0])
    g = torch.Generator().manual_seed(0)
    x = gm.simulate(path, torch.randn(n, generator=g, dtype=F64), 100, g, w_flow=w, t_end=t_end)
    _check_moments(x, path, t_end, n)


@pytest.mark.parametrize("jump,w", [("marginal", 0.0), ("posterior", 0.0), ("marginal", 0.5)])
def test_mixture_jump_and_superposition_reach_the_target(jump, w):
    n = 8000
    g = torch.Generator().manual_seed(0)
    x = gm.simulate(MIX, torch.randn(n, generator=g, dtype=F64), 100, g, w_flow=w, jump=jump)
    _check_moments(x, MIX, 1.0, n)
    assert gm.wasserstein1_1d(x, MIX.sample(n, 1.0, g)) < 0.06  # MC floor ~0.02 at n = 8000


def test_no_jumps_leaves_the_source():
    """w = 1 with the flow switched off would keep N(0,1): the checks above can fail."""
    n = 8000
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(n, generator=g, dtype=F64)
    with pytest.raises(AssertionError):
        _check_moments(x0, MIX, 1.0, n)


def test_bad_inputs_are_rejected():
    g = torch.Generator()
    x0 = torch.zeros(10, dtype=F64)
    with pytest.raises(ValueError, match="w_flow"):
        gm.simulate(MIX, x0, 10, g, w_flow=1.5)
    with pytest.raises(ValueError, match="steps"):
        gm.simulate(MIX, x0, 0, g)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        MIX.components(1.2)
    with pytest.raises(ValueError, match="zero width"):
        gm.MixturePath1D([1.0], [0.0], [0.0]).components(1.0)
    with pytest.raises(ValueError, match="unknown jump"):
        gm.jump_rate(MIX, x0, 0.5, "teleport")
    with pytest.raises(ValueError, match="sum to 1"):
        gm.MixturePath1D([0.5, 0.6], [0.0, 1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="same length"):
        gm.MixturePath1D([0.5, 0.5], [0.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="equal size"):
        gm.wasserstein1_1d(x0, x0[:5])
    with pytest.raises(ValueError, match=">= 0"):
        gm.sample_from_grid(-torch.ones(5), torch.arange(5.0), 3, g)
