"""Chapter 09's samplers on fields with known solutions: time grids, the order of every fixed-step
and exponential solver (fitted slope of error against NFE), DPM-Solver++(2M) against diffusers'
independent implementation, BOSS's dynamic programme against brute force, FlowTurbo's pseudo
corrector and refiner, and blockwise routing."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from minigen.recipe.dpm_solver import (
    ddim,
    dpm_solver,
    dpm_solver_pp_2m,
    dpm_solver_step,
    fast_orders,
    multistep_2m,
)
from minigen.recipe.grid_solvers import integrate_on_grid
from minigen.recipe.paths import LinearPath, VPCosinePath
from minigen.recipe.time_grids import log_snr, log_snr_times, time_at_log_snr, uniform_times
from minigen.sampling import boss
from minigen.sampling.blockwise import BlockwiseVelocity, check_edges, segment_cfm_loss
from minigen.sampling.boss import bellman_steps, brute_force_steps, euler_jump_costs
from minigen.sampling.flowturbo import (
    VelocityRefiner,
    flowturbo_sample,
    pseudo_corrector_sample,
    refiner_loss,
)
from minigen.transport.rectified import ddim_sample

MU = torch.tensor([1.5, -0.5], dtype=torch.float64)
STD = torch.tensor([0.3, 0.8], dtype=torch.float64)
T0, T1 = 1e-3, 1 - 1e-3


def exact_map(path, x, s: float, t: float):
    """The probability-flow map of N(0, I) -> N(mu, diag(std²)) on ``path``: each coordinate keeps
    its standardised value, x_t = a_t mu + c_t / c_s (x_s - a_s mu), c = sqrt(a² std² + s²)."""
    def a_c(u):
        uu = torch.tensor(u, dtype=torch.float64)
        a, sg = path.alpha(uu), path.sigma(uu)
        return a, torch.sqrt(a**2 * STD**2 + sg**2)
    a_s, c_s = a_c(s)
    a_t, c_t = a_c(t)
    return a_t * MU + c_t / c_s * (x - a_s * MU)


MEANS = torch.tensor([[2.0, 0.5], [-1.0, -1.5], [0.5, 2.5]], dtype=torch.float64)
WEIGHTS = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
S2 = 0.3  # each component N(m_k, 0.3 I)


def mixture_predictions(path, x, t):
    """E[x1 | x_t] and E[x0 | x_t] for a mixture of isotropic Gaussians: responsibilities r_k of
    N(alpha m_k, c² I), c² = alpha² S2 + sigma², and each component's linear posterior mean."""
    t = torch.as_tensor(t, dtype=torch.float64).expand(len(x))[:, None]
    a, sg = path.alpha(t), path.sigma(t)
    c2 = a**2 * S2 + sg**2
    d = x[:, None, :] - a[:, :, None] * MEANS  # (B, K, 2)
    r = torch.softmax(torch.log(WEIGHTS) - d.pow(2).sum(-1) / (2 * c2), 1)[..., None]
    x1 = (r * (MEANS + (a * S2 / c2)[:, :, None] * d)).sum(1)
    x0 = (r * (sg / c2)[:, :, None] * d).sum(1)
    return x1, x0, t[:, 0]


def mixture_fields(path):
    def v(x, t):
        x1, x0, tt = mixture_predictions(path, x, t)
        return path.d_alpha(tt)[:, None] * x1 + path.d_sigma(tt)[:, None] * x0
    def eps(x, t):
        return mixture_predictions(path, x, t)[1]

    def x1(x, t):
        return mixture_predictions(path, x, t)[0]
    return v, eps, x1


@functools.cache
def mixture_truth():
    """Start points and the mixture's flow map from t = 0 to 1 on the linear path, by 256 RK4
    steps (error ~1e-9, far below the solvers' under test)."""
    x = x_start(LinearPath(), 0.0)
    return x, integrate_on_grid(mixture_fields(LinearPath())[0], x, uniform_times(256), "rk4").x


def fields(path):
    """Velocity, epsilon and x1 predictions of N(0, I) -> N(MU, diag(STD²)), coordinate by
    coordinate (``GaussianTarget``'s formulas for a diagonal covariance, without its solves)."""
    def predictions(x, t):
        t = torch.as_tensor(t, dtype=torch.float64).expand(len(x))[:, None]
        a, sg = path.alpha(t), path.sigma(t)
        c2 = a**2 * STD**2 + sg**2
        return MU + a * STD**2 * (x - a * MU) / c2, sg * (x - a * MU) / c2, t

    def v(x, t):
        x1, x0, tt = predictions(x, t)
        return path.d_alpha(tt) * x1 + path.d_sigma(tt) * x0
    return v, (lambda x, t: predictions(x, t)[1]), (lambda x, t: predictions(x, t)[0])


