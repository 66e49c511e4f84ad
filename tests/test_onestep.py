"""One-step models (chapter 10): the MeanFlow identity, flow maps and consistency, data-free
distillation, the dispersive regulariser — closed forms on the Gaussian-to-Gaussian linear flow,
brute force (finite differences), and one short training run."""

from __future__ import annotations

import math

import pytest
import torch

from minigen.data import toy2d
from minigen.eval.metrics import wasserstein2_squared
from minigen.nets.two_time import TwoTimeMLP, TwoTimeUNet
from minigen.nets.unet import UNet
from minigen.onestep.actions import ModalActions
from minigen.onestep.data_free import FlowMapDistillation
from minigen.onestep.dispersive import dispersive_loss, with_dispersion
from minigen.onestep.flow_map import Consistency, flow_map, sample_flow_map, two_times
from minigen.onestep.gaussian import GaussianLinearFlow
from minigen.onestep.meanflow import MeanFlow, meanflow_target
from minigen.recipe.objectives import CFM
from minigen.recipe.ode_solvers import integrate, sample
from minigen.recipe.paths import LinearPath
from minigen.train import train

D = torch.float64


@pytest.fixture
def flow():
    return GaussianLinearFlow(torch.tensor([-2.0, 1.0]), torch.tensor([1.0, 0.5]),
                              torch.tensor([3.0, -1.0]), torch.tensor([0.3, 2.0]))


def points(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g, dtype=D) * 2
    t = 0.9 * torch.rand(n, generator=g, dtype=D)
    r = t + (1 - t) * (0.05 + 0.95 * torch.rand(n, generator=g, dtype=D))
    return z, t, r


def test_gaussian_flow_map_solves_the_ode(flow):
    """X_{t->r} from the closed form equals RK4 on the closed-form velocity, and X_{t->t} = id."""
    z, t, _ = points(8)
    t = torch.full((8,), 0.2, dtype=D)
    x = integrate(lambda x, s: flow.velocity(x, s), z, "rk4", 200, t0=0.2, t1=0.9).x
    assert torch.allclose(flow.flow_map(z, t, torch.full_like(t, 0.9)), x, atol=1e-9)
    assert torch.allclose(flow.flow_map(z, t, t), z, atol=1e-12)


def test_meanflow_identity_holds_for_the_true_average_velocity(flow):
    """u = v - (t - r) du/dt with the JVP along (v, 0, 1), to float64 rounding."""
    z, t, r = points()
    u, u_tgt = meanflow_target(flow, z, t, r, flow.velocity(z, t))
    assert torch.allclose(u, flow.average_velocity(z, t, r))
    assert (u - u_tgt).abs().max() < 1e-10


@pytest.mark.parametrize("tangent", [(1, 0, 0), (1, 1, 0)])
def test_wrong_tangents_break_the_identity(flow, tangent):
    """Tangents (v, 0, 0) (no ∂_t) or (v, 1, 0) (∂_r instead of ∂_t) miss the identity by O(1)."""
    z, t, r = points()
    v = flow.velocity(z, t)
    f = lambda z_, r_, t_: flow(z_, t_, r=r_)
    u, dudt = torch.func.jvp(f, (z, r, t), (tangent[0] * v, tangent[1] * torch.ones_like(r),
                                             tangent[2] * torch.ones_like(t)))
    err = (u - (v - (t - r)[:, None] * dudt)).abs().max()
    assert err > 0.1


def test_jvp_target_equals_finite_differences():
    """The JVP's du/dt equals the central difference of u along (z + h v, t + h, r) for a network."""
    torch.manual_seed(0)
    net = TwoTimeMLP(2, width=32, depth=2).double()
    z, t, r = points(16)
    t, r = 0.1 + 0.8 * t, torch.minimum(r + 0.05, torch.ones_like(r))
    v = torch.randn(16, 2, dtype=D)
    u, u_tgt = meanflow_target(net, z, t, r, v)
    dudt = (v - u_tgt) / (t - r)[:, None]
    h = 1e-5
    fd = (net(z + h * v, t + h, r=r) - net(z - h * v, t - h, r=r)) / (2 * h)
    assert torch.allclose(dudt, fd, atol=1e-7)


def test_flow_map_is_the_identity_at_r_equals_t():
    torch.manual_seed(0)
    net = TwoTimeMLP(2, width=16, depth=2)
    x, t = torch.randn(10, 2), torch.rand(10)
    assert torch.equal(flow_map(net, x, t, t), x)
    assert torch.allclose(net(x, t), net(x, t, r=t))  # r = None means r = t


