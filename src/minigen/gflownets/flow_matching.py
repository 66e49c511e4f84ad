"""Flow matching on edge flows (Bengio et al., 2021, "Flow network based generative models for
non-iterative diverse candidate generation", eq. 12 in log space).

The network outputs log edge flows log F(s -> s') for the D increments and log F(s -> s_f) for
the stop edge (its D + 1 forward logits); the forward policy is P_F(s'|s) = F(s -> s') /
sum_{s''} F(s -> s''). A flow is consistent when, at every state s other than s_0, what flows in
equals what flows out, and the stop edge carries the reward:

    sum_{p in Par(s)} F(p -> s) = sum_{s'} F(s -> s') + F(s -> s_f),     F(s -> s_f) = R(s).

The loss is the squared log-ratio of the two sides at every visited state (ε = 0 in the paper's
log(ε + .)), plus [log F(s -> s_f) - log R(s)]^2 (the terminal edge of the hypergrid's
every-state-is-terminable DAG, learned here rather than fixed to R).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from minigen.gflownets.hypergrid import Hypergrid
from minigen.gflownets.policy import Trajectories

Tensor = torch.Tensor


class EdgeFlows(NamedTuple):
    """For M visited states: log in-flow (M,) (-inf for s_0), log out-flow incl. the stop edge
    (M,), log stop-edge flow (M,), log R (M,), has_parent (M,) bool."""

    log_inflow: Tensor
    log_outflow: Tensor
    log_stop: Tensor
    log_r: Tensor
    has_parent: Tensor


def edge_flow_terms(model, env: Hypergrid, traj: Trajectories) -> EdgeFlows:
    """Evaluate the edge flows out of every distinct visited state and into it from each of its
    parents (one batched call on the states and one on their D candidate parents)."""
    k = torch.arange(traj.states.shape[1])
    visited = k[None] < (traj.length + (~traj.done).long())[:, None]
    x = traj.states[visited]  # (M, D)
    logits = model(x).logits_pf.masked_fill(~env.forward_mask(x), float("-inf"))
    log_out = logits.logsumexp(1)
    M, D = x.shape
    eye = torch.eye(D, dtype=torch.long)
    parents = (x[:, None, :] - eye[None]).clamp(min=0)  # (M, D, D): parent through coordinate d
    ok = x > 0
    lp = model(parents.reshape(-1, D)).logits_pf.reshape(M, D, D + 1)
    into = lp.diagonal(dim1=1, dim2=2).masked_fill(~ok, float("-inf"))  # F(x - e_d -> x)
    return EdgeFlows(into.logsumexp(1), log_out, logits[:, D], env.log_reward(x), ok.any(1))


def flow_matching(flows: EdgeFlows) -> Tensor:
    """mean over visited s != s_0 of [log sum_p F(p->s) - log sum_s' F(s->s')]^2 plus the mean
    over visited s of [log F(s->s_f) - log R(s)]^2 (Bengio et al., 2021, eq. 12)."""
    h = flows.has_parent
    match = (flows.log_inflow[h] - flows.log_outflow[h]).pow(2)
    term = (flows.log_stop - flows.log_r).pow(2)
    return (match.sum() + term.sum()) / (match.numel() + term.numel())