def x_start(path, t0=T0, n=64):
    x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return exact_map(path, x0, 0.0, t0) if t0 > 0 else x0


def slope(nfes, errors) -> float:
    return float(np.polyfit(np.log(nfes), np.log(errors), 1)[0])


def test_log_snr_grid_is_uniform_in_lambda_and_inverts():
    path = LinearPath()
    grid = log_snr_times(path, 8, T0, T1)
    lam = log_snr(path, grid)
    assert torch.allclose(lam[1:] - lam[:-1], (lam[-1] - lam[0]) / 8, atol=1e-9)
    assert torch.allclose(grid, torch.sigmoid(lam), atol=1e-12)  # lambda = logit(t) on the linear path
    vp = VPCosinePath()
    t = torch.tensor([0.1, 0.5, 0.93], dtype=torch.float64)
    assert torch.allclose(time_at_log_snr(vp, log_snr(vp, t)), t, atol=1e-12)
    assert float(grid[-1] - grid[-2]) < float(uniform_times(8, T0, T1)[1] - T0)  # crowds near data
    with pytest.raises(ValueError, match="infinite"):
        log_snr_times(path, 4, 0.0, 1.0)
    with pytest.raises(ValueError):
        uniform_times(0)


@pytest.mark.parametrize("method, order", [("euler", 1), ("midpoint", 2), ("heun", 2), ("rk4", 4)])
def test_fixed_step_solvers_converge_at_their_order(method, order):
    """On the Gaussian-mixture field (the single Gaussian's is too special: midpoint's leading
    error term cancels there, slope -2.8)."""
    v, _, _ = mixture_fields(LinearPath())
    x, truth = mixture_truth()
    steps = [16, 32, 64, 128] if order < 4 else [8, 16, 32, 64]
    res = [integrate_on_grid(v, x, uniform_times(k), method) for k in steps]
    errs = [float((r.x - truth).abs().max()) for r in res]
    assert abs(slope([r.nfe for r in res], errs) + order) < 0.35, errs


