"""The logit preprocessing layer of RealNVP (Dinh et al., 2017, §4.1), as a flow layer.

Dequantised images live in the box [-1, 1]^D, where a flow with a Gaussian base has to put
sharp walls at the edges — and most MNIST pixels sit in the edge bins. Mapping the box to
R^D first, with u = (x + 1)/2, p = α + (1 - 2α) u and

    z = logit(p) = log p - log(1 - p),
    log|dz/dx| = log(1/2) + log(1 - 2α) - log p - log(1 - p)   (per element),

turns the walls into tails. Being part of the flow, its log-determinant enters the
likelihood, so bits/dim stay on the 0..K-1 scale of the data (``eval.bits``).
"""

from __future__ import annotations

import math

import torch

from minigen.flows.invertible import FlowLayer

Tensor = torch.Tensor


class Logit(FlowLayer):
    """x in [-1, 1] -> logit(α + (1 - 2α)(x + 1)/2); α keeps the edges finite (RealNVP: 0.05)."""

    def __init__(self, alpha: float = 0.05):
        super().__init__()
        if not 0 < alpha < 0.5:
            raise ValueError(f"alpha must lie in (0, 0.5), got {alpha}")
        self.alpha = float(alpha)

    def forward(self, x: Tensor, **cond) -> tuple[Tensor, Tensor]:
        if x.detach().abs().max() > 1:
            raise ValueError("Logit expects data in [-1, 1]")
        p = self.alpha + (1 - 2 * self.alpha) * (x + 1) / 2
        z = torch.log(p) - torch.log1p(-p)
        log_det = math.log((1 - 2 * self.alpha) / 2) - torch.log(p) - torch.log1p(-p)
        return z, log_det.reshape(len(x), -1).sum(1)

    def inverse(self, z: Tensor, **cond) -> Tensor:
        return 2 * (torch.sigmoid(z) - self.alpha) / (1 - 2 * self.alpha) - 1
