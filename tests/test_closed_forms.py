"""Closed-form checks of the core (issue: "Tests that can fail").

Gaussian source N(0, I) and Gaussian target N(mu, Sigma): the marginal velocity of
every path is known (minigen.gaussian), so the CFM target, the ODE push-forward and
the CNF likelihood all have exact answers to compare with.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from minigen import couplings, data, objectives, paths, solvers
from minigen.gaussian import GaussianTarget
from minigen.likelihood import log_likelihood, standard_normal_log_prob

torch.set_num_threads(1)
MU = torch.tensor([1.5, -0.5], dtype=torch.float64)
SIGMA = torch.tensor([[0.8, 0.3], [0.3, 0.4]], dtype=torch.float64)
TARGET = GaussianTarget(MU, SIGMA)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_cfm_target_averages_to_marginal_velocity():
    """(a) E[x1 - x0 | x_t = x] equals the analytic marginal velocity.

    For the linear path, x1 | x_t is Gaussian: with C = t² Sigma + (1-t)² I,
    mean mu + t Sigma C^-1 (x - t mu), covariance Sigma - t² Sigma C^-1 Sigma.
    Sampling x1 from it and setting x0 = (x - t x1)/(1-t) draws exact pairs
    conditioned on x_t = x; their mean conditional velocity must match.
    """
    path = paths.LinearPath()
    g = gen(1)
    n = 200_000
    for t, x in [(0.3, torch.tensor([0.2, 0.4])), (0.7, torch.tensor([1.0, -1.0]))]:
        x = x.double()
        c = t**2 * SIGMA + (1 - t) ** 2 * torch.eye(2, dtype=torch.float64)
        k = SIGMA @ torch.linalg.inv(c)
        mean = MU + t * k @ (x - t * MU)
        cov = SIGMA - t**2 * k @ SIGMA
        x1 = mean + torch.randn(n, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
        x0 = (x - t * x1) / (1 - t)
        mc = (x1 - x0).mean(0)
        se = (x1 - x0).std(0) / math.sqrt(n)
        exact = TARGET.velocity(path, x[None], torch.tensor([t], dtype=torch.float64))[0]
        assert ((mc - exact).abs() < 5 * se).all(), (t, mc, exact, se)


@pytest.mark.parametrize("name", ["linear", "vp_cosine", "vp_linear"])
def test_marginal_velocity_pushes_normal_to_target(name):
    """(b) integrating u_t maps N(0, I) to N(mu, Sigma): 20000 samples, RK4.

    The sample mean's standard error is sqrt(diag Sigma / n) <= 0.0063, the
    covariance entries' about 0.008: tolerances are ~5 standard errors."""
    path = paths.make_path(name)
    x0 = torch.randn(20_000, 2, generator=gen(2), dtype=torch.float64)
    t1 = min(path.t_max, 1 - 1e-4)
    x1 = solvers.integrate(lambda x, t: TARGET.velocity(path, x, t), x0, "rk4", 100, 0.0, t1).x
    assert (x1.mean(0) - MU).abs().max() < 0.03
    assert (torch.cov(x1.T) - SIGMA).abs().max() < 0.04


def test_linear_path_flow_is_the_exact_affine_map():
    """For the linear path the flow of u_t is affine; at t = 1 the map is
    x -> mu + Sigma^{1/2} x when Sigma is diagonal (per coordinate)."""
    diag = GaussianTarget(MU, torch.diag(torch.tensor([0.25, 2.0], dtype=torch.float64)))
    path = paths.LinearPath()
    x0 = torch.randn(10, 2, generator=gen(3), dtype=torch.float64)
    x1 = solvers.integrate(lambda x, t: diag.velocity(path, x, t), x0, "rk4", 200).x
    expected = MU + x0 * torch.tensor([0.5, 2.0 ** 0.5], dtype=torch.float64)
    assert torch.allclose(x1, expected, atol=1e-6)


def test_cnf_log_likelihood_equals_gaussian_log_density():
    """(c) the instantaneous change of variables reproduces log N(x; mu, Sigma):
    exact divergence to solver accuracy; Hutchinson unbiased (mean over probes)."""
    path = paths.LinearPath()
    v = lambda x, t: TARGET.velocity(path, x, t)
    x = TARGET.sample(8, gen(4))
    exact = TARGET.log_prob(x)
    ll = log_likelihood(v, x, standard_normal_log_prob, steps=100, method="rk4")
    assert torch.allclose(ll, exact, atol=1e-5)
    # Hutchinson: 400 independent probe draws per point; Sigma is not diagonal, so a
    # single probe is noisy (checked below) but the average converges.
    reps = torch.stack([log_likelihood(v, x, standard_normal_log_prob, steps=20,
                                       estimator="hutchinson", generator=gen(100 + i))
                        for i in range(400)])
    assert reps.std(0).max() > 1e-3  # the estimator really is stochastic here
    se = reps.std(0) / math.sqrt(len(reps))
    assert ((reps.mean(0) - exact).abs() < 5 * se + 1e-3).all()


