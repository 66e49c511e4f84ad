"""ODE solvers: order of convergence, NFE bookkeeping, trajectories, direction, adaptivity.

The test ODE (float64, two independent components, time-dependent and nonlinear) has a
closed-form solution:

    x' = x cos(3t)  ->  x(t) = x(0) exp(sin(3t) / 3)
    y' = -y²        ->  y(t) = y(0) / (1 + y(0) t)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from minigen.eval.gaussian import GaussianTarget
from minigen.recipe import ode_solvers as solvers
from minigen.recipe.paths import PATHS, make_path

torch.set_num_threads(1)
F64 = torch.float64
X0 = torch.tensor([[1.0, 0.5], [-0.7, 2.0], [0.3, 1.0]], dtype=F64)
ORDERS = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}


def field(x, t):
    return torch.stack([x[:, 0] * torch.cos(3 * t), -x[:, 1] ** 2], 1)


def exact(x0, t: float):
    return torch.stack([x0[:, 0] * math.exp(math.sin(3 * t) / 3), x0[:, 1] / (1 + x0[:, 1] * t)], 1)


class Counter:
    """Wrap a field and record the times at which it is evaluated."""

    def __init__(self, f):
        self.f, self.times = f, []

    def __call__(self, x, t):
        assert t.shape == (x.shape[0],) and t.dtype == x.dtype
        self.times.append(float(t[0]))
        return self.f(x, t)


@pytest.mark.parametrize("method", list(ORDERS))
def test_fixed_step_methods_converge_at_their_order(method):
    """Global error ~ C h^p: the least-squares slope of log(error) against log(steps) over
    steps = 10..160 must be -p within ±0.3 (measured: euler 1.01, midpoint 2.08, heun 2.04,
    rk4 3.97). The errors stay far above float64 rounding (rk4 at 160 steps: ~1e-10)."""
    ns = [10, 20, 40, 80, 160]
    errs = [float((solvers.integrate(field, X0, method, n).x - exact(X0, 1.0)).abs().max())
            for n in ns]
    slope = np.polyfit(np.log(ns), np.log(errs), 1)[0]
    assert abs(-slope - ORDERS[method]) < 0.3, (method, slope, errs)
    assert min(errs) > 1e-13


@pytest.mark.parametrize("method", list(ORDERS))
@pytest.mark.parametrize("steps", [1, 7, 25])
def test_nfe_is_steps_times_stages_and_is_what_was_called(method, steps):
    v = Counter(field)
    sol = solvers.integrate(v, X0, method, steps)
    per_step = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}[method]
    assert sol.nfe == steps * per_step == len(v.times)
    assert solvers.FIXED_STEP[method][1] == per_step


@pytest.mark.parametrize("method", list(ORDERS))
def test_trajectory_shape_grid_and_end_points(method):
    sol = solvers.integrate(field, X0, method, 12, return_trajectory=True)
    assert sol.trajectory.shape == (13, *X0.shape)
    assert torch.equal(sol.trajectory[0], X0) and torch.equal(sol.trajectory[-1], sol.x)
    assert torch.allclose(sol.times, torch.linspace(0, 1, 13))
    assert solvers.integrate(field, X0, method, 12).trajectory is None
    # each trajectory point is the solution at its grid time (to the method's accuracy)
    if method == "rk4":
        for k in (3, 6, 9):
            assert torch.allclose(sol.trajectory[k], exact(X0, k / 12), atol=1e-5)
    # image-shaped states work: (B, C, H, W) -> trajectory (K+1, B, C, H, W)
    img = torch.randn(2, 1, 3, 3, dtype=F64)
    traj = solvers.integrate(lambda x, t: -x, img, method, 4, return_trajectory=True).trajectory
    assert traj.shape == (5, 2, 1, 3, 3)


@pytest.mark.parametrize("method", list(ORDERS))
def test_backwards_integration_inverts_forwards(method):
    """t0 = 1, t1 = 0 takes negative steps from the t = 1 end: starting at the exact x(1)
    it converges onto x(0) at the method's order (slope over 20..160 steps within ±0.3;
    measured euler 0.91, midpoint 1.95, heun 1.97, rk4 3.99), and its first evaluation is
    at t = 1."""
    ns = [20, 40, 80, 160]
    errs = [float((solvers.integrate(field, exact(X0, 1.0), method, n, t0=1.0, t1=0.0).x - X0)
                  .abs().max()) for n in ns]
    slope = np.polyfit(np.log(ns), np.log(errs), 1)[0]
    assert abs(-slope - ORDERS[method]) < 0.3, (method, slope, errs)
    v = Counter(field)
    solvers.integrate(v, X0, method, 4, t0=1.0, t1=0.0)
    assert v.times[0] == 1.0 and min(v.times) >= 0.0
    if method == "euler":
        assert v.times == [1.0, 0.75, 0.5, 0.25]
    traj = solvers.integrate(field, X0, method, 5, 1.0, 0.0, return_trajectory=True)
    assert torch.allclose(traj.times, torch.linspace(1, 0, 6))


def test_forwards_then_backwards_returns_to_the_start():
    """RK4 with 100 steps each way: both legs have error ~1e-9 (see above), and the round
    trip's errors partly cancel (measured 1e-11); 1e-8 is ten times the one-leg error."""
    there = solvers.integrate(field, X0, "rk4", 100).x
    back = solvers.integrate(field, there, "rk4", 100, t0=1.0, t1=0.0).x
    assert torch.allclose(back, X0, atol=1e-8)


