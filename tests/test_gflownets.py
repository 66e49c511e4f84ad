"""GFlowNets (chapter 15): the hypergrid against hand counts, enumeration and dynamic
programming; every balance loss zero on the exact flows and positive off them; masks; the
sampling floor; outcome marginalisation and the order-preserving loss; bad inputs."""

from __future__ import annotations

import math

import pytest
import torch

from minigen.gflownets.balance import (
    detailed_balance,
    forward_looking,
    forward_looking_db,
    subtrajectory_balance,
    trajectory_balance,
    truncate,
)
from minigen.gflownets.exact import (
    empirical_distribution,
    l1_distance,
    log_partition,
    sampling_floor,
    target_distribution,
    terminal_distribution,
    uniform_backward_flows,
)
from minigen.gflownets.flow_matching import edge_flow_terms, flow_matching
from minigen.gflownets.hypergrid import Hypergrid
from minigen.gflownets.order import order_preserving_loss, preference
from minigen.gflownets.outcome import exact_conditional_tables, marginal_policy
from minigen.gflownets.policy import (
    GFlowNetMLP,
    TabularGFlowNet,
    policy_table,
    sample_trajectories,
    trajectory_terms,
)
from minigen.gflownets.train import gflownet_loss, train_gflownet


def num(t):
    return float(t.detach())


def exact_model(env, forward_looking_flow=False):
    """The balanced GFlowNet of the uniform backward policy as a table (log Z exact)."""
    log_flow, log_edge = uniform_backward_flows(env)
    if forward_looking_flow:
        log_flow = log_flow - env.log_reward(env.all_states()).double()
    return TabularGFlowNet(env, log_edge.nan_to_num(neginf=-1e4), log_flow, log_partition(env))


def test_reward_and_partition_by_hand():
    # H = 2: u_d = 0.5 at both coordinates, so every state is in the outer band (u <= 0.5) and
    # none in the inner one (0.3 < u < 0.4): R = r0 + 0.5 everywhere
    env = Hypergrid(2, 2, r0=0.1)
    assert torch.allclose(env.reward(env.all_states()), torch.full((4,), 0.6, dtype=torch.float64))
    assert log_partition(env) == pytest.approx(math.log(2.4))
    # 2D, H = 8 counted by hand: 64 x r0 + 16 outer (x_d in {0, 1, 6, 7}) x 0.5 + 4 inner
    # (x_d in {1, 6}) x 2
    for r0 in (0.1, 0.01, 0.001):
        env = Hypergrid(2, 8, r0=r0)
        assert log_partition(env) == pytest.approx(math.log(64 * r0 + 8 + 8), rel=1e-12)
    env = Hypergrid(2, 8)
    assert float(env.reward(torch.tensor([[1, 6]]))) == pytest.approx(2.6)
    assert float(env.reward(torch.tensor([[0, 7]]))) == pytest.approx(0.6)
    assert float(env.reward(torch.tensor([[3, 4]]))) == pytest.approx(0.1)
    assert env.n_modes() == 4 and Hypergrid(4, 8).n_modes() == 16
    p = target_distribution(env)
    assert float(p.sum()) == pytest.approx(1.0) and bool((p > 0).all())


def test_index_and_all_states_agree():
    env = Hypergrid(3, 4)
    x = env.all_states()
    assert x.shape == (64, 3)
    assert torch.equal(env.index(x), torch.arange(64))
    for d in range(3):
        ok = x[:, d] < 3
        y = x[ok].clone()
        y[:, d] += 1
        assert torch.equal(env.index(y), env.index(x[ok]) + env.stride(d))


@pytest.mark.parametrize("dim,height", [(2, 8), (3, 4), (4, 3)])
def test_uniform_backward_flows_conserve_and_give_z(dim, height):
    env = Hypergrid(dim, height)
    log_flow, log_edge = uniform_backward_flows(env)
    flow, edge = log_flow.exp(), log_edge.exp()
    assert float(flow[0]) == pytest.approx(math.exp(log_partition(env)), rel=1e-12)
    # out-flow = F(s); in-flow = F(s) for s != s_0; the stop edge carries R
    assert torch.allclose(edge.sum(1), flow, rtol=1e-12)
    x = env.all_states()
    inflow = torch.zeros_like(flow)
    for d in range(dim):
        ok = x[:, d] < height - 1
        inflow.index_add_(0, env.index(x[ok]) + env.stride(d), edge[ok, d])
    assert torch.allclose(inflow[1:], flow[1:], rtol=1e-12)
    assert torch.allclose(edge[:, dim], env.reward(x), rtol=1e-12)
    # the balanced policy samples R / Z exactly
    log_pf = log_edge - log_flow[:, None]
    assert l1_distance(terminal_distribution(log_pf, env), target_distribution(env)) < 1e-12


