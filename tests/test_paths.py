"""Paths: schedules, boundaries, derivatives, sampling and the exact conversions.

All checks run in float64. Conversions are closed-form 2x2 solves whose condition is
modest for t in (0.02, 0.98), so round trips are exact to rounding (measured worst case
9e-13 relative, score -> x1 -> score); tolerances of 1e-9 leave room for rounding only.
"""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch

from minigen.eval.gaussian import GaussianTarget
from minigen.recipe import paths
from minigen.recipe.gamma import BrownianGamma, SineSquaredGamma

torch.set_num_threads(1)
F64 = torch.float64
# gamma paths beyond the registry's defaults: the schedule, boundary and sampling tests run
# over them too (the registry's "interpolant" default has gamma = 0, "bridge" the Brownian one)
WITH_GAMMA = {
    "interpolant_trig_sin2": lambda: paths.Interpolant(paths.VPCosinePath(), SineSquaredGamma(0.7)),
    "interpolant_linear_brownian": lambda: paths.Interpolant(paths.LinearPath(), BrownianGamma(0.5)),
    "interpolant_trig_brownian": lambda: paths.Interpolant(paths.VPCosinePath(), BrownianGamma(1.0)),
}
ALL = sorted(paths.PATHS)
SCHEDULES = ALL + sorted(WITH_GAMMA)
NO_BRIDGE = [n for n in ALL if not paths.PATHS[n].has_bridge_noise]


def build(name: str) -> paths.GaussianPath:
    return WITH_GAMMA[name]() if name in WITH_GAMMA else paths.make_path(name)
CONVERSIONS = ("velocity_from_x1", "x1_from_velocity", "x0_from_velocity",
               "velocity_from_epsilon", "epsilon_from_velocity", "x1_from_epsilon",
               "epsilon_from_x1", "score_from_epsilon", "epsilon_from_score",
               "velocity_from_score", "score_from_velocity")
GAUSSIAN_ONLY = [c for c in CONVERSIONS if "epsilon" in c or "score" in c]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_t(n: int, g: torch.Generator) -> torch.Tensor:
    return 0.02 + 0.96 * torch.rand(n, generator=g, dtype=F64)


def test_registry_and_make_path():
    assert set(paths.PATHS) == {"linear", "bridge", "vp_cosine", "vp_linear", "ve", "sub_vp",
                                "interpolant"}
    for name, cls in paths.PATHS.items():
        p = paths.make_path(name)
        assert isinstance(p, cls) and p.name == name and p.source_is_gaussian
    assert paths.make_path("ve", sigma_max=10.0).smax == 10.0


@pytest.mark.parametrize("name", NO_BRIDGE)
def test_every_conversion_pair_round_trips(name):
    path = paths.make_path(name)
    g = gen(0)
    t = random_t(64, g)
    xt = 2 * torch.randn(64, 2, generator=g, dtype=F64)
    for src, dst in itertools.product(paths.PREDICTIONS, repeat=2):
        pred = torch.randn(64, 2, generator=g, dtype=F64)
        there = path.convert(pred, xt, t, src, dst)
        back = path.convert(there, xt, t, dst, src)
        assert torch.allclose(back, pred, rtol=1e-9, atol=1e-9), (name, src, dst)
        if src == dst:
            assert there is pred


@pytest.mark.parametrize("name", NO_BRIDGE)
def test_conversions_recover_the_pair_behind_a_conditional_sample(name):
    """Known answer without any model: for x_t = alpha x1 + sigma x0 and
    v = alpha' x1 + sigma' x0, the conversions must return exactly x1, x0 (= epsilon),
    v and the conditional score -x0 / sigma."""
    path = paths.make_path(name)
    g = gen(1)
    t = random_t(32, g)
    x0, x1 = torch.randn(32, 3, generator=g, dtype=F64), torch.randn(32, 3, generator=g, dtype=F64)
    ps = path.sample(x0, x1, t)
    s = path.sigma(t)[:, None]
    truth = {"velocity": ps.dxt, "x1": x1, "epsilon": x0, "score": -x0 / s}
    for src, dst in itertools.product(paths.PREDICTIONS, repeat=2):
        got = path.convert(truth[src], ps.xt, t, src, dst)
        assert torch.allclose(got, truth[dst], rtol=1e-9, atol=1e-9), (name, src, dst)
    assert torch.allclose(path.x0_from_velocity(ps.dxt, ps.xt, t), x0, atol=1e-9)