def test_dopri5_is_accurate_and_counts_its_evaluations():
    v = Counter(field)
    sol = solvers.integrate(v, X0, "dopri5", rtol=1e-9, atol=1e-9)
    assert (sol.x - exact(X0, 1.0)).abs().max() < 1e-7
    assert sol.nfe > 0 and sol.nfe == len(v.times)
    loose = solvers.integrate(field, X0, "dopri5", rtol=1e-3, atol=1e-3)
    # adaptive: a looser tolerance takes fewer evaluations and is less accurate
    # (measured: 146 NFE / error 3e-9 at 1e-9; 20 NFE / error 1.4e-2 at 1e-3)
    assert 0 < loose.nfe < sol.nfe
    assert (loose.x - exact(X0, 1.0)).abs().max() > (sol.x - exact(X0, 1.0)).abs().max()
    traj = solvers.integrate(field, X0, "dopri5", steps=4, return_trajectory=True, rtol=1e-9,
                             atol=1e-9)
    assert traj.trajectory.shape == (5, *X0.shape)
    for k in range(5):
        assert torch.allclose(traj.trajectory[k], exact(X0, k / 4), atol=1e-7)
    back = solvers.integrate(field, sol.x, "dopri5", t0=1.0, t1=0.0, rtol=1e-9, atol=1e-9)
    assert torch.allclose(back.x, X0, atol=1e-7)


def test_sample_integrates_from_zero_to_one():
    a = solvers.sample(field, X0, "heun", 30)
    b = solvers.integrate(field, X0, "heun", 30, 0.0, 1.0)
    assert torch.equal(a.x, b.x) and a.nfe == b.nfe == 60


def test_no_graph_by_default_and_exact_gradient_on_request():
    """x' = x cos(3t) has dx(1)/dx(0) = exp(sin(3)/3); RK4 with 100 steps is accurate to
    ~1e-10, so autograd through the solve must return it (grad=True only)."""
    x0 = torch.tensor([[0.8]], dtype=F64, requires_grad=True)
    v = lambda x, t: x * torch.cos(3 * t)[:, None]
    assert not solvers.integrate(v, x0, "rk4", 100).x.requires_grad
    out = solvers.integrate(v, x0, "rk4", 100, grad=True).x
    (g,) = torch.autograd.grad(out.sum(), x0)
    assert float(g) == pytest.approx(math.exp(math.sin(3) / 3), abs=1e-8)


@pytest.mark.parametrize("method", solvers.METHODS)
@pytest.mark.parametrize("name", sorted(n for n in PATHS if not PATHS[n].has_bridge_noise))
def test_every_path_probability_flow_ode_stays_inside_its_interval(name, method):
    """The probability-flow ODE of each registered path (the exact marginal velocity of a
    Gaussian target) from t_min to t_max: no method evaluates the field outside [t_min, t_max]
    (VP linear-beta's sigma is 0 at t = 1, its score infinite), and the result is finite and
    lands near the target's mean."""
    path = make_path(name)
    target = GaussianTarget(torch.tensor([1.0, -0.5]), torch.tensor([[0.3, 0.1], [0.1, 0.2]]))
    counter = Counter(lambda x, t: target.velocity(path, x, t))
    x0 = path.prior_sample((256, 2), torch.Generator().manual_seed(0)).double()
    sol = solvers.integrate(counter, x0, method, steps=200, t0=path.t_min, t1=path.t_max)
    ts = torch.tensor(counter.times, dtype=torch.float64)
    assert float(ts.min()) >= path.t_min and float(ts.max()) <= path.t_max, (
        f"{method} evaluated {name} at t in [{float(ts.min())}, {float(ts.max())}]")
    assert torch.isfinite(sol.x).all()
    assert torch.allclose(sol.x.mean(0), target.mu, atol=0.15)


def test_dopri5_backwards_stays_inside_too():
    counter = Counter(field)
    sol = solvers.integrate(counter, exact(X0, 1.0), "dopri5", t0=1.0, t1=0.2, rtol=1e-8, atol=1e-8)
    assert torch.allclose(sol.x, exact(X0, 0.2), atol=1e-5)
    ts = torch.tensor(counter.times, dtype=torch.float64)
    assert float(ts.min()) >= 0.2 and float(ts.max()) <= 1.0
