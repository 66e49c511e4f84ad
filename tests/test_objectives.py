"""Objectives: CFM regression targets and losses, time samplers, the per-t diagnostic,
the chapter-01 variants, and W-CFM's two limits (I-CFM at eps -> inf; towards OT-CFM
at a small temperature)."""

from __future__ import annotations

import math

import pytest
import torch

from minigen.data import toy2d
from minigen.eval import metrics
from minigen.eval.gaussian import GaussianTarget
from minigen.nets.mlp import MLP
from minigen.recipe import couplings, objectives, paths, time_samplers
from minigen.train import train

torch.set_num_threads(1)
F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_regression_target_per_prediction_type():
    g = gen(0)
    x0, x1 = torch.randn(8, 2, generator=g), torch.randn(8, 2, generator=g)
    ps = paths.VPCosinePath().sample(x0, x1, torch.rand(8, generator=g))
    assert objectives.regression_target(ps, "velocity") is ps.dxt
    assert objectives.regression_target(ps, "x1") is x1
    assert objectives.regression_target(ps, "epsilon") is x0
    with pytest.raises(ValueError, match="unknown prediction type 'score'"):
        objectives.regression_target(ps, "score")


def test_uniform_time_sampler_moments():
    """U[0, 1]: mean 1/2 (SE sqrt(1/12 / n) = 0.0013 at n = 50 000), variance 1/12."""
    t = time_samplers.sample_time(50_000, gen(1))
    assert t.min() >= 0 and t.max() < 1
    assert abs(float(t.mean()) - 0.5) < 5 * math.sqrt(1 / 12 / len(t))
    # SE of the sample variance = sqrt((mu4 - sigma^4) / n) = sqrt((1/80 - 1/144) / n) = 3.4e-4
    assert abs(float(t.var()) - 1 / 12) < 5 * math.sqrt((1 / 80 - 1 / 144) / len(t))


@pytest.mark.parametrize("loc,scale", [(0.0, 1.0), (0.5, 0.7)])
def test_logit_normal_time_sampler(loc, scale):
    """t = sigmoid(u), u ~ N(loc, scale²): logit(t) has mean loc (SE scale / sqrt(n)) and
    standard deviation scale (SE scale / sqrt(2n)) — SD3's sampler (Esser et al., 2024)."""
    n = 50_000
    t = time_samplers.sample_time(n, gen(2), "logit_normal", loc, scale).double()
    assert (t > 0).all() and (t < 1).all()
    u = torch.log(t / (1 - t))
    assert abs(float(u.mean()) - loc) < 5 * scale / math.sqrt(n)
    assert abs(float(u.std()) - scale) < 5 * scale / math.sqrt(2 * n)
    cfm = objectives.CFM(paths.LinearPath(), time_sampler="logit_normal", time_loc=loc, time_scale=scale)
    ps = cfm.sample_path(torch.zeros(n, 1), torch.ones(n, 1), gen(2))
    assert torch.allclose(ps.t.double(), t, atol=1e-6)  # the objective uses exactly this sampler


def test_mode_time_density_closed_forms():
    """pi_mode(t; s) integrates to 1, is symmetric about 1/2, is uniform at s = 0 and equals
    1 / (1 - s (pi/2 - 1)) at t = 1/2 (Esser et al., 2024, eq. 20)."""
    t = torch.linspace(0.0005, 0.9995, 1000)
    for s in (-0.5, 0.0, 1.29):
        dens = time_samplers.mode_time_density(t, s)
        assert abs(float(dens.mean()) - 1) < 2e-3
        assert torch.allclose(dens, dens.flip(0), atol=1e-6)
    assert torch.allclose(time_samplers.mode_time_density(t, 0.0), torch.ones(1000, dtype=F64))
    centre = float(time_samplers.mode_time_density(torch.tensor([0.5]), 1.29))
    assert abs(centre - 1 / (1 - 1.29 * (math.pi / 2 - 1))) < 1e-6


def test_mode_time_sampler_histogram_matches_its_density():
    """A 10-bin histogram of 200 000 draws against the density's bin means (SE per bin <= 0.011);
    the CFM objective draws exactly these times."""
    n = 200_000
    t = time_samplers.sample_time(n, gen(7), "mode", scale=1.29)
    assert t.min() >= 0 and t.max() <= 1
    hist = torch.histc(t, 10, 0, 1) / (n / 10)
    edges = torch.linspace(0, 1, 11)
    want = torch.tensor([float(time_samplers.mode_time_density(torch.linspace(a, b, 402)[1:-1], 1.29).mean())
                         for a, b in zip(edges[:-1], edges[1:])])
    assert torch.allclose(hist, want.float(), atol=0.03)
    cfm = objectives.CFM(paths.LinearPath(), time_sampler="mode", time_scale=1.29)
    ps = cfm.sample_path(torch.zeros(n, 1), torch.ones(n, 1), gen(7))
    assert torch.allclose(ps.t, t)