def test_every_loss_is_zero_on_the_exact_flows_and_positive_off_them():
    env = Hypergrid(3, 5)
    g = torch.Generator().manual_seed(0)
    model = exact_model(env)
    fl_model = exact_model(env, forward_looking_flow=True)
    traj = sample_trajectories(model, env, 128, g)
    assert bool(traj.done.all())
    terms = trajectory_terms(model, env, traj)
    losses = {
        "fm": lambda m: flow_matching(edge_flow_terms(m, env, traj)),
        "db": lambda m: detailed_balance(trajectory_terms(m, env, traj)),
        "db_all_stops": lambda m: detailed_balance(trajectory_terms(m, env, traj), all_stop_edges=True),
        "tb": lambda m: trajectory_balance(trajectory_terms(m, env, traj), m.log_z),
        "subtb": lambda m: subtrajectory_balance(trajectory_terms(m, env, traj), 0.9),
        "subtb_lam1": lambda m: subtrajectory_balance(trajectory_terms(m, env, traj), 1.0),
    }
    for name, f in losses.items():
        assert num(f(model)) < 1e-8, name
    fl = lambda m: forward_looking_db(trajectory_terms(m, env, traj))  # noqa: E731
    fl_incomplete = lambda m: forward_looking_db(trajectory_terms(m, env, truncate(traj, g)))  # noqa: E731
    assert num(fl(fl_model)) < 1e-8 and num(fl_incomplete(fl_model)) < 1e-8
    assert num(fl(model)) > 1e-2  # FL reads the flow output as F~ = F / R: the plain F is wrong
    # perturb the flows (DB, SubTB, FL) or the edge logits (FM, TB, and all through P_F)
    noisy = exact_model(env)
    with torch.no_grad():
        noisy.log_flow += 0.3 * torch.randn(noisy.log_flow.shape, generator=g)
    for name in ("db", "db_all_stops", "subtb", "subtb_lam1"):
        assert num(losses[name](noisy)) > 1e-3, name
    with torch.no_grad():
        fl_model.log_flow += 0.3 * torch.randn(fl_model.log_flow.shape, generator=g)
    assert num(fl(fl_model)) > 1e-3 and num(fl_incomplete(fl_model)) > 1e-3
    noisy = exact_model(env)
    with torch.no_grad():
        noisy.logits_pf += 0.3 * torch.randn(noisy.logits_pf.shape, generator=g)
    for name in losses:
        assert num(losses[name](noisy)) > 1e-3, name
    wrong_z = exact_model(env)
    with torch.no_grad():
        wrong_z.log_z += 0.1
    assert num(losses["tb"](wrong_z)) == pytest.approx(0.01, rel=1e-3)
    # the exact log Z is F(s_0) of the exact flows
    assert num(terms.log_flow[0, 0]) == pytest.approx(log_partition(env), rel=1e-6)


def test_dispatcher_runs_every_loss_and_rejects_unknown():
    env = Hypergrid(2, 4)
    model = GFlowNetMLP(env, width=16, learn_pb=True)
    g = torch.Generator().manual_seed(0)
    traj = sample_trajectories(model, env, 8, g)
    for kind in ("fm", "db", "tb", "subtb", "fldb", "fldb_incomplete"):
        loss = gflownet_loss(kind, model, env, traj, generator=g)
        loss.backward()
        assert torch.isfinite(loss) and loss > 0
    with pytest.raises(ValueError, match="unknown loss"):
        gflownet_loss("xx", model, env, traj)
    with pytest.raises(ValueError, match="complete"):
        trajectory_balance(trajectory_terms(model, env, truncate(traj, g)), model.log_z)


def test_masks_never_allow_invalid_actions():
    env = Hypergrid(3, 3)
    g = torch.Generator().manual_seed(1)
    model = GFlowNetMLP(env, width=16)
    with torch.no_grad():  # a policy that wants to increment coordinate 0 forever
        model.head.bias[0] = 50.0
    for eps in (0.0, 0.5, 1.0):
        traj = sample_trajectories(model, env, 256, g, epsilon=eps)
        assert int(traj.states.max()) <= env.height - 1 and int(traj.states.min()) >= 0
        assert bool(traj.done.all())
        steps = traj.states[:, 1:] - traj.states[:, :-1]
        assert bool((steps.sum(-1) <= 1).all()) and bool((steps >= 0).all())
    table = policy_table(model, env).exp()
    mask = env.forward_mask(env.all_states())
    assert float(table[~mask].abs().max()) == 0.0
    assert torch.allclose(table.sum(1), torch.ones(env.n_states))
    assert not bool(env.backward_mask(torch.zeros(1, 3, dtype=torch.long)).any())
    short = sample_trajectories(model, env, 16, g, max_len=2)
    assert not bool(short.done.any()) and int(short.length.max()) == 2


