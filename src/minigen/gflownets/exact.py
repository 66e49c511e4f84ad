"""What enumeration gives exactly on a hypergrid: the target R(x)/Z, log Z, the flows of the
uniform backward policy, the terminal distribution of any forward policy, and the sampling
floor of the L1 distance.

A GFlowNet with forward policy P_F samples x with probability P_T(x) = sum over trajectories
ending in x of prod P_F; trained to balance it matches P_T(x) = R(x) / Z with
Z = sum_x R(x) (Bengio et al., 2023, "GFlowNet foundations", Prop. 9). On a hypergrid both sides
are sums over H^D states, so every figure of chapter 15 is measured against the exact answer.
"""

from __future__ import annotations

import torch

from minigen.gflownets.hypergrid import Hypergrid

Tensor = torch.Tensor


def target_distribution(env: Hypergrid) -> Tensor:
    """p(x) = R(x) / Z over ``env.all_states()``: (H^D,), float64."""
    r = env.reward(env.all_states())
    return r / r.sum()


def log_partition(env: Hypergrid) -> float:
    """log Z = log sum_x R(x), by enumeration of all H^D states."""
    return float(env.reward(env.all_states()).sum().log())


def levels(env: Hypergrid) -> list[Tensor]:
    """The flat indices of the states with sum_d x_d = L, for L = 0 .. D (H - 1): the DAG's
    topological order (every action moves a state one level up)."""
    lev = env.all_states().sum(1)
    return [torch.nonzero(lev == k).squeeze(1) for k in range(env.max_len)]


def uniform_backward_flows(env: Hypergrid, reward: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The unique flows of the uniform backward policy P_B(x - e_d | x) = 1 / #parents(x):

        F(s -> s_f) = R(s),   F(s -> s') = F(s') P_B(s | s'),   F(s) = R(s) + sum_{s'} F(s -> s'),

    computed from the top level down (Bengio et al., 2023, "GFlowNet foundations", sec. 3:
    a backward policy and R determine the flow). Returns log F(s) (H^D,) and the log edge
    flows (H^D, D + 1), action D being the stop edge, -inf where an action is invalid;
    F(s_0) = Z. ``reward``: (H^D,) R(x) >= 0 in ``all_states`` order, default ``env.reward``
    (a zero reward gives log F = -inf where no rewarded state is reachable). float64."""
    states, n = env.all_states(), env.n_states
    reward = env.reward(states) if reward is None else reward.double()
    if reward.shape != (n,) or bool((reward < 0).any()):
        raise ValueError(f"reward must be (H^D,) = ({n},) and >= 0")
    n_par = env.n_parents(states).clamp(min=1).double()
    flow = torch.zeros(n, dtype=torch.float64)
    edge = torch.zeros(n, env.n_actions, dtype=torch.float64)
    edge[:, env.dim] = reward
    for idx in reversed(levels(env)):
        x = states[idx]
        for d in range(env.dim):
            ok = x[:, d] < env.height - 1
            child = idx[ok] + env.stride(d)
            edge[idx[ok], d] = flow[child] / n_par[child]
        flow[idx] = edge[idx].sum(1)
    return flow.log(), edge.log()


def terminal_distribution(log_pf: Tensor, env: Hypergrid) -> Tensor:
    """P_T(x) = P(reach x) P_F(stop | x), by forward dynamic programming over the levels:
    P(reach s_0) = 1, P(reach s + e_d) += P(reach s) P_F(d | s). ``log_pf``: (H^D, D + 1) log
    forward probabilities of every state in ``all_states`` order (invalid actions -inf).
    Returns (H^D,) float64, summing to 1."""
    if log_pf.shape != (env.n_states, env.n_actions):
        raise ValueError(f"log_pf must have shape {(env.n_states, env.n_actions)}, "
                         f"got {tuple(log_pf.shape)}")
    pf = log_pf.double().exp()
    states = env.all_states()
    reach = torch.zeros(env.n_states, dtype=torch.float64)
    reach[0] = 1.0
    for idx in levels(env):
        x = states[idx]
        for d in range(env.dim):
            ok = x[:, d] < env.height - 1
            reach.index_add_(0, idx[ok] + env.stride(d), reach[idx[ok]] * pf[idx[ok], d])
    return reach * pf[:, env.dim]


def l1_distance(p: Tensor, q: Tensor) -> float:
    """sum_x |p(x) - q(x)| (summed over states, = 2 x total variation; in [0, 2])."""
    return float((p.double() - q.double()).abs().sum())


def empirical_distribution(index: Tensor, n_states: int) -> Tensor:
    """The histogram of flat state indices (N,) as a distribution over n_states, float64."""
    return torch.bincount(index, minlength=n_states).double() / index.numel()


def sampling_floor(p: Tensor, n: int, draws: int = 5, generator: torch.Generator | None = None) -> float:
    """The L1 distance that exact sampling reaches with n samples: the mean over ``draws`` of
    sum_x |p_hat(x) - p(x)|, p_hat the histogram of n draws from p itself. A learned sampler's
    empirical L1 at the same n cannot be expected below it (it scales like n^(-1/2))."""
    if n < 1 or draws < 1:
        raise ValueError(f"need n >= 1 and draws >= 1, got {n}, {draws}")
    out = []
    for _ in range(draws):
        idx = torch.multinomial(p.double(), n, replacement=True, generator=generator)
        out.append(l1_distance(empirical_distribution(idx, p.numel()), p))
    return sum(out) / draws
