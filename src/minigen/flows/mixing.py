"""Channel mixing between coupling layers, so that every dimension is transformed:

* ``Reverse``: the fixed permutation that reverses the channels (RealNVP, Dinh et al., 2017),
  log|det| = 0;
* ``InvertibleLinear``: a learned invertible matrix over the channels — Glow's invertible 1x1
  convolution on images (Kingma & Dhariwal, 2018, §3.2) and a dense invertible layer on
  vectors — in the LU parametrisation W = P L (U + diag(sign · exp(log_s))) with P fixed, L
  unit lower- and U strictly upper-triangular, so that log|det W| = Σ log_s costs O(C):

    z = W x at every position,   log|det| = (positions per channel) · Σ_c log_s_c .

Channels are dimension 1: (B, C) vectors or (B, C, H, W) images.
"""

from __future__ import annotations

import torch
from torch import nn

from minigen.flows.invertible import FlowLayer

Tensor = torch.Tensor


def _channels_last(x: Tensor) -> Tensor:
    return x.movedim(1, -1)


class Reverse(FlowLayer):
    """z = x with the channels in reverse order (log|det| = 0)."""

    def forward(self, x: Tensor, **cond) -> tuple[Tensor, Tensor]:
        return x.flip(1), x.new_zeros(len(x))

    def inverse(self, z: Tensor, **cond) -> Tensor:
        return z.flip(1)


class InvertibleLinear(FlowLayer):
    """z = W x over the channels, W = P L (U + diag(sign exp(log_s))) (Glow §3.2, LU form),
    initialised at a random rotation drawn from ``generator``."""

    def __init__(self, channels: int, generator: torch.Generator | None = None):
        super().__init__()
        if channels <= 0:
            raise ValueError(f"channels must be positive, got {channels}")
        w0 = torch.linalg.qr(torch.randn(channels, channels, generator=generator))[0]
        p, lower, upper = torch.linalg.lu(w0)
        diag = torch.diagonal(upper)
        self.register_buffer("perm", p)
        self.register_buffer("sign", torch.sign(diag))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(lower * self.lower_mask)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(diag.abs().log())

    def weight(self) -> Tensor:
        """W = P L (U + diag(sign exp(log_s))): (C, C)."""
        eye = torch.eye(len(self.log_s), device=self.log_s.device, dtype=self.log_s.dtype)
        lower = self.lower * self.lower_mask + eye
        upper = torch.triu(self.upper, 1) + torch.diag(self.sign * self.log_s.exp())
        return self.perm @ lower @ upper

    def forward(self, x: Tensor, **cond) -> tuple[Tensor, Tensor]:
        if x.ndim < 2 or x.shape[1] != len(self.log_s):
            raise ValueError(f"InvertibleLinear({len(self.log_s)}) expects (B, {len(self.log_s)}, ...), "
                             f"got {tuple(x.shape)}")
        z = (_channels_last(x) @ self.weight().T).movedim(-1, 1)
        return z, (self.log_s.sum() * x[0, 0].numel()).expand(len(x))

    def inverse(self, z: Tensor, **cond) -> Tensor:
        w_inv = torch.linalg.inv(self.weight())
        return (_channels_last(z) @ w_inv.T).movedim(-1, 1)