@pytest.mark.parametrize("name", NO_BRIDGE)
def test_conversions_match_the_gaussian_closed_forms(name):
    """The marginal (not conditional) predictions of a Gaussian target convert into one
    another too: every prediction is the same linear function of E[x1|x_t], E[x0|x_t]."""
    path = paths.make_path(name)
    target = GaussianTarget(torch.tensor([1.0, -2.0], dtype=F64),
                            torch.tensor([[0.6, 0.25], [0.25, 0.3]], dtype=F64))
    g = gen(2)
    t = random_t(32, g)
    xt = 2 * torch.randn(32, 2, generator=g, dtype=F64)
    truth = {"velocity": target.velocity(path, xt, t), "x1": target.x1_mean(path, xt, t),
             "epsilon": target.epsilon_mean(path, xt, t), "score": target.score(path, xt, t)}
    for src, dst in itertools.product(paths.PREDICTIONS, repeat=2):
        got = path.convert(truth[src], xt, t, src, dst)
        assert torch.allclose(got, truth[dst], rtol=1e-9, atol=1e-9), (name, src, dst)


def test_bridge_conversions_raise():
    p = paths.BridgePath()
    x, t = torch.randn(4, 2, dtype=F64), torch.full((4,), 0.5, dtype=F64)
    with pytest.raises(ValueError, match="bridge noise"):
        p.convert(x, x, t, "velocity", "x1")
    with pytest.raises(ValueError, match="bridge noise"):
        p.x1_from_velocity(x, x, t)


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_derivatives_match_finite_differences(name):
    """Central differences with h = 1e-6 in float64: error <= h²/6 max|f'''| + 1e-16 max|f| / h.
    The worst case is VP linear-beta's sigma near t = 0.98 (|f'''| ~ 2e3, |f'| ~ 1) and VE's
    sigma (|f'''| ~ 3e4, |f'| ~ 4e2): relative error < 1e-8, so rtol = 1e-6 is rounding slack."""
    path = build(name)  # random_t keeps t in [0.02, 0.98], off the singular ends of gamma'
    t = random_t(200, gen(3))
    h = 1e-6
    pairs = [(path.alpha, path.d_alpha), (path.sigma, path.d_sigma), (path.gamma, path.d_gamma)]
    for f, df in pairs:
        fd = (f(t + h) - f(t - h)) / (2 * h)
        assert torch.allclose(df(t), fd, rtol=1e-6, atol=1e-8), (name, f.__name__)


@pytest.mark.parametrize("name", SCHEDULES)
def test_boundaries_hold_within_the_stated_tolerance(name):
    path = build(name)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    got = (path.alpha(t)[0], path.sigma(t)[0], path.alpha(t)[1], path.sigma(t)[1])
    for g, want in zip(got, path.boundary):
        assert abs(float(g) - want) <= path.tol


def test_vp_linear_beta_does_not_reach_zero_alpha():
    """DDPM's schedule in continuous time: alpha(0) = exp(-½ (b0 + ½ (b1 - b0))) = exp(-5.025)."""
    p = paths.VPLinearBetaPath()
    a0 = float(p.alpha(torch.tensor(0.0, dtype=F64)))
    assert a0 == pytest.approx(math.exp(-5.025), rel=1e-12)
    assert round(a0, 4) == 0.0066
    assert p.tol == 0.01 and p.t_max < 1
    t = random_t(100, gen(4))
    assert torch.allclose(p.alpha(t) ** 2 + p.sigma(t) ** 2, torch.ones_like(t), atol=1e-12)
    # the same closed form at other betas, and a schedule that misses the boundary is refused
    q = paths.VPLinearBetaPath(beta_min=0.5, beta_max=25.0)
    assert float(q.alpha(torch.tensor(0.0, dtype=F64))) == pytest.approx(math.exp(-0.5 * (0.5 + 12.25)))
    with pytest.raises(ValueError, match=r"alpha\(0\)"):
        paths.VPLinearBetaPath(beta_min=0.1, beta_max=5.0)  # alpha(0) = exp(-1.275) = 0.28


