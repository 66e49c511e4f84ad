"""The dispersive regulariser: a contrastive loss without positive pairs on a batch's intermediate
features (Wang & He, 2025, "Diffuse and Disperse: Image Generation with Representation
Regularization", InfoNCE with the squared L2 distance), added to MeanFlow by DM1 (2025,
"MeanFlow with Dispersive Regularization for 1-Step Robotic Manipulation"):

    L_disp = log (1/B²) Σ_{i,j} exp(-D(h_i, h_j) / tau),   D(h_i, h_j) = ||h_i - h_j||² / d,

with d the feature dimension. It is 0 when all features coincide (collapse), and falls towards
its minimum log(1/B) as the features spread apart; its gradient pushes every pair apart, the
closest the hardest (weights softmax(-D / tau)).
"""

from __future__ import annotations

import math

import torch

from minigen.broadcast import expand_t
from minigen.recipe.results import LossResult

Tensor = torch.Tensor


def dispersive_loss(h: Tensor, tau: float = 1.0) -> Tensor:
    """L_disp of features h (B, ...) (flattened per sample): a scalar in [log(1/B), 0]."""
    if h.ndim < 2 or len(h) < 2:
        raise ValueError(f"need a batch of at least two feature vectors, got shape {tuple(h.shape)}")
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    f = h.flatten(1)
    sq = f.pow(2).sum(1)
    d = (sq[:, None] + sq[None, :] - 2 * f @ f.T).clamp_min(0) / f.shape[1]  # ||h_i - h_j||² / d
    d = d * (1 - torch.eye(len(f), dtype=d.dtype, device=d.device))  # exactly 0 on the diagonal
    return torch.logsumexp(-d.flatten() / tau, 0) - math.log(len(f) ** 2)


def with_dispersion(loss_fn, weight: float = 0.5, tau: float = 1.0, layer: int = -1):
    """loss_fn + weight · L_disp of ``model.features(x_t, t, cond=...)[layer]`` at the loss's own
    times t (its ``LossResult.t``) on the linear path x_t = t x1 + (1 - t) x0. The model must have
    ``features`` (``nets.two_time.TwoTimeMLP``). Same signature as the wrapped loss."""
    if weight < 0:
        raise ValueError(f"weight must be >= 0, got {weight}")

    def loss(model, x0: Tensor, x1: Tensor, cond=None, generator=None, per_sample=False) -> LossResult:
        base = loss_fn(model, x0, x1, cond, generator=generator, per_sample=per_sample)
        if base.t is None:
            raise ValueError("the wrapped loss must return its times t")
        xt = expand_t(base.t, x1) * x1 + expand_t(1 - base.t, x1) * x0
        h = model.features(xt, base.t, cond=cond)[layer]
        return LossResult(base.loss + weight * dispersive_loss(h, tau), base.per_sample, base.t)

    return loss
