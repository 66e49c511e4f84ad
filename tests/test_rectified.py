"""Rectified flow, reflow, distillation, DDIM on any path and the transport-cost identity
(src/minigen/rectified.py), checked on Gaussian -> Gaussian where everything has a closed form.
The time samplers (mode, constant) are tested in test_objectives.py."""

import functools
import math

import pytest
import torch

from minigen.eval.metrics import flow_terms
from minigen.nets.mlp import MLP
from minigen.recipe.objectives import CFM
from minigen.recipe.ode_solvers import sample
from minigen.recipe.paths import LinearPath, VPCosinePath
from minigen.train import train
from minigen.transport.rectified import (
    ReflowCoupling,
    ddim_sample,
    gaussian_rectified_velocity,
    identity_terms,
    model_pairs,
)

torch.set_num_threads(1)
M, S, D = torch.tensor([3.0, 0.0], dtype=torch.float64), 0.5, 2


def gaussian_pairs(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, D, generator=g, dtype=torch.float64)
    return x0, M + S * torch.randn(n, D, generator=g, dtype=torch.float64)


@functools.cache
def scaled_field_identity(c: float) -> dict:
    """identity_terms of the field c v* on 10 000 independent Gaussian pairs (computed once)."""
    x0, x1 = gaussian_pairs(10000)
    v = gaussian_rectified_velocity(M, S)
    return identity_terms(lambda x, t: c * v(x, t), x0, x1, steps=100)


def test_rectified_flow_of_gaussians_is_the_monotone_map():
    x0, _ = gaussian_pairs(500)
    z0, z1 = model_pairs(gaussian_rectified_velocity(M, S), x0, "rk4", 100)
    assert torch.equal(z0, x0)
    assert torch.allclose(z1, M + S * x0, atol=1e-8)


def test_identity_holds_for_the_exact_field_and_matches_the_closed_form():
    r = scaled_field_identity(1.0)
    # both sides agree within Monte Carlo error
    assert abs(r["gap"]) < 3 * r["gap_se"] + 1e-3
    # closed forms: |m|² + d(1 + s²) = 11.5, |m|² + d(1 - s)² = 9.5, V + S = 2 d s = 2
    assert abs(r["cost_x"] - 11.5) < 4 * r["cost_x_se"]
    assert abs(r["cost_z"] - 9.5) < 4 * r["cost_z_se"]
    assert abs(r["rhs"] - 2 * D * S) < 4 * r["rhs_se"] + 0.01
    assert r["straightness"] > 0.3  # curved in time: s_t is not linear in t


def test_straightness_of_the_gaussian_flow_matches_its_closed_form():
    """Z_t = t m + s_t Z0, so per sample S = ||Z0||² ∫ (s_t' - (s - 1))² dt, s_t' = (t s² - (1 - t)) / s_t."""
    x0, _ = gaussian_pairs(200)
    f = flow_terms(gaussian_rectified_velocity(M, S), x0, steps=400)
    t = (torch.arange(100000, dtype=torch.float64) + 0.5) / 100000
    ds = (t * S**2 - (1 - t)) / torch.sqrt(t**2 * S**2 + (1 - t) ** 2)
    c = float(((ds - (S - 1)) ** 2).mean())
    ratio = f["straightness"] / x0.pow(2).sum(1)
    assert torch.allclose(ratio, torch.full_like(ratio, c), rtol=0.01), (ratio.mean(), c)
    # per sample, cost = kinetic - straightness on the Euler grid
    assert torch.allclose(f["cost_z"], f["kinetic_z"] - f["straightness"], atol=1e-9)


def test_identity_check_detects_a_wrong_field():
    r = scaled_field_identity(1.1)
    assert abs(r["gap"]) > 5 * r["gap_se"]


# V = d ∫ s² / s_t² dt = pi d s / 2 and K* = E∫||v*(X_t)||² = E||X1 - X0||² - V for the Gaussians
V_GAUSS = math.pi * D * S / 2
K_GAUSS = float(M.pow(2).sum()) + D * (1 + S**2) - V_GAUSS


def test_conditional_variance_and_straightness_of_the_gaussian_flow_match_their_closed_forms():
    """V = pi d s / 2 = 1.571 and S = d s (2 - pi / 2) = 0.429 (V + S = 2 d s)."""
    r = scaled_field_identity(1.0)
    assert abs(r["conditional_variance"] - V_GAUSS) < 4 * r["conditional_variance_se"]
    # S has no sampling noise beyond E||Z0||² (SE ~ 0.7%) and the Euler grid's O(1/steps)
    assert abs(r["straightness"] - D * S * (2 - math.pi / 2)) < 0.02


@pytest.mark.parametrize("c", [0.8, 1.0, 1.1])
def test_identity_for_any_field_closes_with_the_measured_extra_terms(c):
    """For v = c v*: the CFM loss is L = V + (1 - c)² K* and the cross term
    C = E∫ v·(D - v) = c (1 - c) K*; lhs = L + S + (K_X - K_Z) + 2 C holds per sample."""
    r = scaled_field_identity(c)
    assert abs(r["closure"]) < 1e-9 and r["closure_se"] < 1e-9
    assert abs(r["gap"] - r["kinetic_mismatch"] - 2 * r["cross"]) < 1e-9
    assert abs(r["cross"] - c * (1 - c) * K_GAUSS) < 4 * r["cross_se"] + 0.01
    assert abs(r["conditional_variance"] - V_GAUSS - (1 - c) ** 2 * K_GAUSS) < (
        4 * r["conditional_variance_se"] + 0.01)
    if c == 1.0:  # the exact field: both extra terms vanish within Monte Carlo error
        assert abs(r["kinetic_mismatch"]) < 3 * r["kinetic_mismatch_se"] + 1e-3
        assert abs(r["cross"]) < 3 * r["cross_se"]
    else:  # a wrong field's flow has other marginals: its kinetic energies differ
        assert abs(r["kinetic_mismatch"]) > 10 * r["kinetic_mismatch_se"]