def test_vp_cosine_is_variance_preserving():
    p = paths.VPCosinePath()
    t = random_t(100, gen(5))
    assert torch.allclose(p.alpha(t) ** 2 + p.sigma(t) ** 2, torch.ones_like(t), atol=1e-14)


@pytest.mark.parametrize("smin,smax", [(0.01, 50.0), (0.1, 10.0)])
def test_ve_boundary_is_one_sigma_max_one_sigma_min(smin, smax):
    p = paths.VEPath(sigma_min=smin, sigma_max=smax)
    assert p.boundary == (1.0, smax, 1.0, smin)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    assert torch.allclose(p.alpha(t), torch.ones(2, dtype=F64))
    assert torch.allclose(p.sigma(t), torch.tensor([smax, smin], dtype=F64), rtol=1e-12)
    # its source is N(0, sigma_max² I)
    x = p.prior_sample((20_000, 2), gen(6))
    # std estimate of 40 000 values: relative SE 1/sqrt(2 * 40000) = 0.35 %; 5 SE = 1.8 %
    assert abs(float(x.std()) / smax - 1) < 0.018


@pytest.mark.parametrize("which", ["alpha(0)", "sigma(0)", "alpha(1)", "sigma(1)"])
def test_a_wrong_boundary_is_refused_at_construction(which):
    bumps = {
        "alpha(0)": ("alpha", lambda t: t + 0.01),
        "sigma(0)": ("sigma", lambda t: 1 - t + 0.01 * (1 - t) ** 2),
        "alpha(1)": ("alpha", lambda t: t + 0.01 * t**2),
        "sigma(1)": ("sigma", lambda t: 1 - 0.99 * t),
    }
    attr, fn = bumps[which]
    broken = type("Broken", (paths.LinearPath,), {attr: lambda self, t: fn(t)})
    with pytest.raises(ValueError, match=re.escape(which)):
        broken()
    # within the stated tolerance (1e-6) a boundary is accepted
    ok = type("Ok", (paths.LinearPath,), {"alpha": lambda self, t: t * (1 + 1e-7)})
    ok()


@pytest.mark.parametrize("name", ALL)
def test_gaussian_only_conversions_refuse_a_non_gaussian_source(name):
    p = paths.make_path(name, source_is_gaussian=False)
    x, t = torch.randn(3, 2, dtype=F64), torch.full((3,), 0.5, dtype=F64)
    for method in GAUSSIAN_ONLY:
        with pytest.raises(ValueError, match=r"N\(0, I\) source"):
            getattr(p, method)(x, x, t)
    # a bridge path may refuse for its noise term first; either way the error names it
    why = r"N\(0, I\) source|bridge noise" if p.has_bridge_noise else r"N\(0, I\) source"
    for src, dst in [("velocity", "epsilon"), ("score", "x1"), ("x1", "score")]:
        with pytest.raises(ValueError, match=why):
            p.convert(x, x, t, src, dst)
    with pytest.raises(ValueError, match="not Gaussian"):
        p.prior_sample((3, 2), gen(0))
    if not p.has_bridge_noise:  # velocity <-> x1 needs no Gaussian source
        back = p.convert(p.convert(x, x, t, "velocity", "x1"), x, t, "x1", "velocity")
        assert torch.allclose(back, x)


