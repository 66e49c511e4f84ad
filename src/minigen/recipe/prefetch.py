"""Batches paired ahead of the training step: a coupling that depends only on the data (exact
minibatch OT, Sinkhorn) computed on a worker thread while the model trains.

The minibatch OT plan of Pooladian et al. (2023) and Tong et al. (2024) pairs x0 and x1 by their
distances alone, so batch k's pairing can be solved before step k: ``PairedBatches`` draws
batch k from its own generator, seeded by (seed, k), pairs it, and keeps ``ahead`` batches in
flight on one thread (scipy's assignment and torch's kernels release the GIL, so the thread
uses the core the step does not). Every batch is a function of (seed, k) alone, so

- the batches are the same whether they were prefetched or paired in the caller (``ahead=0``),
- ``train`` resumes them exactly (it calls ``seek(step)`` after restoring a checkpoint), and
- CFM with ``coupling=independent`` on these batches trains the same weights as CFM with the
  coupling in its loss on ``PairedBatches(draw, independent, seed)``: the same pairs, and the
  loss's own draws (t, bridge noise) still come from ``train``'s generator.

Use it as ``train``'s ``sample_batch``: ``train(model, CFM(path).loss, PairedBatches(draw,
ExactOT(), seed), ...)``; ``close()`` (or a ``with`` block) stops the thread.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch

Tensor = torch.Tensor


def batch_generator(seed: int, k: int) -> torch.Generator:
    """The generator batch k of a run seeded ``seed`` is drawn (and paired) from."""
    if not 0 <= seed < 2**31 or k < 0:
        raise ValueError(f"need 0 <= seed < 2**31 and k >= 0, got seed={seed}, k={k}")
    return torch.Generator().manual_seed(seed * 2**32 + k)


class PairedBatches:
    """``sample_batch`` for ``train``: batch k = ``coupling(*draw(g_k), g_k)`` with
    ``g_k = batch_generator(seed, k)``, computed ``ahead`` batches in advance on a thread
    (``ahead=0``: in the caller). Called with train's generator, which it does not use."""

    def __init__(self, draw: Callable[[torch.Generator], tuple[Tensor, Tensor]],
                 coupling: Callable, seed: int, ahead: int = 2):
        if not isinstance(ahead, int) or ahead < 0:
            raise ValueError(f"ahead must be an integer >= 0, got {ahead!r}")
        self.draw, self.coupling, self.seed, self.ahead = draw, coupling, seed, ahead
        self.step = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="pairing") if ahead else None
        self._queued: dict[int, Future] = {}

    def batch(self, k: int) -> tuple[Tensor, Tensor]:
        """Batch k, paired, computed here and now."""
        g = batch_generator(self.seed, k)
        x0, x1 = self.draw(g)
        return tuple(self.coupling(x0, x1, g))

    def __call__(self, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        k, self.step = self.step, self.step + 1
        if self._pool is None:
            return self.batch(k)
        for j in range(k, k + self.ahead + 1):  # keep the next ``ahead`` in flight
            if j not in self._queued:
                self._queued[j] = self._pool.submit(self.batch, j)
        return self._queued.pop(k).result()

    def seek(self, step: int) -> None:
        """Continue from batch ``step`` (``train`` calls this when it resumes)."""
        for fut in self._queued.values():
            fut.cancel()
        self._queued.clear()
        self.step = int(step)

    def close(self) -> None:
        """Stop the worker thread."""
        self.seek(self.step)
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
