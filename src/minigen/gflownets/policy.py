"""Policies on the hypergrid, batched rollouts and the per-step terms every loss reads.

A GFlowNet model maps a batch of states (B, D) to ``Outputs``: forward logits over the D + 1
actions (masked to the valid ones before the softmax), optionally backward logits over the D
parents (a learned P_B; by default P_B is uniform over the parents), and a log state flow
log F(s) (used by detailed and sub-trajectory balance). Trajectory balance's log Z is a separate
scalar parameter, ``model.log_z``. Flow matching reads the forward logits as log edge flows.

``sample_trajectories`` rolls out B trajectories at once, with invalid actions masked, and
``trajectory_terms`` evaluates one model on all of their states in one batched call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from minigen.gflownets.hypergrid import Hypergrid

Tensor = torch.Tensor


class Outputs(NamedTuple):
    """logits_pf (B, D + 1); logits_pb (B, D) or None (uniform P_B); log_flow (B,)."""

    logits_pf: Tensor
    logits_pb: Tensor | None
    log_flow: Tensor


class GFlowNetMLP(nn.Module):
    """MLP on the one-hot state (and an optional condition, e.g. a one-hot outcome), ``depth``
    hidden layers of ``width`` with LeakyReLU (Malkin et al., 2022: 2 x 256). Output heads:
    D + 1 forward logits, D backward logits if ``learn_pb``, one log flow; plus ``log_z``."""

    def __init__(self, env: Hypergrid, width: int = 256, depth: int = 2, learn_pb: bool = False,
                 cond_dim: int = 0):
        super().__init__()
        if width < 1 or depth < 1 or cond_dim < 0:
            raise ValueError(f"need width, depth >= 1 and cond_dim >= 0, got {width}, {depth}, {cond_dim}")
        self.env, self.learn_pb, self.cond_dim = env, learn_pb, cond_dim
        layers, d_in = [], env.dim * env.height + cond_dim
        for _ in range(depth):
            layers += [nn.Linear(d_in, width), nn.LeakyReLU()]
            d_in = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, env.n_actions + (env.dim if learn_pb else 0) + 1)
        self.log_z = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Outputs:
        h = self.env.encode(x)
        if self.cond_dim:
            if cond is None or cond.shape != (x.shape[0], self.cond_dim):
                raise ValueError(f"this model needs cond of shape (B, {self.cond_dim})")
            h = torch.cat([h, cond.float()], 1)
        out = self.head(self.body(h))
        a, d = self.env.n_actions, self.env.dim
        return Outputs(out[:, :a], out[:, a:a + d] if self.learn_pb else None, out[:, -1])


class TabularGFlowNet(nn.Module):
    """A table per state: forward logits (H^D, D + 1) and log flows (H^D,), looked up by flat
    index. With the exact edge flows and state flows of ``exact.uniform_backward_flows`` it is
    the balanced GFlowNet every loss must score zero."""

    def __init__(self, env: Hypergrid, logits_pf: Tensor, log_flow: Tensor, log_z: float = 0.0):
        super().__init__()
        if logits_pf.shape != (env.n_states, env.n_actions) or log_flow.shape != (env.n_states,):
            raise ValueError("tables must have shapes (H^D, D + 1) and (H^D,)")
        self.env = env
        self.logits_pf = nn.Parameter(logits_pf.clone().float())
        self.log_flow = nn.Parameter(log_flow.clone().float())
        self.log_z = nn.Parameter(torch.tensor(float(log_z)))

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Outputs:
        i = self.env.index(x)
        return Outputs(self.logits_pf[i], None, self.log_flow[i])


def masked_log_softmax(logits: Tensor, mask: Tensor) -> Tensor:
    """log softmax over the allowed entries; exactly -inf where ``mask`` is False."""
    return torch.log_softmax(logits.masked_fill(~mask, float("-inf")), -1)


@dataclass
class Trajectories:
    """B rollouts padded to T actions. states (B, T + 1, D): s_0 .. s_T, the last state repeated
    after the stop; actions (B, T): in 0..D (D = stop), -1 after the end; length (B,): actions
    taken; done (B,): whether the last action was the stop (False: an incomplete trajectory).
    terminal: (B, D), the last state (the sampled object where done)."""

    states: Tensor
    actions: Tensor
    length: Tensor
    done: Tensor

    @property
    def terminal(self) -> Tensor:
        return self.states[torch.arange(len(self.length)), self.length]


@torch.no_grad()
def sample_trajectories(model, env: Hypergrid, n: int, generator: torch.Generator | None = None,
                        epsilon: float = 0.0, max_len: int | None = None,
                        cond: Tensor | None = None) -> Trajectories:
    """Roll out n trajectories from s_0 with the model's forward policy, mixed with the uniform
    policy over the valid actions with weight ``epsilon`` (exploration). Invalid actions get
    probability exactly 0. Stops after ``max_len`` actions (default: the longest trajectory),
    leaving the unfinished ones with done = False."""
    if n < 1 or not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"need n >= 1 and 0 <= epsilon <= 1, got {n}, {epsilon}")
    T = env.max_len if max_len is None else int(max_len)
    if not 1 <= T <= env.max_len:
        raise ValueError(f"max_len must be in [1, {env.max_len}], got {max_len}")
    x = torch.zeros(n, env.dim, dtype=torch.long)
    states, actions = [x], []
    alive = torch.ones(n, dtype=torch.bool)
    length = torch.zeros(n, dtype=torch.long)
    for _ in range(T):
        mask = env.forward_mask(x)
        p = masked_log_softmax(model(x, cond).logits_pf, mask).exp()
        if epsilon > 0:
            p = (1 - epsilon) * p + epsilon * mask / mask.sum(1, keepdim=True)
        a = torch.multinomial(p, 1, generator=generator).squeeze(1)
        a = torch.where(alive, a, torch.full_like(a, -1))
        inc = alive & (a < env.dim)
        x = x.clone()
        x[inc, a[inc]] += 1
        length += alive.long()
        alive = alive & (a != env.dim)
        states.append(x)
        actions.append(a)
        if not alive.any():
            break
    done = ~alive
    states, actions = torch.stack(states, 1), torch.stack(actions, 1)
    pad = T - actions.shape[1]
    if pad:
        states = torch.cat([states, states[:, -1:].expand(-1, pad, -1)], 1)
        actions = torch.cat([actions, torch.full((n, pad), -1)], 1)
    return Trajectories(states, actions, length, done)


class Terms(NamedTuple):
    """What the losses read, for B trajectories of T steps (T + 1 states):
    log_pf (B, T): log P_F(a_t | s_t) (0 on padding); log_pb (B, T): log P_B(s_t | s_{t+1})
    (0 for the stop and padding); log_flow (B, T + 1): log F(s_t); log_pf_stop (B, T + 1):
    log P_F(stop | s_t); log_r (B, T + 1): log R(s_t); step (B, T): real steps; stop (B, T): the
    step is the stop action; visited (B, T + 1): distinct visited states; length, done (B,)."""

    log_pf: Tensor
    log_pb: Tensor
    log_flow: Tensor
    log_pf_stop: Tensor
    log_r: Tensor
    step: Tensor
    stop: Tensor
    visited: Tensor
    length: Tensor
    done: Tensor


def trajectory_terms(model, env: Hypergrid, traj: Trajectories, cond: Tensor | None = None) -> Terms:
    """Evaluate ``model`` on every state of ``traj`` at once (gradients flow) and gather the
    per-step log-probabilities, flows and rewards. ``cond``: (B, c) repeated along the steps.
    P_B is uniform over the parents unless the model returns backward logits."""
    B, T1, D = traj.states.shape
    flat = traj.states.reshape(-1, D)
    c = None if cond is None else cond.repeat_interleave(T1, 0)
    out = model(flat, c)
    log_pf_all = masked_log_softmax(out.logits_pf, env.forward_mask(flat)).reshape(B, T1, D + 1)
    a = traj.actions
    step = a >= 0
    stop = a == D
    a0 = a.clamp(min=0)
    log_pf = log_pf_all[:, :-1].gather(2, a0.unsqueeze(2)).squeeze(2)
    nxt = traj.states[:, 1:]
    inc = step & ~stop
    if out.logits_pb is None:
        log_pb = -env.n_parents(nxt).clamp(min=1).float().log()
    else:
        lpb = masked_log_softmax(out.logits_pb, env.backward_mask(flat)).reshape(B, T1, D)[:, 1:]
        log_pb = lpb.gather(2, a0.clamp(max=D - 1).unsqueeze(2)).squeeze(2)
    zero = torch.zeros_like(log_pf)
    log_pf = torch.where(step, log_pf, zero)
    log_pb = torch.where(inc, log_pb, zero)
    t = torch.arange(T1)
    visited = t[None] < (traj.length + (~traj.done).long())[:, None]
    return Terms(log_pf, log_pb, out.log_flow.reshape(B, T1), log_pf_all[..., D],
                 env.log_reward(traj.states), step, stop, visited, traj.length, traj.done)


def policy_table(model, env: Hypergrid, cond: Tensor | None = None) -> Tensor:
    """log P_F(a | s) for every state (H^D, D + 1), the input of ``exact.terminal_distribution``."""
    x = env.all_states()
    with torch.no_grad():
        c = None if cond is None else cond.expand(len(x), -1)
        return masked_log_softmax(model(x, c).logits_pf, env.forward_mask(x))