def test_constant_time_sampler():
    assert torch.all(time_samplers.sample_time(5, gen(8), "constant", loc=0.25) == 0.25)
    cfm = objectives.CFM(paths.LinearPath(), time_sampler="constant", time_loc=0.0)
    assert torch.all(cfm.sample_path(torch.zeros(6, 2), torch.ones(6, 2), gen(8)).t == 0)


def test_time_sampler_bad_parameters():
    with pytest.raises(ValueError, match="mode scale"):
        time_samplers.mode_map(torch.zeros(1), 2.0)
    with pytest.raises(ValueError, match="mode scale"):
        time_samplers.sample_time(4, gen(0), "mode", scale=-2.0)
    with pytest.raises(ValueError, match="mode scale"):
        objectives.CFM(paths.LinearPath(), time_sampler="mode", time_scale=2.0)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        objectives.CFM(paths.LinearPath(), time_sampler="constant", time_loc=1.5)


def test_sample_path_keeps_t_where_the_schedule_is_finite():
    cfm = objectives.CFM(paths.VPLinearBetaPath())
    ps = cfm.sample_path(torch.zeros(20_000, 1), torch.ones(20_000, 1), gen(3))
    assert float(ps.t.max()) == pytest.approx(paths.VPLinearBetaPath.t_max)
    assert torch.isfinite(ps.dxt).all()


def test_loss_is_the_mean_of_the_per_sample_losses_for_the_same_generator_state():
    cfm = objectives.CFM(paths.LinearPath())
    torch.manual_seed(0)
    net = MLP(2, width=16, depth=2)
    x0, x1 = torch.randn(64, 2, generator=gen(4)), torch.randn(64, 2, generator=gen(5))
    per, t = cfm.per_sample_loss(net, x0, x1, gen(6))
    loss, per2, t2 = cfm.loss(net, x0, x1, gen(6), per_sample=True)
    assert torch.equal(t, t2) and torch.allclose(per, per2) and not per2.requires_grad
    assert float(loss.detach()) == pytest.approx(float(per.detach().mean()), rel=1e-6) and loss.requires_grad
    # the per-sample loss is the squared error against the conditional velocity x1 - x0
    xt = t[:, None] * x1 + (1 - t[:, None]) * x0
    assert torch.allclose(per, (net(xt, t) - (x1 - x0)).pow(2).mean(1), atol=1e-6)
    assert cfm.loss(net, x0, x1, gen(6))[1] is None  # per_sample=False is the default


@pytest.mark.parametrize("prediction", ["x1", "epsilon"])
def test_velocity_of_an_x1_or_epsilon_model_is_the_marginal_velocity(prediction):
    """A model that predicts the exact E[x1 | x_t] (or E[x0 | x_t]) of a Gaussian target
    is turned into exactly the marginal velocity by CFM.velocity."""
    target = GaussianTarget(torch.tensor([1.0, -1.0], dtype=F64),
                            torch.tensor([[0.5, 0.2], [0.2, 0.8]], dtype=F64))
    path = paths.VPCosinePath()
    fn = target.x1_mean if prediction == "x1" else target.epsilon_mean
    cfm = objectives.CFM(path, prediction=prediction)
    v = cfm.velocity(lambda x, t: fn(path, x, t))
    g = gen(7)
    x, t = torch.randn(16, 2, generator=g, dtype=F64), 0.05 + 0.9 * torch.rand(16, generator=g, dtype=F64)
    assert torch.allclose(v(x, t), target.velocity(path, x, t), atol=1e-10)
    assert objectives.CFM(path).velocity(abs) is abs  # a velocity model is returned unchanged


def test_per_t_loss_bins_known_answer():
    t = torch.tensor([0.05, 0.15, 0.15, 0.99, 1.0, 0.0])
    loss = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    sums, counts = objectives.per_t_loss(t, loss, bins=10)
    want_sums = torch.zeros(10)
    want_sums[0], want_sums[1], want_sums[9] = 7.0, 5.0, 9.0  # t = 1 falls in the last bin
    assert torch.equal(sums, want_sums)
    assert counts.tolist() == [2, 2, 0, 0, 0, 0, 0, 0, 0, 2]