@pytest.mark.parametrize("name", ["linear", "vp_cosine", "vp_linear", "ve"])
def test_conversions_round_trip_and_match_closed_forms(name):
    path = paths.make_path(name)
    g = gen(5)
    t = (0.02 + 0.96 * torch.rand(64, generator=g)).double()
    xt = torch.randn(64, 2, generator=g, dtype=torch.float64) * 2
    truth = {"velocity": TARGET.velocity(path, xt, t), "x1": TARGET.x1_mean(path, xt, t),
             "epsilon": TARGET.epsilon_mean(path, xt, t), "score": TARGET.score(path, xt, t)}
    for src, dst in itertools.product(paths.PREDICTIONS, repeat=2):
        got = path.convert(truth[src], xt, t, src, dst)
        assert torch.allclose(got, truth[dst], rtol=1e-7, atol=1e-8), (src, dst)


@pytest.mark.parametrize("method,order", [("euler", 1), ("midpoint", 2), ("heun", 2), ("rk4", 4)])
def test_fixed_step_solvers_converge_at_their_order(method, order):
    """dx/dt = x cos(2 pi t) + t has no closed form we need: compare with a very fine
    RK4 solution and fit the slope of log error against log step size."""
    v = lambda x, t: x * torch.cos(2 * math.pi * t)[:, None] + t[:, None]
    x0 = torch.tensor([[1.0], [-0.5]], dtype=torch.float64)
    ref = solvers.integrate(v, x0, "rk4", 4096).x
    ns = [16, 32, 64, 128]
    errs = [float((solvers.integrate(v, x0, method, n).x - ref).abs().max()) for n in ns]
    slope = -(math.log(errs[-1]) - math.log(errs[0])) / (math.log(ns[-1]) - math.log(ns[0]))
    assert abs(slope - order) < 0.3, (method, slope, errs)
    sol = solvers.integrate(v, x0, method, 10, return_trajectory=True)
    assert sol.nfe == 10 * solvers.FIXED_STEP[method][1]
    assert sol.trajectory.shape == (11, 2, 1)


def test_dopri5_and_backward_integration():
    v = lambda x, t: -x * (1 + t)[:, None]
    x0 = torch.tensor([[2.0]], dtype=torch.float64)
    sol = solvers.integrate(v, x0, "dopri5")
    assert abs(float(sol.x) - 2 * math.exp(-1.5)) < 1e-4 and sol.nfe > 0
    back = solvers.integrate(v, sol.x, "rk4", 200, t0=1.0, t1=0.0).x
    assert torch.allclose(back, x0, atol=1e-8)


@pytest.mark.parametrize("seed", range(5))
def test_exact_minibatch_ot_equals_brute_force(seed):
    g = gen(seed)
    n = 6
    x0, x1 = torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g)
    perm = couplings.exact_ot_assignment(x0, x1)
    cost = lambda p: float(((x0 - x1[list(p)]) ** 2).sum())
    best = min(itertools.permutations(range(n)), key=cost)
    assert cost(perm.tolist()) == pytest.approx(cost(best), abs=1e-5)
    _, paired = couplings.ExactOT()(x0, x1)
    assert torch.equal(paired, x1[perm])


def test_sinkhorn_plan_marginals_and_small_reg_limit():
    g = gen(7)
    x0, x1 = torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g)
    c = couplings.squared_distances(x0, x1)
    plan = couplings.sinkhorn_plan(c, 0.5, 500)
    assert torch.allclose(plan.sum(1), torch.full((6,), 1 / 6, dtype=plan.dtype), atol=1e-6)
    assert torch.allclose(plan.sum(0), torch.full((6,), 1 / 6, dtype=plan.dtype), atol=1e-6)
    sharp = torch.softmax(couplings.sinkhorn_log_plan(c.double(), 1e-3, 2000), 1)
    assert torch.equal(sharp.argmax(1), couplings.exact_ot_assignment(x0, x1))


def test_wcfm_with_huge_temperature_equals_icfm():
    path = paths.LinearPath(source_is_gaussian=False)
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    model = lambda x, t: net(torch.cat([x, t[:, None]], 1))
    x0, x1 = data.eight_gaussians(64, gen(8)), data.moons(64, gen(9))
    li, ti = objectives.CFM(path).per_sample_loss(model, x0, x1, gen(10))
    lw, tw = objectives.CFM(path, gibbs_eps=1e9).per_sample_loss(model, x0, x1, gen(10))
    assert torch.equal(ti, tw)
    assert torch.allclose(li, lw, rtol=1e-6, atol=0)


def test_wcfm_small_temperature_moves_path_energy_toward_otcfm():
    """Train I-CFM, OT-CFM and W-CFM (eps = 10, about a third of the mean pair cost)
    briefly on 8gaussians -> moons; W-CFM's normalised path energy lies between.
    Measured at 600 steps: I-CFM 0.85, W-CFM 0.24, OT-CFM 0.10."""
    from minigen.metrics import normalized_path_energy, path_energy, wasserstein2_squared
    from minigen.nets import MLP
    from minigen.train import train

    g = gen(11)
    x0, x1 = data.eight_gaussians(500, g), data.moons(500, g)
    w2 = wasserstein2_squared(x0, x1)
    npe = {}
    for name in ("icfm", "wcfm", "otcfm"):
        cfm = objectives.cfm_variant(name, source_is_gaussian=False, gibbs_eps=10.0)
        torch.manual_seed(0)
        net = MLP(2)
        batch = lambda gen_: (data.eight_gaussians(128, gen_), data.moons(128, gen_))
        res = train(net, cfm.loss, batch, steps=600, progress=False, device="cpu",
                    ema_decay=0.99)
        npe[name] = normalized_path_energy(path_energy(res.ema, x0, 50), w2)
    assert npe["otcfm"] < npe["wcfm"] < npe["icfm"], npe