@pytest.mark.parametrize("path", [LinearPath(), VPCosinePath()], ids=["linear", "vp_cosine"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_dpm_solver_converges_at_its_order(path, order):
    _, eps, _ = fields(path)
    x = x_start(path)
    truth = exact_map(path, x, T0, T1)
    steps = [16, 32, 64, 128]  # lambda runs over [-6.9, 6.9]: the asymptotic regime starts late
    errs = [float((dpm_solver(eps, path, x, order * k, order).x - truth).abs().max()) for k in steps]
    assert abs(slope(steps, errs) + order) < 0.35, errs


@pytest.mark.parametrize("path", [LinearPath(), VPCosinePath()], ids=["linear", "vp_cosine"])
def test_dpm_solver_pp_2m_is_second_order_and_beats_ddim(path):
    _, _, x1 = fields(path)
    x = x_start(path)
    truth = exact_map(path, x, T0, T1)
    steps = [16, 32, 64, 128]
    errs = [float((dpm_solver_pp_2m(x1, path, x, k).x - truth).abs().max()) for k in steps]
    assert abs(slope(steps, errs) + 2) < 0.35, errs
    err_ddim = float((ddim(x1, path, x, log_snr_times(path, 16, T0, T1)).x - truth).abs().max())
    assert errs[0] < 0.5 * err_ddim


def test_first_order_solvers_agree_and_ddim_is_euler_on_the_linear_path():
    path = LinearPath()
    v, eps, x1 = fields(path)
    x = x_start(path)
    grid = log_snr_times(path, 6, T0, T1)
    a = ddim(x1, path, x, grid).x
    b = dpm_solver(eps, path, x, 6, 1, times=grid).x
    c = integrate_on_grid(v, x, grid, "euler").x
    d = multistep_2m(lambda y, k: x1(y, torch.full((len(y),), float(grid[k]), dtype=y.dtype)), x,
                     path.alpha(grid), path.sigma(grid), lower_order_final=True).x  # 2M from step 2
    assert torch.allclose(a, b, atol=1e-10) and torch.allclose(a, c, atol=1e-10)
    assert not torch.allclose(a, d, atol=1e-4)  # the multistep correction does something
    e = ddim_sample(v, path, "velocity", x_start(path, 0.0), 6, 0.0, 1.0).x  # chapter 04's DDIM
    f = ddim(x1, path, x_start(path, 0.0), uniform_times(6)).x
    assert torch.allclose(e, f, atol=1e-10)


@pytest.mark.parametrize("path", [LinearPath(), VPCosinePath()], ids=["linear", "vp_cosine"])
def test_exponential_integrators_are_exact_when_the_prediction_is_constant(path):
    """A point-mass target: x1_hat = mu everywhere, and eps_hat is constant along each trajectory,
    so the exact linear part leaves no error, at any order and any number of steps."""
    x0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ends = torch.tensor([T0, T1], dtype=torch.float64)
    a, sg = path.alpha(ends), path.sigma(ends)
    x, truth = a[0] * MU + sg[0] * x0, a[1] * MU + sg[1] * x0

    def x1_hat(y, t):
        return MU.expand_as(y)

    def eps_hat(y, t):
        return (y - path.alpha(t)[:, None] * MU) / path.sigma(t)[:, None]
    for order in (1, 2, 3):
        # one step over lambda in [-6.9, 6.9]: exact up to the bisection's rounding, which the
        # third-order terms amplify by ~e^h / h
        assert torch.allclose(dpm_solver(eps_hat, path, x, order, order).x, truth, atol=1e-6)
    assert torch.allclose(dpm_solver_pp_2m(x1_hat, path, x, 3).x, truth, atol=1e-9)


def test_fast_orders_and_bad_inputs():
    assert fast_orders(10, 3) == [3, 3, 3, 1] and fast_orders(10, 2) == [2] * 5 and fast_orders(1, 3) == [1]
    path = LinearPath()
    _, eps, _ = fields(path)
    with pytest.raises(ValueError, match="order"):
        dpm_solver_step(eps, path, x_start(path), 0.1, 0.2, 4)
    with pytest.raises(ValueError, match="grid"):
        dpm_solver(eps, path, x_start(path), 4, 2, times=uniform_times(3, T0, T1))
    with pytest.raises(ValueError, match="increasing"):
        integrate_on_grid(fields(path)[0], x_start(path), torch.tensor([0.0, 0.5, 0.4]))


def test_multistep_2m_matches_diffusers():
    """diffusers' DPMSolverMultistepScheduler (dpmsolver++, data prediction) on its own discrete
    DDPM schedule: our update on the same (alpha, sigma) values, the same stand-in network."""
    from diffusers import DPMSolverMultistepScheduler
    sch = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear", solver_order=2,
                                      algorithm_type="dpmsolver++", prediction_type="sample",
                                      lower_order_final=False, final_sigmas_type="sigma_min")
    sch.set_timesteps(8)
    sig = sch.sigmas.double()  # sigma / alpha, from noise to data
    alphas = 1 / torch.sqrt(sig**2 + 1)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def net(y, k):
        return torch.tanh(y) * (1 + 0.1 * k) + 0.3
    y = x.clone()
    for k, t in enumerate(sch.timesteps):
        y = sch.step(net(y, k), t, y).prev_sample
    ours = multistep_2m(net, x, alphas, sig * alphas)
    assert ours.nfe == 8
    assert float((ours.x - y).abs().max()) < 1e-5  # diffusers keeps its sigmas in float32
    first = multistep_2m(net, x, alphas, sig * alphas, lower_order_final=True).x
    assert float((first - y).abs().max()) > 1e-3  # a different last step is seen


def test_bellman_steps_equal_brute_force():
    g = torch.Generator().manual_seed(3)
    for n, k in [(8, 1), (8, 3), (9, 4), (10, 9)]:
        cost = torch.rand(n + 1, n + 1, generator=g, dtype=torch.float64).triu(1)
        cost[torch.tril(torch.ones(n + 1, n + 1, dtype=torch.bool))] = math.inf
        path, c = bellman_steps(cost, k)
        bpath, bc = brute_force_steps(cost, k)
        assert path == bpath and abs(c - bc) < 1e-12
        assert len(path) == k + 1 and path[0] == 0 and path[-1] == n
    with pytest.raises(ValueError):
        bellman_steps(cost, 0)


def test_boss_costs_and_schedule_on_the_gaussian_field():
    path = LinearPath()
    v, _, _ = fields(path)
    x = x_start(path, 0.0, 256)
    fine = uniform_times(40)
    traj, vel = boss.reference_trajectories(v, x, fine)
    assert float((traj[-1] - exact_map(path, x, 0.0, 1.0)).abs().max()) < 1e-6
    cost = euler_jump_costs(traj, vel, fine)
    assert float(cost[0, 1]) >= 0 and math.isinf(float(cost[1, 0]))
    k = 4
    path_b, c_b = bellman_steps(cost, k)
    uniform = list(range(0, 41, 10))
    c_u = float(sum(cost[a, b] for a, b in zip(uniform[:-1], uniform[1:])))
    assert c_b < c_u
    err_b = float((integrate_on_grid(v, x, fine[path_b], "euler").x - traj[-1]).pow(2).sum(1).mean())
    err_u = float((integrate_on_grid(v, x, fine[uniform], "euler").x - traj[-1]).pow(2).sum(1).mean())
    assert err_b < err_u
    # a field whose trajectories are straight lines at constant speed: every jump is exact
    straight = euler_jump_costs(*boss.reference_trajectories(lambda y, t: MU - 0 * y, x, fine), fine)
    assert float(straight[torch.isfinite(straight)].max()) < 1e-20


def test_pseudo_corrector_is_second_order_at_one_nfe_per_step():
    path = LinearPath()
    v, _, _ = fields(path)
    x = x_start(path, 0.0)
    truth = exact_map(path, x, 0.0, 1.0)
    steps = [8, 16, 32, 64]
    res = [pseudo_corrector_sample(v, x, uniform_times(k)) for k in steps]
    assert [r.nfe for r in res] == [k + 1 for k in steps]
    errs = [float((r.x - truth).abs().max()) for r in res]
    assert abs(slope(steps, errs) + 2) < 0.35, errs


def test_flowturbo_sampler_reduces_to_heun_and_uses_an_oracle_refiner_exactly():
    path = LinearPath()
    v, _, _ = fields(path)
    x = x_start(path, 0.0)
    grid = uniform_times(6)
    from minigen.nets.mlp import MLP
    zero = VelocityRefiner(MLP(4, 8, 1, out_dim=2)).double()  # never called below
    heun = flowturbo_sample(v, zero, x, grid, heun=6, pseudo=0)[0]
    assert torch.allclose(heun.x, integrate_on_grid(v, x, grid, "heun").x, atol=1e-12) and heun.nfe == 12
    pc = flowturbo_sample(v, zero, x, grid, heun=0, pseudo=6)[0]
    assert torch.allclose(pc.x, pseudo_corrector_sample(v, x, grid).x, atol=1e-12) and pc.nfe == 7

    class Oracle(torch.nn.Module):  # the true change of velocity: refiner steps are Euler steps
        def forward(self, y, v_prev, t):
            return v(y, t) - v_prev
    res, refines = flowturbo_sample(v, Oracle(), x, grid, heun=0, pseudo=0)
    assert refines == 5 and res.nfe == 1
    assert torch.allclose(res.x, integrate_on_grid(v, x, grid, "euler").x, atol=1e-12)
    loss = refiner_loss(v, path)
    x1 = MU + STD * torch.randn(64, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert float(loss(Oracle(), x, x1, torch.Generator().manual_seed(0)).loss) < 1e-20


def test_a_fresh_refiner_keeps_the_cached_velocity():
    from minigen.nets.mlp import MLP
    ref = VelocityRefiner(MLP(4, 16, 2, out_dim=2))
    x, vp = torch.randn(5, 2), torch.randn(5, 2)
    assert torch.equal(ref(x, vp, torch.rand(5)), torch.zeros(5, 2))
    with pytest.raises(ValueError):
        ref(x, torch.randn(5, 3), torch.rand(5))


def test_blockwise_routes_each_time_to_its_segment():
    class Const(torch.nn.Module):
        def __init__(self, c):
            super().__init__()
            self.c = c

        def forward(self, x, t):
            return torch.full_like(x, float(self.c))
    bw = BlockwiseVelocity([Const(0), Const(1), Const(2)], [0.0, 0.25, 0.6, 1.0])
    t = torch.tensor([0.0, 0.2, 0.25, 0.59, 0.6, 1.0])
    out = bw(torch.zeros(6, 2), t)
    assert out[:, 0].tolist() == [0, 0, 1, 1, 2, 2]
    assert bw(torch.zeros(3, 2), torch.full((3,), 0.7))[:, 0].tolist() == [2, 2, 2]
    with pytest.raises(ValueError):
        check_edges([0.0, 0.5, 0.4, 1.0])
    with pytest.raises(ValueError):
        BlockwiseVelocity([Const(0)], [0.0, 0.5, 1.0])
    seen = []

    def spy(x, t):
        seen.append(t)
        return torch.zeros_like(x)
    loss = segment_cfm_loss(LinearPath(), 0.25, 0.6)
    loss(spy, torch.randn(100, 2), torch.randn(100, 2), torch.Generator().manual_seed(0))
    assert 0.25 <= float(seen[0].min()) and float(seen[0].max()) <= 0.6