def test_exact_map_has_zero_distillation_losses(flow):
    """With the exact teacher velocity, the exact average velocity makes the MeanFlow, the
    data-free and the data-based distillation losses vanish (float64)."""
    g = torch.Generator().manual_seed(0)
    x0, x1 = flow.sample_source(256, g), flow.sample_data(256, g)
    mf = MeanFlow(share_r_neq_t=0.5, teacher=flow.velocity)
    assert mf.loss(flow, x0, x1, generator=g).loss < 1e-18
    dist = FlowMapDistillation(flow.velocity)
    assert dist.data_free_loss(flow, x0, generator=g).loss < 1e-18
    assert dist.data_loss(flow, x0, x1, generator=g).loss < 1e-18
    # with the conditional velocity x1 - x0 instead, MeanFlow's loss is at its floor, not zero
    assert MeanFlow(adaptive_p=0.0).loss(flow, x0, x1, generator=g).loss > 0.1


def test_consistency_distillation_target_is_the_teacher_step(flow):
    """r = t + dt: the target map is x_t + dt v_T(x_t, t), one teacher Euler step; r further: the
    stop-gradient map from that point, here the exact X_{s->r}."""
    z, t, _ = points(32)
    cd = Consistency(dt=0.05, teacher=flow.velocity)
    v = cd.velocity_estimate(z, t, None, None)
    r = t + 0.05
    x_r = z + 0.05 * cd.target(flow, z, t, r, v)
    assert torch.allclose(x_r, z + 0.05 * flow.velocity(z, t), atol=1e-12)
    r = torch.minimum(t + 0.3, torch.ones_like(t))
    x_r = z + (r - t)[:, None] * cd.target(flow, z, t, r, v)
    xs = z + 0.05 * flow.velocity(z, t)
    assert torch.allclose(x_r, flow.flow_map(xs, t + 0.05, r), atol=1e-12)
    # consistency training steps along the conditional path: v_hat = x1 - x0
    ct = Consistency(dt=0.05)
    x0, x1 = torch.randn(4, 2), torch.randn(4, 2)
    assert torch.equal(ct.velocity_estimate(x0, torch.zeros(4), x0, x1), x1 - x0)


def test_one_step_sampling_of_the_exact_map(flow):
    g = torch.Generator().manual_seed(1)
    x0 = flow.sample_source(100, g)
    for k in (1, 2, 4):
        out = sample_flow_map(flow, x0, k)
        assert out.nfe == k
        assert torch.allclose(out.x, flow.flow_map(x0, torch.zeros(100, dtype=D), torch.ones(100, dtype=D)))
    assert MeanFlow.sample(flow, x0, 2).nfe == 2


def test_guidance_is_folded_into_the_velocity():
    """v_tgt = omega v + (1 - omega) u(x_t, t, t | null) for labelled samples, v for null ones."""
    mf = MeanFlow(cfg_scale=2.0, label_dropout=0.1, null_label=3)
    model = lambda x, t, r=None, cond=None: torch.full_like(x, 0.5)
    x0, x1 = torch.zeros(4, 2), torch.ones(4, 2)
    v = mf.velocity(x0, torch.zeros(4), x0, x1, model, torch.tensor([0, 1, 3, 2]))
    assert torch.allclose(v[2], torch.ones(2))
    assert torch.allclose(v[[0, 1, 3]], torch.full((3, 2), 2 * 1 + (1 - 2) * 0.5))


def test_two_times_share_and_order():
    g = torch.Generator().manual_seed(0)
    t, r = two_times(4000, g, "logit_normal", 0.4, 1.0, share_r_neq_t=0.25)
    assert bool((r >= t).all()) and 0.2 < float((r > t).float().mean()) < 0.3


def test_two_time_unet_starts_as_the_velocity_unet():
    torch.manual_seed(0)
    unet = UNet(1, base=8, mults=(1, 2))
    net = TwoTimeUNet.from_velocity_unet(unet)
    x, t = torch.randn(3, 1, 10, 10), torch.rand(3)
    assert torch.allclose(net(x, t, r=torch.ones(3)), unet(x, t))


