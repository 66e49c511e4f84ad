"""Serving many autoregressive requests of different lengths: static batches against in-flight
(continuous) batching, the scheduling problem of Flover (Yao et al., 2023, "Flover: A Temporal
Fusion Framework for Efficient Autoregressive Model Parallel Inference").

Request r asks for ``lengths[r]`` tokens. A *static* batch of B requests decodes until its
longest request is done: a finished request's slot idles, so a batch costs max_r lengths[r]
steps. *In-flight* batching fuses requests across time: every step decodes one token for each
of B slots, and a slot whose request has finished takes the next waiting request at once (its
cache slot is emptied; its keys are masked by position, so no copying). Both run on one
``KVCache``; throughput is useful tokens per second.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass
class ServeResult:
    """outputs: one (lengths[r],) int64 tensor per request; steps: batched network calls;
    slot_steps_used / slot_steps: decoded tokens over slot-steps paid; wall_s; tokens_per_s."""

    outputs: list[Tensor]
    steps: int
    slot_steps_used: int
    slot_steps: int
    wall_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.slot_steps_used / self.wall_s


def _next_tokens(logits: Tensor, generator: torch.Generator | None) -> Tensor:
    """Greedy (generator None) or sampled next tokens from logits (B, K): (B,)."""
    if generator is None:
        return logits.argmax(-1)
    return torch.multinomial(torch.softmax(logits.double(), -1).cpu(), 1, generator=generator)[:, 0]

def _check(model, lengths: list[int], batch: int) -> None:
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if not lengths or min(lengths) < 1 or max(lengths) > model.length:
        raise ValueError(f"request lengths must lie in 1..{model.length}")

@torch.inference_mode()
def serve_static(model, lengths: list[int], batch: int,
                 generator: torch.Generator | None = None) -> ServeResult:
    """Requests in arrival order, ``batch`` at a time; each batch decodes max(lengths) steps."""
    _check(model, lengths, batch)
    bos, outputs, steps, used, paid = model.vocab - 1, [], 0, 0, 0
    t0 = time.perf_counter()
    for i in range(0, len(lengths), batch):
        group = lengths[i:i + batch]
        cache = model.new_cache(len(group))
        tok = torch.full((len(group), 1), bos, dtype=torch.long)
        out = []
        for _ in range(max(group)):
            tok = _next_tokens(model(tok, cache=cache)[:, -1, :bos], generator)[:, None]
            out.append(tok)
            steps, paid = steps + 1, paid + len(group)
        out = torch.cat(out, 1)
        outputs += [out[j, :n] for j, n in enumerate(group)]
        used += sum(group)
    return ServeResult(outputs, steps, used, paid, time.perf_counter() - t0)

@torch.inference_mode()
def serve_inflight(model, lengths: list[int], batch: int,
                   generator: torch.Generator | None = None) -> ServeResult:
    """``batch`` slots; a slot takes the next request as soon as its request is done."""
    _check(model, lengths, batch)
    bos = model.vocab - 1
    cache = model.new_cache(batch)
    request = [-1] * batch                      # the request each slot serves (-1: idle)
    produced: list[list[Tensor]] = [[] for _ in lengths]
    tok = torch.full((batch, 1), bos, dtype=torch.long)
    waiting, steps, used, paid = list(range(len(lengths))), 0, 0, 0
    t0 = time.perf_counter()
    while True:
        for s in range(batch):                  # admit waiting requests into free slots
            if request[s] < 0 and waiting:
                request[s] = waiting.pop(0)
                cache.reset(s)
                tok[s] = bos
        if all(r < 0 for r in request):
            break
        nxt = _next_tokens(model(tok, cache=cache)[:, -1, :bos], generator)
        steps, paid = steps + 1, paid + batch
        for s, r in enumerate(request):
            if r < 0:
                cache.reset(s)                  # keep an idle slot at position 0
                continue
            produced[r].append(nxt[s])
            used += 1
            if len(produced[r]) == lengths[r]:
                request[s] = -1
        tok = nxt[:, None].clone()
    outputs = [torch.stack(p) for p in produced]
    return ServeResult(outputs, steps, used, paid, time.perf_counter() - t0)
