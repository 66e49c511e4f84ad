"""Generative marginalization models (Liu, Ramadge & Adams, 2024, "Generative Marginalization
Models", MaM): one network for every marginal log p(x_S) of discrete data, in one pass.

A partial observation is a token sequence over {0..K-1} plus "unobserved" (index K). The
marginal network outputs f_theta(x_S) and

    log p_theta(x_S) = f_theta(x_S) - f_theta(empty),     so log p_theta(empty) = 0 by construction.

It is taught by the marginalisation self-consistency of the chain rule, for any order sigma and
prefix S = sigma(<j), i = sigma(j):

    log p_theta(x_S) + log p_phi(x_i | x_S) = log p_theta(x_{S u i}),

with p_phi an any-order autoregressive model of the conditionals (here the masked-diffusion
denoiser, trained by its ELBO; ``masked.MaskedDiffusion``). The loss is the squared violation
averaged over random data points, orders and prefixes (MaM's "MLE" setting, distilling phi into
theta). An any-order ARM needs |S| calls for log p(x_S); the marginal network needs one.

``BernoulliMixture`` is the toy with exact marginals by summation over its components.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from minigen.recipe.results import LossResult

Tensor = torch.Tensor


class BernoulliMixture:
    """p(x) = sum_k pi_k prod_i theta_ki^{x_i} (1 - theta_ki)^{1 - x_i} on {0, 1}^D, with exact
    marginals log p(x_S) = logsumexp_k [log pi_k + sum_{i in S} log Bern(x_i; theta_ki)]."""

    def __init__(self, weights: Tensor, probs: Tensor):
        if probs.ndim != 2 or weights.shape != probs.shape[:1]:
            raise ValueError(f"need weights (K,) and probs (K, D), got {tuple(weights.shape)}, "
                             f"{tuple(probs.shape)}")
        if not (weights > 0).all() or not ((probs > 0) & (probs < 1)).all():
            raise ValueError("weights must be positive and probs inside (0, 1)")
        self.log_w = torch.log(weights.double() / weights.sum())
        self.probs = probs.double()
        self.dim = probs.shape[1]

    @classmethod
    def random(cls, components: int, dim: int, generator: torch.Generator) -> BernoulliMixture:
        probs = 0.05 + 0.9 * (torch.rand(components, dim, generator=generator) > 0.5).double()
        probs = (probs + 0.1 * torch.rand(components, dim, generator=generator).double()).clamp(0.02, 0.98)
        return cls(torch.ones(components), probs)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        k = torch.multinomial(self.log_w.exp(), n, replacement=True, generator=generator)
        return (torch.rand(n, self.dim, generator=generator, dtype=torch.float64) < self.probs[k]).long()

    def log_marginal(self, x: Tensor, observed: Tensor) -> Tensor:
        """log p(x_S) for rows x (B, D) in {0, 1} with S = observed (B, D) bool: (B,) float64."""
        lp = torch.where(x[:, None].bool(), self.probs.log(), (1 - self.probs).log())  # (B, K, D)
        return torch.logsumexp(self.log_w + (lp * observed[:, None]).sum(-1), -1)


def all_states(dim: int) -> Tensor:
    """Every point of {0, 1}^D: (2^D, D) int64 (small D only)."""
    return torch.tensor(list(itertools.product([0, 1], repeat=dim)))

def partial_tokens(x: Tensor, observed: Tensor, unobserved_id: int) -> Tensor:
    """x with the unobserved entries set to ``unobserved_id``: (B, D) -> (B, D) int64."""
    return torch.where(observed, x, torch.full_like(x, unobserved_id))


class MarginalMLP(nn.Module):
    """f_theta: an MLP on the one-hot partial sequence (B, D) over K + 1 symbols -> (B,), and
    ``log_marginal(tokens)`` = f(tokens) - f(all unobserved)."""

    def __init__(self, dim: int, n_classes: int, width: int = 256, layers: int = 3):
        super().__init__()
        self.dim, self.n_symbols = dim, n_classes + 1
        sizes = [dim * self.n_symbols] + [width] * layers
        mods = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            mods += [nn.Linear(a, b), nn.SiLU()]
        self.net = nn.Sequential(*mods, nn.Linear(width, 1))

    def forward(self, tokens: Tensor) -> Tensor:
        onehot = nn.functional.one_hot(tokens, self.n_symbols).float().flatten(1)
        return self.net(onehot)[:, 0]

    def log_marginal(self, tokens: Tensor) -> Tensor:
        empty = torch.full_like(tokens[:1], self.n_symbols - 1)
        return self(tokens) - self(empty)


def conditional_log_prob(conditional, tokens: Tensor, i: Tensor, value: Tensor, n_classes: int) -> Tensor:
    """log p_phi(x_i = value | x_S) from the denoiser's logits at position i: (B,)."""
    logits = conditional(tokens)[torch.arange(len(tokens)), i, :n_classes]
    return torch.log_softmax(logits, -1).gather(1, value[:, None])[:, 0]


class SelfConsistency:
    """MaM's loss as ``train``'s loss on data x (B, D): per row a random order and prefix length
    j ~ U{0..D-1}; the squared violation (f(x_S) + log p_phi(x_i | x_S) - f(x_{S u i}))², with the
    conditional model frozen."""

    def __init__(self, conditional: nn.Module, n_classes: int):
        self.conditional, self.n_classes = conditional, n_classes

    def loss(self, model, x: Tensor, generator: torch.Generator, per_sample: bool = False) -> LossResult:
        b, d = x.shape
        # rank[b, i]: the place of position i in row b's random order
        rank = torch.rand(b, d, generator=generator).argsort(1).argsort(1)
        j = torch.randint(d, (b, 1), generator=generator)
        observed, i = rank < j, (rank == j).long().argmax(1)
        before = partial_tokens(x, observed, self.n_classes)
        after = partial_tokens(x, observed | (rank == j), self.n_classes)
        with torch.no_grad():
            cond = conditional_log_prob(self.conditional, before, i, x[torch.arange(b), i], self.n_classes)
        gap = (model(before) + cond - model(after)) ** 2
        return LossResult(gap.mean(), gap.detach() if per_sample else None, None)

    __call__ = loss


@torch.no_grad()
def chain_rule_log_marginal(conditional, x: Tensor, observed: Tensor, n_classes: int) -> tuple[Tensor, int]:
    """log p_phi(x_S) by the chain rule over S in position order: |S| calls of the conditional model
    (max |S| over the batch). Returns ((B,), the number of network calls)."""
    b, d = x.shape
    total, revealed = torch.zeros(b), torch.zeros_like(observed)
    calls = 0
    for i in range(d):
        rows = observed[:, i]
        if not rows.any():
            continue
        tokens = partial_tokens(x, revealed, n_classes)
        lp = conditional_log_prob(conditional, tokens, torch.full((b,), i), x[:, i], n_classes)
        total += torch.where(rows, lp, 0.0)
        revealed = revealed | (torch.arange(d) == i) & rows[:, None]
        calls += 1
    return total, calls
