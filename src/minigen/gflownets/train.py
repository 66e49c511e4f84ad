"""Training a GFlowNet on-policy: roll out a batch with the current forward policy (plus
epsilon-uniform exploration), evaluate one loss on it, take an Adam step; every ``eval_every``
steps record the exact L1 distance of the policy's terminal distribution to R/Z and the modes
found so far. (A rollout needs the model itself, so this is its own small loop rather than
``minigen.train``, whose batches do not depend on the model.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from minigen.gflownets.balance import (
    detailed_balance,
    forward_looking_db,
    subtrajectory_balance,
    trajectory_balance,
    truncate,
)
from minigen.gflownets.exact import l1_distance, target_distribution, terminal_distribution
from minigen.gflownets.flow_matching import edge_flow_terms, flow_matching
from minigen.gflownets.hypergrid import Hypergrid
from minigen.gflownets.policy import Trajectories, policy_table, sample_trajectories, trajectory_terms

LOSSES = ("fm", "db", "tb", "subtb", "fldb", "fldb_incomplete")


def gflownet_loss(kind: str, model, env: Hypergrid, traj: Trajectories, lam: float = 0.9,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """The loss ``kind`` of ``LOSSES`` on a batch of trajectories. ``fldb_incomplete`` first
    truncates every trajectory before its stop (``balance.truncate``): it never sees a terminal."""
    if kind == "fm":
        return flow_matching(edge_flow_terms(model, env, traj))
    if kind == "fldb_incomplete":
        return forward_looking_db(trajectory_terms(model, env, truncate(traj, generator)))
    terms = trajectory_terms(model, env, traj)
    if kind == "tb":
        return trajectory_balance(terms, model.log_z)
    if kind == "db":
        return detailed_balance(terms)
    if kind == "subtb":
        return subtrajectory_balance(terms, lam)
    if kind == "fldb":
        return forward_looking_db(terms)
    raise ValueError(f"unknown loss {kind!r}; choose from {LOSSES}")


def exact_l1(model, env: Hypergrid, target: torch.Tensor | None = None) -> float:
    """sum_x |P_T(x) - R(x)/Z| of the model's forward policy, by dynamic programming."""
    target = target_distribution(env) if target is None else target
    return l1_distance(terminal_distribution(policy_table(model, env), env), target)


@dataclass
class GFlowNetRun:
    """steps (K,) at which l1 (K,) (exact, policy vs target) and modes (K,) (found so far) were
    taken; log_z (K,) the learned log Z (trajectory balance); loss every step; wall_s."""

    steps: list = field(default_factory=list)
    l1: list = field(default_factory=list)
    modes: list = field(default_factory=list)
    log_z: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    wall_s: float = 0.0


def train_gflownet(model, env: Hypergrid, kind: str, steps: int, batch: int = 16, lr: float = 1e-3,
                   lr_log_z: float = 0.1, epsilon: float = 0.0, lam: float = 0.9, seed: int = 0,
                   eval_every: int = 0, cosine: bool = True) -> GFlowNetRun:
    """Adam on ``gflownet_loss(kind)``, the network at ``lr`` and log Z at ``lr_log_z`` (Malkin
    et al., 2022 use 1e-3 and 1e-1), a cosine decay of both to 0 when ``cosine``. Returns the
    curves; the model is trained in place."""
    if kind not in LOSSES:
        raise ValueError(f"unknown loss {kind!r}; choose from {LOSSES}")
    if steps < 1 or batch < 1 or not lr > 0:
        raise ValueError(f"need steps >= 1, batch >= 1 and lr > 0, got {steps}, {batch}, {lr}")
    g = torch.Generator().manual_seed(seed)
    body = [p for n, p in model.named_parameters() if n != "log_z"]
    opt = torch.optim.Adam([{"params": body, "lr": lr}, {"params": [model.log_z], "lr": lr_log_z}])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda n: 0.5 * (1 + torch.cos(torch.tensor(torch.pi * n / steps)).item()) if cosine else 1.0)
    target = target_distribution(env)
    seen, run, t0 = set(), GFlowNetRun(), time.perf_counter()
    for n in range(1, steps + 1):
        traj = sample_trajectories(model, env, batch, g, epsilon=epsilon)
        ids = env.mode_id(traj.terminal)
        seen.update(ids[ids >= 0].tolist())
        loss = gflownet_loss(kind, model, env, traj, lam=lam, generator=g)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{kind}: non-finite loss at step {n}")
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        run.loss.append(float(loss.detach()))
        if (eval_every and n % eval_every == 0) or n == steps:
            run.steps.append(n)
            run.l1.append(exact_l1(model, env, target))
            run.modes.append(len(seen))
            run.log_z.append(float(model.log_z.detach()))
    run.wall_s = time.perf_counter() - t0
    return run


@torch.no_grad()
def empirical_l1(model, env: Hypergrid, n: int, generator: torch.Generator | None = None,
                 chunk: int = 20000) -> float:
    """sum_x |p_hat(x) - R(x)/Z| for the histogram p_hat of n terminal states sampled by rolling
    out the model's forward policy (in chunks of ``chunk`` trajectories); compare with
    ``exact.sampling_floor(target, n)``."""
    from minigen.gflownets.exact import empirical_distribution

    idx = []
    for start in range(0, n, chunk):
        traj = sample_trajectories(model, env, min(chunk, n - start), generator)
        idx.append(env.index(traj.terminal))
    return l1_distance(empirical_distribution(torch.cat(idx), env.n_states), target_distribution(env))


def log_z_estimate(model, env: Hypergrid, kind: str) -> float:
    """The model's log Z: the learned scalar for trajectory balance, log F(s_0) for the losses
    with a state flow (DB, SubTB), log F~(s_0) + log R(s_0) for the forward-looking ones, and
    for flow matching the log out-flow of s_0."""
    x0 = torch.zeros(1, env.dim, dtype=torch.long)
    with torch.no_grad():
        out = model(x0)
        if kind == "tb":
            return float(model.log_z)
        if kind in ("db", "subtb"):
            return float(out.log_flow[0])
        if kind in ("fldb", "fldb_incomplete"):
            return float(out.log_flow[0] + env.log_reward(x0)[0])
        if kind == "fm":
            return float(out.logits_pf.masked_fill(~env.forward_mask(x0), float("-inf")).logsumexp(1)[0])
    raise ValueError(f"unknown loss {kind!r}; choose from {LOSSES}")
