"""Order-preserving GFlowNets: learn from comparisons of candidates only (Chen & Mauch, 2023,
"Order-preserving GFlowNets", OP-GFN).

No reward is given, only an oracle that says which of two terminal states is better (here: the
order of the hypergrid's R, ties included). A learned log-reward log R^(x) is fitted to the
order with the pairwise order-preserving loss — the cross-entropy between the oracle's
preference and the softmax of the learned rewards over the pair (Chen & Mauch, eq. 4):

    L_OP(x, x') = -[ 1(x > x') log sigma(Δ) + 1(x' > x) log sigma(-Δ) ],  Δ = log R^(x) - log R^(x'),

with both indicators 1/2 on a tie, on pairs sampled by the current GFlowNet; the GFlowNet is
trained by trajectory balance towards R^ (held fixed within a step). Pushing the better
candidate's learned reward up against every worse one it is compared with sparsifies R^ as
training goes on (Chen & Mauch, Prop. 1): exploration first, then the sampler concentrates on
the top of the order. Here R^ is a separate small network rather than the paper's flow head.
"""

from __future__ import annotations

import torch
from torch import nn

from minigen.gflownets.balance import trajectory_balance
from minigen.gflownets.hypergrid import Hypergrid
from minigen.gflownets.policy import sample_trajectories, trajectory_terms

Tensor = torch.Tensor


def preference(env: Hypergrid, x: Tensor, x_other: Tensor) -> Tensor:
    """The oracle: P(x > x') in {0, 1/2, 1} from the order of R alone: (B, D), (B, D) -> (B,)."""
    r, r2 = env.reward(x), env.reward(x_other)
    return ((r > r2).float() + (r == r2).float() * 0.5)


def order_preserving_loss(log_r: Tensor, log_r_other: Tensor, pref: Tensor) -> Tensor:
    """mean of -[pref log sigma(Δ) + (1 - pref) log sigma(-Δ)], Δ = log R^(x) - log R^(x')."""
    d = log_r - log_r_other
    return -(pref * nn.functional.logsigmoid(d) + (1 - pref) * nn.functional.logsigmoid(-d)).mean()


class LearnedLogReward(nn.Module):
    """log R^(x): a one-hidden-layer MLP on the one-hot state, (B, D) -> (B,)."""

    def __init__(self, env: Hypergrid, width: int = 64):
        super().__init__()
        self.env = env
        self.net = nn.Sequential(nn.Linear(env.dim * env.height, width), nn.LeakyReLU(),
                                 nn.Linear(width, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.env.encode(x)).squeeze(-1)


def train_order_preserving(model, reward_model: LearnedLogReward, env: Hypergrid, steps: int,
                           batch: int = 32, lr: float = 1e-3, lr_log_z: float = 0.1,
                           epsilon: float = 0.05, seed: int = 0, eval_fn=None, eval_every: int = 0):
    """Alternate, every step, one Adam step of L_OP on pairs of the batch's terminal states
    (first half against second half) and one of trajectory balance on log R^ (detached).
    ``eval_fn(step)`` is called every ``eval_every`` steps; returns its outputs."""
    if batch < 2 or batch % 2:
        raise ValueError(f"batch must be even and >= 2 (it is split into pairs), got {batch}")
    g = torch.Generator().manual_seed(seed)
    body = [p for n, p in model.named_parameters() if n != "log_z"]
    opt = torch.optim.Adam([{"params": body, "lr": lr}, {"params": [model.log_z], "lr": lr_log_z}])
    opt_r = torch.optim.Adam(reward_model.parameters(), lr=lr)
    evals = []
    for n in range(1, steps + 1):
        traj = sample_trajectories(model, env, batch, g, epsilon=epsilon)
        x = traj.terminal
        a, b = x[: batch // 2], x[batch // 2:]
        loss_r = order_preserving_loss(reward_model(a), reward_model(b), preference(env, a, b))
        opt_r.zero_grad()
        loss_r.backward()
        opt_r.step()
        terms = trajectory_terms(model, env, traj)
        with torch.no_grad():
            log_r = reward_model(traj.states.reshape(-1, env.dim)).reshape(traj.states.shape[:2])
        loss = trajectory_balance(terms._replace(log_r=log_r), model.log_z)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if eval_fn is not None and eval_every and n % eval_every == 0:
            evals.append(eval_fn(n))
    return evals