def test_variants_are_one_field_away_from_icfm():
    icfm = objectives.cfm_variant("icfm")
    assert icfm.coupling is couplings.independent and icfm.gibbs_eps is None
    assert isinstance(icfm.path, paths.LinearPath) and not icfm.path.has_bridge_noise
    assert isinstance(objectives.cfm_variant("otcfm").coupling, couplings.ExactOT)
    assert objectives.cfm_variant("wcfm", gibbs_eps=3.0).gibbs_eps == 3.0
    sink = objectives.cfm_variant("otcfm_sinkhorn", sinkhorn_reg=0.2, sinkhorn_iter=7).coupling
    assert isinstance(sink, couplings.SinkhornOT) and (sink.reg, sink.n_iter) == (0.2, 7)
    sb = objectives.cfm_variant("sbcfm", bridge_s=0.5, source_is_gaussian=False)
    assert isinstance(sb.path, paths.BridgePath) and sb.path.s == 0.5
    assert sb.coupling.reg == pytest.approx(2 * 0.5**2) and not sb.coupling.relative
    assert not sb.path.source_is_gaussian
    # SB-CFM draws bridge noise: its x_t is off the straight line between the pair
    ps = sb.sample_path(torch.zeros(32, 2), torch.ones(32, 2), gen(8))
    assert ps.z is not None and ps.z.shape == (32, 2)
    straight = ps.t[:, None] * torch.ones(32, 2)
    assert torch.allclose(ps.xt - straight, sb.path.gamma(ps.t)[:, None] * ps.z, atol=1e-6)


def test_wcfm_with_a_huge_temperature_is_icfm():
    """Same generator state -> same pairs, t and prediction; W-CFM multiplies each loss by
    w_i = e_i / mean(e), e_i = exp(-(c_i - min c) / eps), so |w_i - 1| <= expm1(D / eps)
    with D = max c - min c (105 here: 1.05e-7 at eps = 1e9), plus float32 rounding of the
    product (a few ulps, 2^-23 relative each)."""
    path = paths.LinearPath(source_is_gaussian=False)
    torch.manual_seed(0)
    net = MLP(2)
    x0, x1 = toy2d.eight_gaussians(256, gen(9)), toy2d.moons(256, gen(10))
    gi, gw = gen(11), gen(11)
    li, ti = objectives.CFM(path).per_sample_loss(net, x0, x1, gi)
    lw, tw = objectives.CFM(path, gibbs_eps=1e9).per_sample_loss(net, x0, x1, gw)
    assert torch.equal(ti, tw) and torch.equal(gi.get_state(), gw.get_state())
    c = (x1 - x0).pow(2).sum(1)
    bound = math.expm1(float(c.max() - c.min()) / 1e9) + 4 * 2.0**-23
    assert ((lw - li).abs() <= bound * li).all(), float(((lw - li).abs() / li).max())
    # and the scalar training losses agree to the same relative precision
    loss_i = objectives.CFM(path).loss(net, x0, x1, gen(11))[0].detach()
    loss_w = objectives.CFM(path, gibbs_eps=1e9).loss(net, x0, x1, gen(11))[0].detach()
    assert abs(float(loss_w) - float(loss_i)) <= bound * float(loss_i)


def test_wcfm_small_temperature_moves_path_energy_toward_otcfm():
    """Train I-CFM, W-CFM (eps = 10, against a mean pair cost of ~35) and OT-CFM for 300
    steps (3 x 64 SELU MLP, batch 128, seed 0, same batches for all three) on 8gaussians
    -> moons, and compare the normalised path energy |PE - W2²| / W2² (1000 points,
    Euler 50 steps). Measured: I-CFM 0.679, W-CFM 0.203, OT-CFM 0.098 (~1 s in total).
    Over training seeds 0-9 W-CFM was strictly between the two every time
    (I-CFM 0.42-0.92, W-CFM 0.16-0.37, OT-CFM 0.02-0.16). Smaller temperatures (eps = 1, 3)
    do *not* help at this budget: they weight a handful of pairs per batch and measured
    0.82-0.87 and 0.49-0.59."""
    g = gen(11)
    x0, x1 = toy2d.eight_gaussians(1000, g), toy2d.moons(1000, g)
    w2sq = metrics.wasserstein2_squared(x0, x1)
    npe = {}
    for name in ("icfm", "wcfm", "otcfm"):
        cfm = objectives.cfm_variant(name, source_is_gaussian=False, gibbs_eps=10.0)
        torch.manual_seed(0)
        net = MLP(2, width=64, depth=3, activation="selu")
        batch = lambda gg: (toy2d.eight_gaussians(128, gg), toy2d.moons(128, gg))
        res = train(net, cfm.loss, batch, steps=300, seed=0, progress=False, device="cpu")
        npe[name] = metrics.normalized_path_energy(metrics.path_energy(res.model, x0, 50), w2sq)
    assert npe["otcfm"] < npe["wcfm"] < npe["icfm"], npe