def test_bad_input_raises():
    net = TwoTimeMLP(2, width=8, depth=1)
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="r >= t"):
        flow_map(net, x, 0.5, 0.2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        flow_map(net, x, 0.0, 1.5)
    with pytest.raises(ValueError, match="shape"):
        net(torch.zeros(3, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="steps"):
        sample_flow_map(net, x, 0)
    with pytest.raises(ValueError, match="increasing"):
        sample_flow_map(net, x, times=torch.tensor([0.0, 0.5, 0.4, 1.0]))
    with pytest.raises(ValueError, match="share_r_neq_t"):
        MeanFlow(share_r_neq_t=1.5)
    with pytest.raises(ValueError, match="null_label"):
        MeanFlow(cfg_scale=2.0)
    with pytest.raises(ValueError, match="same shape"):
        MeanFlow().loss(net, torch.zeros(3, 2), torch.zeros(4, 2), generator=torch.Generator())
    with pytest.raises(ValueError, match="dt"):
        Consistency(dt=0.0)
    with pytest.raises(ValueError, match="at least two"):
        dispersive_loss(torch.zeros(1, 5))
    with pytest.raises(ValueError, match="tau"):
        dispersive_loss(torch.zeros(4, 5), tau=0.0)
    with pytest.raises(ValueError, match="rho"):
        ModalActions(rho=0.0)


def test_dispersive_loss_properties():
    """0 at collapse, lower as features spread, bounded below by log(1/B); its gradient pushes
    features apart."""
    g = torch.Generator().manual_seed(0)
    b = 16
    assert abs(float(dispersive_loss(torch.ones(b, 8)))) < 1e-12
    h = torch.randn(b, 8, generator=g)
    spread = [float(dispersive_loss(s * h)) for s in (0.1, 1.0, 10.0, 1000.0)]
    assert spread == sorted(spread, reverse=True)
    assert spread[-1] == pytest.approx(-math.log(b), abs=1e-5) and min(spread) >= -math.log(b) - 1e-5
    h = (0.1 * h).requires_grad_()
    dispersive_loss(h).backward()
    moved = h.detach() - 0.1 * h.grad
    assert torch.pdist(moved).min() > torch.pdist(h.detach()).min()
    assert torch.pdist(moved).mean() > torch.pdist(h.detach()).mean()


def test_with_dispersion_adds_the_regulariser():
    torch.manual_seed(0)
    net = TwoTimeMLP(2, width=16, depth=2, cond_dim=2)
    x0, x1, c = torch.randn(32, 2), torch.randn(32, 2), torch.randn(32, 2)
    base = MeanFlow().loss
    a = base(net, x0, x1, c, generator=torch.Generator().manual_seed(1)).loss
    b = with_dispersion(base, weight=0.5)(net, x0, x1, c, generator=torch.Generator().manual_seed(1)).loss
    assert float(b.detach()) < float(a.detach())  # the regulariser is negative for distinct features


def test_action_task_scores():
    task = ModalActions(k=4)
    g = torch.Generator().manual_seed(0)
    obs = task.observations(200, g)
    assert task.success_rate(obs, task.demonstrations(obs, g)) > 0.95
    assert task.success_rate(obs, obs) == 0.0  # the observation itself is no valid action
    modes = task.modes(obs)
    assert task.mode_coverage(obs, modes) == 1.0
    assert task.mode_coverage(obs, modes[:, :1].expand(-1, 5, -1)) == 0.25


def test_meanflow_one_step_beats_flow_matching_one_step_euler():
    """A few hundred steps on 8gaussians -> moons (independent pairs): MeanFlow's one jump lands
    far nearer the data than one Euler step of flow matching at the same budget, which puts the
    samples near the conditional mean."""
    torch.set_num_threads(1)
    steps, b = 400, 128
    batch = lambda g: (toy2d.sample_2d("8gaussians", b, g), toy2d.sample_2d("moons", b, g))
    fit = lambda loss: train(TwoTimeMLP(2, width=128, depth=3), loss, batch, steps=steps, lr=1e-3, seed=0,
                             ema_decay=0.99, grad_clip=1.0, progress=False, device="cpu").ema
    torch.manual_seed(0)
    mf = fit(MeanFlow(share_r_neq_t=0.5, adaptive_p=0.5, time_loc=0.8).loss)
    torch.manual_seed(0)
    fm = fit(CFM(LinearPath(source_is_gaussian=False)).loss)
    g = torch.Generator().manual_seed(1000)
    x0, x1 = toy2d.sample_2d("8gaussians", 1000, g), toy2d.sample_2d("moons", 1000, g)
    w_mf = wasserstein2_squared(sample_flow_map(mf, x0, 1).x, x1)
    w_fm = wasserstein2_squared(sample(fm, x0, "euler", 1).x, x1)
    assert w_mf < 0.5 * w_fm, (w_mf, w_fm)


def test_twinflow_loss_and_generator():
    """The three-term loss is finite and differentiable; G(z) is the one-step map of the real branch."""
    from minigen.onestep.twinflow import TwinFlow, branch

    torch.manual_seed(0)
    net = TwoTimeMLP(2, width=16, depth=2, cond_dim=1)
    tf = TwinFlow(adv_weight=0.5)
    z = torch.randn(32, 2)
    assert torch.allclose(tf.generate(net, z), sample_flow_map(net, z, 1, cond=branch(32, 1, z)).x)
    out = tf.loss(net, z, torch.randn(32, 2), generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert torch.isfinite(out.loss) and all(p.grad is not None for p in net.parameters())
