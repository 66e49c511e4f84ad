"""The two result types every part shares (book/design.md): what a sampler returns and what a
loss returns, so that quality-against-NFE is one loop over samplers and ``train`` takes any
objective.

* ``SampleResult``: the samples, the network evaluations (NFE) they cost and, on request, the
  trajectory on its time grid. Every sampler returns one: ODE solvers, Euler–Maruyama,
  predictor–corrector, DDPM's ancestral chain, DDIM, the interpolants' SDE, PFGM++.
* ``LossResult``: (loss, per_sample, t) — the scalar to differentiate, the detached per-sample
  losses (B,) when asked for (``per_sample=True``; None otherwise, the default everywhere) and
  the training times (B,) (None for a loss without a time, e.g. the VAE's). A named tuple, so
  ``loss, per, t = objective.loss(...)`` unpacks it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

Tensor = torch.Tensor


@dataclass
class SampleResult:
    """x: (B, ...) the samples; nfe: network evaluations spent; trajectory: (K+1, B, ...) or
    None; times: (K+1,) the grid the trajectory lives on (t, or sigma for PFGM++), or None."""

    x: Tensor
    nfe: int
    trajectory: Tensor | None = None
    times: Tensor | None = None


class LossResult(NamedTuple):
    """loss: scalar; per_sample: (B,) detached, or None; t: (B,), or None."""

    loss: Tensor
    per_sample: Tensor | None
    t: Tensor | None
