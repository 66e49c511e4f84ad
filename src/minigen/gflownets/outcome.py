"""Outcome-conditioned GFlowNets: reward-free pre-training, then a policy for a new reward by
marginalising over outcomes (Pan et al., 2023, "Pre-training and fine-tuning generative flow
networks", OC-GFN).

Pre-training. Condition the GFlowNet on an outcome y (a terminal state) and give it the
reward-free, self-supervised reward R(x | y) = 1[x = y] (here 1[x = y] + eps, so log R is
finite): it learns to *reach* y. Trajectories that miss y are relabelled in hindsight with the
outcome they did reach (then they succeed), as in goal-conditioned RL. With the uniform P_B the
conditional flow F(s | y) is the probability that the backward walk from y passes through s,
and F(s_0 | y) = 1.

Adaptation. For any new reward R the edge flows of the R-GFlowNet (same P_B) are mixtures of
the conditional ones, F_R(s -> s') = sum_y R(y) F(s -> s' | y), so

    P_F^R(s' | s) = sum_y w(y | s) P_F(s' | s, y),      w(y | s) ∝ R(y) F(s | y),

a policy for R with no training on R (Pan et al., sec. 4.2). The sum over outcomes is the
intractable part at scale — the paper amortises it with a learned predictor; on a toy grid it
is done exactly, over the outcomes reachable from s (y >= s coordinate-wise; F(s | y) = 0 for
the others).
"""

from __future__ import annotations

import torch

from minigen.gflownets.balance import detailed_balance
from minigen.gflownets.hypergrid import Hypergrid
from minigen.gflownets.policy import masked_log_softmax, sample_trajectories, trajectory_terms

Tensor = torch.Tensor


def outcome_log_reward(x: Tensor, y: Tensor, log_eps: float = -12.0) -> Tensor:
    """log R(x | y) = 0 if x = y else log_eps: x (..., D), y broadcastable -> (...)."""
    hit = (x == y).all(-1)
    return torch.where(hit, torch.zeros(hit.shape), torch.full(hit.shape, float(log_eps)))


def outcome_loss(model, env: Hypergrid, traj, y: Tensor, log_eps: float = -12.0) -> Tensor:
    """Detailed balance (every visited state's stop edge included) of the GFlowNet conditioned
    on y (B, D) with reward R(x | y): the OC-GFN pre-training loss (Pan et al., 2023, eq. 5)."""
    terms = trajectory_terms(model, env, traj, cond=env.encode(y))
    log_r = outcome_log_reward(traj.states, y[:, None, :], log_eps)
    return detailed_balance(terms._replace(log_r=log_r), all_stop_edges=True)


def pretrain_outcome_conditioned(model, env: Hypergrid, steps: int, batch: int = 32, lr: float = 1e-3,
                                 epsilon: float = 0.1, hindsight: float = 0.5, log_eps: float = -12.0,
                                 seed: int = 0) -> list[float]:
    """Reward-free pre-training: outcomes y uniform over all states, rollouts of the policy
    conditioned on y (epsilon-uniform exploration), a share ``hindsight`` of the misses
    relabelled with the state reached. Returns the success rate (x = y, before relabelling) of
    each step. ``model``: ``GFlowNetMLP(env, cond_dim=env.dim * env.height)``."""
    if model.cond_dim != env.dim * env.height:
        raise ValueError("the model must be conditioned on a one-hot outcome (cond_dim = D H)")
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam([p for n, p in model.named_parameters() if n != "log_z"], lr=lr)
    states, success = env.all_states(), []
    for _ in range(steps):
        y = states[torch.randint(env.n_states, (batch,), generator=g)]
        traj = sample_trajectories(model, env, batch, g, epsilon=epsilon, cond=env.encode(y))
        x = traj.terminal
        hit = (x == y).all(1)
        success.append(float(hit.float().mean()))
        relabel = ~hit & (torch.rand(batch, generator=g) < hindsight)
        y = torch.where(relabel[:, None], x, y)
        loss = outcome_loss(model, env, traj, y, log_eps)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return success


def conditional_tables(model, env: Hypergrid) -> tuple[Tensor, Tensor]:
    """log F(s | y) (N, N) and log P_F(a | s, y) (N, N, D + 1) for every state s and outcome y
    (N = H^D; N^2 network calls, so for toy grids)."""
    x = env.all_states()
    n = len(x)
    s, y = x.repeat_interleave(n, 0), x.repeat(n, 1)
    with torch.no_grad():
        out = model(s, env.encode(y))
        log_pf = masked_log_softmax(out.logits_pf, env.forward_mask(s))
    return out.log_flow.reshape(n, n).double(), log_pf.reshape(n, n, -1).double()


def marginal_policy(log_flow: Tensor, log_pf: Tensor, log_reward: Tensor, env: Hypergrid) -> Tensor:
    """log P_F^R(a | s) = log sum_y w(y | s) P_F(a | s, y), w(y | s) ∝ R(y) F(s | y) over the
    outcomes y >= s reachable from s (Pan et al., 2023, eq. 8): (N, N), (N, N, A), (N,) ->
    (N, A), the table ``exact.terminal_distribution`` reads."""
    x = env.all_states()
    reach = (x[:, None, :] <= x[None, :, :]).all(-1)  # [s, y]
    log_w = torch.where(reach, log_reward.double()[None, :] + log_flow, torch.tensor(float("-inf")))
    log_w = log_w - log_w.logsumexp(1, keepdim=True)
    terms = torch.where(reach[..., None], log_w[..., None] + log_pf, torch.tensor(float("-inf")))
    return terms.logsumexp(1)


def exact_conditional_tables(env: Hypergrid) -> tuple[Tensor, Tensor]:
    """The balanced conditional GFlowNet of R(x | y) = 1[x = y] with uniform P_B, by dynamic
    programming for every y (``exact.uniform_backward_flows``); the reference for the tests."""
    from minigen.gflownets.exact import uniform_backward_flows

    n = env.n_states
    log_flow = torch.full((n, n), float("-inf"), dtype=torch.float64)
    log_pf = torch.full((n, n, env.n_actions), float("-inf"), dtype=torch.float64)
    for j in range(n):
        lf, le = uniform_backward_flows(env, torch.nn.functional.one_hot(torch.tensor(j), n))
        log_flow[:, j] = lf
        log_pf[:, j] = torch.where(torch.isfinite(lf)[:, None], le - lf[:, None], log_pf[:, j])
    return log_flow, log_pf