def test_sampling_floor_is_positive_and_shrinks_like_one_over_root_n():
    env = Hypergrid(2, 8)
    p = target_distribution(env)
    g = torch.Generator().manual_seed(0)
    f1, f2 = sampling_floor(p, 1000, 8, g), sampling_floor(p, 16000, 8, g)
    assert f1 > 0 and f2 > 0
    assert 2.5 < f1 / f2 < 6  # sqrt(16) = 4
    idx = torch.multinomial(p, 5000, replacement=True, generator=g)
    q = empirical_distribution(idx, p.numel())
    assert float(q.sum()) == pytest.approx(1.0) and 0 < l1_distance(q, p) < 2


def test_exact_outcome_marginal_is_the_target():
    # mixing the exact outcome-conditioned policies with weights R(y) F(s | y) samples R / Z
    for r0 in (0.1, 0.001):
        env = Hypergrid(2, 5, r0=r0)
        log_flow, log_pf = exact_conditional_tables(env)
        assert torch.allclose(log_flow[0], torch.zeros(env.n_states, dtype=torch.float64))  # F(s0|y)=1
        table = marginal_policy(log_flow, log_pf, env.reward(env.all_states()).log(), env)
        assert l1_distance(terminal_distribution(table, env), target_distribution(env)) < 1e-10


def test_order_preserving_loss_and_oracle():
    env = Hypergrid(2, 8)
    x, y = torch.tensor([[1, 6], [3, 3], [0, 0]]), torch.tensor([[3, 3], [1, 1], [7, 7]])
    assert torch.equal(preference(env, x, y), torch.tensor([1.0, 0.0, 0.5]))
    a = torch.tensor([2.0, 0.0, 1.0], requires_grad=True)
    b = torch.tensor([0.0, 0.0, 1.0])
    loss = order_preserving_loss(a, b, preference(env, x, y))
    loss.backward()
    # the better one is pushed up, the worse one down, a tie towards equality (here: at rest)
    assert a.grad[0] < 0 and a.grad[1] > 0 and a.grad[2] == 0
    big = order_preserving_loss(torch.tensor([20.0]), torch.tensor([0.0]), torch.tensor([1.0]))
    assert float(big) < 1e-8


def test_forward_looking_is_a_reparametrisation():
    env = Hypergrid(2, 4)
    m = GFlowNetMLP(env, width=8)
    traj = sample_trajectories(m, env, 4, torch.Generator().manual_seed(0))
    t = trajectory_terms(m, env, traj)
    assert torch.allclose(forward_looking(t).log_flow, t.log_flow + t.log_r)


def test_short_training_learns_the_2d_grid():
    env = Hypergrid(2, 4)
    torch.manual_seed(0)
    model = GFlowNetMLP(env, width=64)
    start = l1_distance(terminal_distribution(policy_table(model, env), env), target_distribution(env))
    run = train_gflownet(model, env, "tb", steps=300, batch=16, seed=0)
    assert run.l1[-1] < 0.5 * start
    assert abs(run.log_z[-1] - log_partition(env)) < 0.1


@pytest.mark.parametrize("kwargs,match", [
    (dict(height=1), "height"), (dict(r0=0.0), "r0"), (dict(r0=-1.0), "r0"),
    (dict(dim=0), "dim"), (dict(r0=float("nan")), "r0"), (dict(r1=-1.0), "r1"),
])
def test_bad_environments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Hypergrid(**kwargs)


def test_bad_inputs_are_rejected():
    env = Hypergrid(2, 4)
    with pytest.raises(ValueError, match="shape"):
        env.check(torch.zeros(3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="integers"):
        env.check(torch.full((2, 2), 4))
    model = GFlowNetMLP(env, width=8)
    with pytest.raises(ValueError, match="epsilon"):
        sample_trajectories(model, env, 4, epsilon=1.5)
    with pytest.raises(ValueError, match="max_len"):
        sample_trajectories(model, env, 4, max_len=99)
    with pytest.raises(ValueError, match="lam"):
        subtrajectory_balance(trajectory_terms(model, env, sample_trajectories(model, env, 2)), 0.0)
    with pytest.raises(ValueError, match="shape"):
        terminal_distribution(torch.zeros(3, 3), env)
    with pytest.raises(ValueError, match="n >= 1"):
        sampling_floor(target_distribution(env), 0)
    with pytest.raises(ValueError, match="cond"):
        GFlowNetMLP(env, width=8, cond_dim=8)(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="steps"):
        train_gflownet(model, env, "tb", steps=0)
