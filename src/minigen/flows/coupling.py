"""Affine coupling (Dinh et al., 2017, "Density estimation using Real NVP", §3.2–3.4).

A binary mask m splits x into a part that passes unchanged and a part that is scaled and
shifted by functions of the first:

    z = m ⊙ x + (1 - m) ⊙ (x ⊙ exp(s(m ⊙ x)) + t(m ⊙ x)),     log|det ∂z/∂x| = Σ (1 - m) ⊙ s,

and the inverse x = m ⊙ z + (1 - m) ⊙ (z - t) ⊙ exp(-s) needs s and t only at m ⊙ z = m ⊙ x
(one pass, no iteration). The Jacobian is triangular, so the determinant is the product of
the diagonal. s is soft-clamped, s = c · tanh(ŝ / c), and the conditioner's last layer starts
at zero, so every coupling starts as the identity.

Masks: ``alternating_mask`` (vectors), ``checkerboard_mask`` and ``channel_mask`` (images,
RealNVP §3.4); conditioners: ``MLPConditioner`` (vectors) and ``ConvConditioner`` (images).
"""

from __future__ import annotations

import torch
from torch import nn

from minigen.flows.invertible import FlowLayer

Tensor = torch.Tensor


def alternating_mask(dim: int, parity: int) -> Tensor:
    """m_i = 1 where i % 2 == parity: (dim,)."""
    return (torch.arange(dim) % 2 == parity).float()


def checkerboard_mask(channels: int, size: int, parity: int) -> Tensor:
    """m = 1 on the squares (i + j) % 2 == parity, every channel: (C, size, size)."""
    i, j = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return ((i + j) % 2 == parity).float().expand(channels, size, size).clone()


def channel_mask(channels: int, size: int, parity: int) -> Tensor:
    """m = 1 on the first half of the channels (parity 0) or the second (parity 1): (C, size, size)."""
    if channels < 2:
        raise ValueError(f"a channel mask needs at least 2 channels, got {channels}")
    first = (torch.arange(channels) < channels // 2).float()
    m = first if parity == 0 else 1 - first
    return m.view(-1, 1, 1).expand(channels, size, size).clone()


class MLPConditioner(nn.Module):
    """(s, t) = MLP(x_masked): (B, D) -> two (B, D); the last layer starts at zero."""

    def __init__(self, dim: int, width: int = 128, depth: int = 2):
        super().__init__()
        layers, d = [], dim
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.SiLU()]
            d = width
        self.net = nn.Sequential(*layers, nn.Linear(d, 2 * dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.net(x).chunk(2, dim=1)


class ConvConditioner(nn.Module):
    """(s, t) = conv3x3 -> ReLU -> conv1x1 -> ReLU -> conv3x3 (RealNVP's conditioner, shallow):
    (B, C, H, W) -> two (B, C, H, W); the last layer starts at zero."""

    def __init__(self, channels: int, width: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 1), nn.ReLU(),
            nn.Conv2d(width, 2 * channels, 3, padding=1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.net(x).chunk(2, dim=1)


class AffineCoupling(FlowLayer):
    """z = m x + (1 - m)(x exp(s) + t), (s, t) = conditioner(m x), s soft-clamped to ±``clamp``."""

    def __init__(self, mask: Tensor, conditioner: nn.Module, clamp: float = 3.0):
        super().__init__()
        if not clamp > 0:
            raise ValueError(f"clamp must be > 0, got {clamp}")
        self.register_buffer("mask", mask.float())
        self.conditioner = conditioner
        self.clamp = float(clamp)

    def scale_shift(self, x_masked: Tensor) -> tuple[Tensor, Tensor]:
        """(s, t) on the transformed part (zero where m = 1), s = c tanh(ŝ / c)."""
        raw_s, t = self.conditioner(x_masked)
        keep = 1 - self.mask
        return self.clamp * torch.tanh(raw_s / self.clamp) * keep, t * keep

    def forward(self, x: Tensor, **cond) -> tuple[Tensor, Tensor]:
        if tuple(x.shape[1:]) != tuple(self.mask.shape):
            raise ValueError(f"AffineCoupling expects (B, {tuple(self.mask.shape)}), got {tuple(x.shape)}")
        s, t = self.scale_shift(x * self.mask)
        z = x * self.mask + (1 - self.mask) * (x * torch.exp(s) + t)
        return z, s.reshape(len(x), -1).sum(1)

    def inverse(self, z: Tensor, **cond) -> Tensor:
        s, t = self.scale_shift(z * self.mask)
        return z * self.mask + (1 - self.mask) * (z - t) * torch.exp(-s)