@pytest.mark.parametrize("name", NO_BRIDGE)
def test_sample_is_the_interpolant_and_its_time_derivative(name):
    path = paths.make_path(name)
    g = gen(7)
    t = random_t(16, g)
    x0, x1 = torch.randn(16, 2, generator=g, dtype=F64), torch.randn(16, 2, generator=g, dtype=F64)
    ps = path.sample(x0, x1, t)
    a, s = path.alpha(t)[:, None], path.sigma(t)[:, None]
    assert torch.allclose(ps.xt, a * x1 + s * x0)
    h = 1e-6
    fd = (path.sample(x0, x1, t + h).xt - path.sample(x0, x1, t - h).xt) / (2 * h)
    assert torch.allclose(ps.dxt, fd, rtol=1e-6, atol=1e-7)
    assert ps.z is None and ps.t is t


def test_linear_fast_path_equals_the_general_formula():
    g = gen(8)
    t = torch.rand(32, generator=g)
    x0, x1 = torch.randn(32, 1, 4, 4, generator=g), torch.randn(32, 1, 4, 4, generator=g)
    fast = paths.LinearPath().sample(x0, x1, t)
    general = paths.GaussianPath.sample(paths.LinearPath(), x0, x1, t)
    assert torch.allclose(fast.xt, general.xt, atol=1e-6) and torch.equal(fast.dxt, x1 - x0)
    # a scalar t broadcasts like a (B,) t
    s = paths.LinearPath().sample(x0, x1, torch.tensor(0.25))
    assert torch.allclose(s.xt, 0.25 * x1 + 0.75 * x0)


def test_bridge_path_needs_z_and_its_velocity_is_the_time_derivative():
    p = paths.BridgePath(s=0.7)
    g = gen(9)
    t = random_t(32, g)
    x0, x1, z = (torch.randn(32, 2, generator=g, dtype=F64) for _ in range(3))
    with pytest.raises(ValueError, match="pass z"):
        p.sample(x0, x1, t)
    ps = p.sample(x0, x1, t, z)
    gam = 0.7 * torch.sqrt(t * (1 - t))[:, None]
    assert torch.allclose(ps.xt, t[:, None] * x1 + (1 - t[:, None]) * x0 + gam * z)
    h = 1e-6
    fd = (p.sample(x0, x1, t + h, z).xt - p.sample(x0, x1, t - h, z).xt) / (2 * h)
    # |d³x_t/dt³| <= 0.7 * |z| * 3/8 (t(1-t))^-5/2 ~ 3e4 at t = 0.02: error h²/6 * 3e4 = 5e-9
    assert torch.allclose(ps.dxt, fd, rtol=1e-6, atol=1e-7)
    want = x1 - x0 + 0.7 * (1 - 2 * t[:, None]) / (2 * torch.sqrt(t * (1 - t))[:, None]) * z
    assert torch.allclose(ps.dxt, want)
    assert ps.z is z
    with pytest.raises(ValueError, match="s must be > 0"):
        paths.BridgePath(s=0.0)


@pytest.mark.parametrize("name", sorted(WITH_GAMMA) + ["bridge"])
def test_gamma_path_sample_is_the_interpolant_and_its_time_derivative(name):
    """x_t = alpha x1 + sigma x0 + gamma z and dx_t/dt against central differences, for every
    path with independent noise (the one implementation SB-CFM and chapter 05 share)."""
    path = build(name)
    g = gen(8)
    t = random_t(16, g)
    x0, x1, z = (torch.randn(16, 2, generator=g, dtype=F64) for _ in range(3))
    ps = path.sample(x0, x1, t, z)
    a, s, c = (f(t)[:, None] for f in (path.alpha, path.sigma, path.gamma))
    assert torch.allclose(ps.xt, a * x1 + s * x0 + c * z)
    h = 1e-6
    fd = (path.sample(x0, x1, t + h, z).xt - path.sample(x0, x1, t - h, z).xt) / (2 * h)
    assert torch.allclose(ps.dxt, fd, rtol=1e-6, atol=1e-6)
    # training times stay off the ends where gamma' is singular
    assert (path.t_min, path.t_max) == (path.noise.t_eps, 1 - path.noise.t_eps)
