"""Balance losses on trajectories: detailed balance, trajectory balance, sub-trajectory balance
and the forward-looking reparametrisation (one residual, three ways of summing it).

Along a trajectory s_0 -> s_1 -> ... -> s_n -> s_f write u_k = log F(s_k) for the states and
u_{n+1} = log R(s_n) for the stop (the flow into the sink through s_n), and
c_k = sum_{t < k} [log P_F(s_{t+1} | s_t) - log P_B(s_t | s_{t+1})] (log P_B = 0 for the stop).
A flow is balanced on the piece s_j .. s_k when

    u_j + c_k - c_j - u_k = 0        (F(s_j) prod P_F = F(s_k) prod P_B).

* detailed balance (Bengio et al., 2023, "GFlowNet foundations", Def. 14): every edge, k = j + 1;
* trajectory balance (Malkin et al., 2022, "Trajectory balance", eq. 14): the whole
  trajectory, j = 0, k = n + 1, with u_0 = log Z a learned scalar;
* sub-trajectory balance (Madan et al., 2023, "Learning GFlowNets from partial episodes",
  eq. 9): every pair j < k, weighted by lambda^(k - j);
* forward-looking (Pan et al., 2023, "Better training of GFlowNets with local credit and
  incomplete trajectories", eq. 7): with an energy E(s) = -log R(s) known at every state, learn
  log F~(s) = log F(s) + E(s) instead of log F(s); then an edge's residual carries the reward
  difference log R(s') - log R(s) (local credit) and the stop edge's residual
  log F~(s) + log P_F(stop | s) needs no reward, so incomplete trajectories train too.

Each loss takes ``policy.Terms`` and returns the mean squared residual.
"""

from __future__ import annotations

import torch

from minigen.gflownets.policy import Terms, Trajectories

Tensor = torch.Tensor


def flow_sequence(terms: Terms) -> Tensor:
    """u (B, T + 1): log F(s_k), except u_{n+1} = log R(s_n) after a stop (k = length, done)."""
    k = torch.arange(terms.log_flow.shape[1])
    end = (k[None] == terms.length[:, None]) & terms.done[:, None]
    return torch.where(end, terms.log_r, terms.log_flow)


def detailed_balance(terms: Terms, all_stop_edges: bool = False) -> Tensor:
    """mean over edges of [log F(s) + log P_F(s'|s) - log F(s') - log P_B(s|s')]^2, with the
    stop edge's log F(s_f-side) = log R(s) (Bengio et al., 2023, "GFlowNet foundations",
    Def. 14). ``all_stop_edges``: add the stop edge of every visited state, taken or not
    (every hypergrid state is terminable, so F(s) P_F(stop|s) = R(s) holds at each)."""
    u = flow_sequence(terms)
    res = u[:, :-1] + terms.log_pf - terms.log_pb - u[:, 1:]
    parts = [res[terms.step]]
    if all_stop_edges:
        stop_res = terms.log_flow + terms.log_pf_stop - terms.log_r
        parts = [res[terms.step & ~terms.stop], stop_res[terms.visited]]
    return torch.cat(parts).pow(2).mean()


def trajectory_balance(terms: Terms, log_z: Tensor) -> Tensor:
    """mean over trajectories of [log Z + sum_t log P_F(s_{t+1}|s_t) - log R(x)
    - sum_t log P_B(s_t|s_{t+1})]^2 (Malkin et al., 2022, "Trajectory balance", eq. 14).
    Needs complete trajectories."""
    if not bool(terms.done.all()):
        raise ValueError("trajectory balance needs complete trajectories (all done)")
    log_rx = terms.log_r.gather(1, terms.length[:, None]).squeeze(1)
    res = log_z + terms.log_pf.sum(1) - terms.log_pb.sum(1) - log_rx
    return res.pow(2).mean()


def subtrajectory_balance(terms: Terms, lam: float = 0.9) -> Tensor:
    """mean over trajectories of sum_{j<k} lam^(k-j) [u_j + c_k - c_j - u_k]^2 / sum_{j<k}
    lam^(k-j), all pairs 0 <= j < k <= length (Madan et al., 2023, "Learning GFlowNets from
    partial episodes for improved convergence and stability", eq. 9). lam -> 0 weights the
    single edges (detailed balance), large lam the long pieces (towards trajectory balance)."""
    if not lam > 0:
        raise ValueError(f"lam must be > 0, got {lam}")
    u = flow_sequence(terms)
    c = torch.nn.functional.pad((terms.log_pf - terms.log_pb).cumsum(1), (1, 0))
    res = (u[:, :, None] - c[:, :, None]) - (u[:, None, :] - c[:, None, :])  # [b, j, k]
    k = torch.arange(u.shape[1])
    gap = (k[None, :] - k[:, None]).float()
    ok = (gap[None] > 0) & (k[None, None, :] <= terms.length[:, None, None])
    w = torch.where(ok, lam ** gap[None], torch.zeros(()))
    return ((w * res.pow(2)).sum((1, 2)) / w.sum((1, 2))).mean()


def forward_looking(terms: Terms) -> Terms:
    """The forward-looking flow: the model's log-flow output is read as log F~(s) and
    log F(s) = log F~(s) - E(s) = log F~(s) + log R(s) (Pan et al., 2023, "Better training of
    GFlowNets with local credit and incomplete trajectories", sec. 4.1)."""
    return terms._replace(log_flow=terms.log_flow + terms.log_r)


def forward_looking_db(terms: Terms) -> Tensor:
    """FL-DB: detailed balance on the forward-looking flow, stop edges of every visited state,
    i.e. mean of [log F~(s) + log P_F(s'|s) - log F~(s') - log P_B(s|s') + log R(s) - log R(s')]^2
    over edges and [log F~(s) + log P_F(stop|s)]^2 over states (Pan et al., 2023, eq. 7).
    Works on incomplete trajectories (``truncate``)."""
    return detailed_balance(forward_looking(terms), all_stop_edges=True)


def truncate(traj: Trajectories, generator: torch.Generator | None = None) -> Trajectories:
    """Incomplete trajectories: keep each one's first k actions, k uniform in {0 .. n}, n the
    number of increments (so the stop, and with it the terminal reward, is never kept)."""
    n_inc = traj.length - traj.done.long()
    k = (torch.rand(len(n_inc), generator=generator) * (n_inc + 1)).long().clamp(max=n_inc)
    t = torch.arange(traj.actions.shape[1])
    actions = torch.where(t[None] < k[:, None], traj.actions, torch.full_like(traj.actions, -1))
    ts = torch.minimum(torch.arange(traj.states.shape[1])[None], k[:, None])
    states = traj.states.gather(1, ts[:, :, None].expand_as(traj.states))
    return Trajectories(states, actions, k, torch.zeros_like(traj.done))
