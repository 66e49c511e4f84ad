"""Autoregressive models of token sequences: the exact likelihood by the chain rule, and sampling
with and without a key-value cache.

    log p(x) = sum_i log p_theta(x_i | x_<i)      (exact: no bound, no dequantisation)

A causal ``TokenTransformer`` over vocab K + 1 reads [BOS, x_1, ..., x_{L-1}] and predicts
x_1 .. x_L (the BOS token is index K). Sampling draws one token per network call; with the cache
each call processes one new token against the stored keys and values (O(L) per token instead of
recomputing the prefix, O(L²) — Pope et al., 2023, "Efficiently Scaling Transformer Inference").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from minigen.recipe.results import LossResult, SampleResult

Tensor = torch.Tensor


def with_bos(x: Tensor, bos: int) -> Tensor:
    """The model's input: [BOS, x_1, ..., x_{L-1}]: (B, L) -> (B, L)."""
    return torch.cat([torch.full_like(x[:, :1], bos), x[:, :-1]], 1)

def sequence_nll(model, x: Tensor) -> Tensor:
    """-log p(x) = -sum_i log p(x_i | x_<i) in nats, per sequence: x (B, L) int64 in 0..K-1 -> (B,).
    The BOS index is K = model.vocab - 1."""
    logits = model(with_bos(x, model.vocab - 1))[..., : model.vocab - 1]
    return F.cross_entropy(logits.transpose(1, 2), x, reduction="none").sum(1)

class AutoregressiveNLL:
    """The maximum-likelihood objective, -log p(x) / L per token (nats), as ``train``'s loss:
    ``loss(model, x, generator, per_sample)`` -> LossResult (per-sample: nats per sequence)."""

    def loss(self, model, x: Tensor, generator: torch.Generator | None = None,
             per_sample: bool = False) -> LossResult:
        nll = sequence_nll(model, x.reshape(len(x), -1).long())
        return LossResult(nll.mean() / x[0].numel(), nll.detach() if per_sample else None, None)

    __call__ = loss

@torch.inference_mode()
def sample_autoregressive(model, n: int, generator: torch.Generator, use_cache: bool = True,
                          temperature: float = 1.0) -> SampleResult:
    """Ancestral sampling x_i ~ p(. | x_<i), i = 1..L: (n, L) int64; NFE = L network calls.

    Without the cache every call reruns the whole prefix [BOS, x_1..x_{i-1}]; with it each call
    reads one token. The two give the same logits (to float rounding), hence the same samples
    for a generator state."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    device = next(model.parameters()).device
    bos, length = model.vocab - 1, model.length
    x = torch.full((n, 1), bos, dtype=torch.long, device=device)
    cache = model.new_cache(n) if use_cache else None
    for _ in range(length):
        logits = model(x[:, -1:] if use_cache else x, cache=cache)[:, -1, :bos]
        probs = torch.softmax(logits.double() / temperature, -1)
        nxt = torch.multinomial(probs.cpu(), 1, generator=generator).to(device)
        x = torch.cat([x, nxt], 1)
    return SampleResult(x[:, 1:], nfe=length)