def test_reflow_straightens_and_never_raises_the_cost():
    """2-rectified flow of the Gaussian: pairs (Z0, m + s Z0) lie on straight lines that never
    cross, so its field is E[Z1 - Z0 | Z_t] = m + (s - 1)(x - t m) / (1 - t + t s): V = S = 0."""
    x0, x1 = gaussian_pairs(4000)
    z0, z1 = model_pairs(gaussian_rectified_velocity(M, S), x0, "rk4", 100)
    v2 = lambda x, t: M + (S - 1) * (x - t[:, None] * M) / (1 - t[:, None] + t[:, None] * S)
    r1 = identity_terms(gaussian_rectified_velocity(M, S), x0, x1, steps=100)
    r2 = identity_terms(v2, z0, z1, steps=100)
    assert r2["cost_x"] < r1["cost_x"] - 1.0  # the model-induced coupling is cheaper
    assert r2["straightness"] < 1e-10 and r2["conditional_variance"] < 1e-10
    assert abs(r2["cost_z"] - r2["cost_x"]) < 1e-8  # a straight flow: fixed point of reflow


def test_reflow_coupling_draws_stored_pairs():
    z0 = torch.arange(20.0).view(10, 2)
    c = ReflowCoupling(z0, 10 * z0)
    x0, x1 = c(torch.zeros(64, 2), torch.zeros(64, 2), torch.Generator().manual_seed(0))
    assert x0.shape == (64, 2) and torch.equal(x1, 10 * x0)
    assert all(any(torch.equal(r, s) for s in z0) for r in x0)
    assert len({tuple(r.tolist()) for r in x0}) > 5  # draws many different pairs
    b = c.batch(8)(None)
    assert b[0].shape == (8, 2)


def test_distillation_loss_is_the_t0_regression():
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(32, 2, generator=g), torch.randn(32, 2, generator=g)
    obj = CFM(LinearPath(), coupling=lambda a, b, gen: (a, b), time_sampler="constant", time_loc=0.0)
    torch.manual_seed(0)
    net = MLP(2, 16, 2)
    loss, _, t = obj.loss(net, z0, z1, g)
    assert torch.all(t == 0)
    want = (net(z0, torch.zeros(32)) - (z1 - z0)).pow(2).mean()
    assert torch.allclose(loss, want)


def test_distilled_one_step_model_matches_its_teacher_pairs():
    x0, _ = gaussian_pairs(2000)
    z0, z1 = model_pairs(gaussian_rectified_velocity(M, S), x0.float(), "rk4", 50)
    pairs = ReflowCoupling(z0, z1)
    obj = CFM(LinearPath(), coupling=pairs, time_sampler="constant", time_loc=0.0)
    torch.manual_seed(0)
    net = MLP(2, 32, 2, "silu")
    res = train(net, obj.loss, pairs.batch(64), steps=250, lr=3e-3, progress=False, device="cpu")
    one_step = sample(res.model, z0[:500], "euler", 1).x
    err = (one_step - z1[:500]).pow(2).sum(1).mean()
    assert err < 0.01, err  # the teacher's cost here is 9.5


def test_ddim_is_exact_for_a_deterministic_coupling_and_euler_on_the_linear_path():
    x0, _ = gaussian_pairs(200)
    x0 = x0.float()
    m = M.float()
    p = VPCosinePath()
    x1_oracle = lambda x, t: ( # x_t = alpha (m + s x0) + sigma x0 -> x1
        m + S * (x - p.alpha(t)[:, None] * m) / (p.alpha(t)[:, None] * S + p.sigma(t)[:, None]))
    for steps in (1, 3):
        out = ddim_sample(x1_oracle, VPCosinePath(), "x1", x0, steps).x
        assert torch.allclose(out, m + S * x0, atol=1e-5)
    # Euler on the same curved path's velocity is not exact in one step
    path = VPCosinePath()
    v = lambda x, t: path.convert(x1_oracle(x, t), x, t, "x1", "velocity")
    assert (sample(v, x0, "euler", 1).x - (m + S * x0)).abs().max() > 0.1
    # on the linear path DDIM is Euler
    vel = gaussian_rectified_velocity(m, S)
    assert torch.allclose(ddim_sample(vel, LinearPath(), "velocity", x0, 4).x,
                          sample(vel, x0, "euler", 4).x, atol=1e-5)


def test_bad_inputs():
    with pytest.raises(ValueError, match="one shape"):
        ReflowCoupling(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="std"):
        gaussian_rectified_velocity(M, 0.0)
    with pytest.raises(ValueError, match="steps"):
        ddim_sample(lambda x, t: x, LinearPath(), "velocity", torch.zeros(2, 2), 0)
    with pytest.raises(ValueError, match="empty"):
        model_pairs(lambda x, t: x, torch.zeros(0, 2))
    with pytest.raises(ValueError, match="one shape"):
        identity_terms(lambda x, t: x, torch.zeros(3, 2), torch.zeros(4, 2))
