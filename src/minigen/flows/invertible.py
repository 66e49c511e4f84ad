"""The one protocol of a normalizing flow (Dinh et al., 2015; Rezende & Mohamed, 2015;
Papamakarios et al., 2021, "Normalizing Flows for Probabilistic Modeling and Inference").

A flow layer is a bijection f from the **data side** x to the **base side** z with a tractable
log-determinant; a flow is a composition of layers on top of a standard normal base, and its
log-density is the change of variables

    log p(x) = log N(f(x); 0, I) + log |det ∂f/∂x| .

Direction, in minigen's time convention (t = 0 source, t = 1 data): the normalizing direction
x -> z runs from t = 1 to t = 0, and sampling (``inverse``) from t = 0 to t = 1.

Every layer implements ``forward(x, **cond) -> (z, log_det)`` with log_det of shape (B,) and
``inverse(z, **cond) -> x``; ``FlowSequence`` composes them and ``NormalizingFlow`` adds the
base, ``log_prob`` and ``sample`` (a ``SampleResult``, nfe = passes through the network).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from minigen.recipe.results import LossResult, SampleResult

Tensor = torch.Tensor


class FlowLayer(nn.Module):
    """A bijection x -> z: ``forward(x, **cond) -> (z, log_det (B,))``, ``inverse(z, **cond) -> x``."""

    def forward(self, x: Tensor, **cond) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse(self, z: Tensor, **cond) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class FlowSequence(FlowLayer):
    """f = f_K ∘ ... ∘ f_1: log-determinants add; the inverse runs the layers backwards."""

    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        if not len(self.layers):
            raise ValueError("FlowSequence needs at least one layer")

    def forward(self, x: Tensor, **cond) -> tuple[Tensor, Tensor]:
        log_det = x.new_zeros(len(x))
        for layer in self.layers:
            x, ld = layer(x, **cond)
            log_det = log_det + ld
        return x, log_det

    def inverse(self, z: Tensor, **cond) -> Tensor:
        for layer in reversed(self.layers):
            z = layer.inverse(z, **cond)
        return z


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over every non-batch dimension: (B, ...) -> (B,)."""
    flat = z.reshape(len(z), -1)
    return -0.5 * (flat ** 2).sum(1) - 0.5 * flat.shape[1] * math.log(2 * math.pi)


class NormalizingFlow(nn.Module):
    """A transform (``FlowLayer``) on a standard normal base of shape ``event_shape``.

    ``log_prob(x)`` is the exact log-density (change of variables); ``loss`` is the negative
    log-likelihood per dimension, in nats (what ``train`` minimises: the same optimum as the
    NLL, a scale that does not grow with the dimension); ``sample`` draws z ~ N(0, I) and
    inverts. NFE: one pass through the network per inverse (TARFlow's sequential inverse
    spends one per token and block, see ``flows.tarflow``).
    """

    def __init__(self, transform: FlowLayer, event_shape: tuple[int, ...]):
        super().__init__()
        self.transform = transform
        self.event_shape = tuple(int(s) for s in event_shape)
        if not self.event_shape or min(self.event_shape) <= 0:
            raise ValueError(f"event_shape must be a non-empty tuple of positive sizes, got {event_shape}")
        self.dim = math.prod(self.event_shape)

    def _check(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"expected x of shape (B, {', '.join(map(str, self.event_shape))}), "
                             f"got {tuple(x.shape)}")

    def log_prob(self, x: Tensor, **cond) -> Tensor:
        """log p(x) = log N(f(x); 0, I) + log|det ∂f/∂x|: (B, *event_shape) -> (B,)."""
        self._check(x)
        z, log_det = self.transform(x, **cond)
        return standard_normal_log_prob(z) + log_det

    def loss(self, model, x: Tensor, generator: torch.Generator | None = None,
             per_sample: bool = False, **cond):
        """``train``'s loss: -log p(x) / D (nats per dimension); ``model`` is this flow."""
        nll = -model.log_prob(x, **cond) / model.dim
        return LossResult(nll.mean(), nll.detach() if per_sample else None, None)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0,
               **cond) -> SampleResult:
        """x = f^{-1}(z), z ~ N(0, temperature² I): a ``SampleResult`` with nfe = 1."""
        if not isinstance(n, int) or n <= 0:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        p = next(self.parameters())
        z = torch.randn((n, *self.event_shape), generator=generator).to(p) * temperature
        return SampleResult(self.transform.inverse(z, **cond), nfe=1)
