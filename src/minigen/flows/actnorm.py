"""Activation normalisation (Kingma & Dhariwal, 2018, "Glow", §3.1): a per-channel affine map

    z = (x - b) · exp(-s),   log|det| = -Σ_c s_c · (positions per channel),

whose b and s are set from the first batch it sees (data-dependent initialisation: the
channels of z start at zero mean and unit variance), then trained as ordinary parameters.
Channels are dimension 1: (B, C) vectors or (B, C, H, W) images.
"""

from __future__ import annotations

import torch
from torch import nn

from minigen.flows.invertible import FlowLayer

Tensor = torch.Tensor


class ActNorm(FlowLayer):
    """Per-channel z = (x - b) exp(-s), initialised from the first batch (Glow §3.1)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        if channels <= 0:
            raise ValueError(f"channels must be positive, got {channels}")
        self.shift = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.tensor(False))
        self.eps = eps

    def _view(self, p: Tensor, x: Tensor) -> Tensor:
        return p.view(1, -1, *([1] * (x.ndim - 2)))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """b = mean, s = log std of each channel of ``x`` (the first batch)."""
        flat = x.transpose(0, 1).reshape(x.shape[1], -1)
        self.shift.copy_(flat.mean(1))
        self.log_scale.copy_((flat.std(1) + self.eps).log())
        self.initialized.fill_(True)

    def forward(self, x: Tensor, **cond) -> tuple[Tensor, Tensor]:
        if x.ndim < 2 or x.shape[1] != len(self.shift):
            c = len(self.shift)
            raise ValueError(f"ActNorm({c}) expects (B, {c}, ...), got {tuple(x.shape)}")
        if not bool(self.initialized) and self.training:
            self.initialize(x)
        z = (x - self._view(self.shift, x)) * torch.exp(-self._view(self.log_scale, x))
        positions = x[0, 0].numel()
        return z, (-self.log_scale.sum() * positions).expand(len(x))

    def inverse(self, z: Tensor, **cond) -> Tensor:
        return z * torch.exp(self._view(self.log_scale, z)) + self._view(self.shift, z)
