"""Multiscale coupling flows for images (Dinh et al., 2017, RealNVP §3.6; Kingma & Dhariwal,
2018, Glow §3), and the vector version for 2D data.

* ``squeeze``: (B, C, H, W) -> (B, 4C, H/2, W/2), each 2x2 block of pixels into 4 channels (a
  permutation: log|det| = 0), so that channel couplings can mix neighbouring pixels.
* A **flow step** (Glow): ``ActNorm`` -> ``InvertibleLinear`` (the invertible 1x1 convolution)
  -> ``AffineCoupling`` with a channel mask.
* A **level**: squeeze (when the side is even), K flow steps, and then half of the channels
  **factor out**: they are declared Gaussian latents at this scale and skip the later levels,
  which work on the other half at half the resolution. The z of all scales concatenated is
  the flow's output; its log-density is the standard normal's, so the factored channels
  cost no extra parameters (RealNVP §3.6; Glow's learned split prior is left out).
"""

from __future__ import annotations

import torch
from torch import nn

from minigen.flows.actnorm import ActNorm
from minigen.flows.coupling import (
    AffineCoupling,
    ConvConditioner,
    MLPConditioner,
    alternating_mask,
    channel_mask,
)
from minigen.flows.invertible import FlowLayer, FlowSequence, NormalizingFlow
from minigen.flows.logit import Logit
from minigen.flows.mixing import InvertibleLinear

Tensor = torch.Tensor


def squeeze(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, 4C, H/2, W/2): channel c·4 + 2i + j holds pixel (2h + i, 2w + j)."""
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"squeeze needs an even height and width, got {h}x{w}")
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, 4 * c, h // 2, w // 2)


def unsqueeze(x: Tensor) -> Tensor:
    """Inverse of ``squeeze``: (B, 4C, H, W) -> (B, C, 2H, 2W)."""
    b, c4, h, w = x.shape
    if c4 % 4:
        raise ValueError(f"unsqueeze needs a multiple of 4 channels, got {c4}")
    x = x.reshape(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c4 // 4, 2 * h, 2 * w)


def flow_step(channels: int, size: int, parity: int, width: int, generator: torch.Generator | None):
    """Glow's step: ActNorm -> invertible 1x1 convolution -> affine coupling (channel mask)."""
    return [ActNorm(channels), InvertibleLinear(channels, generator),
            AffineCoupling(channel_mask(channels, size, parity), ConvConditioner(channels, width))]


class MultiscaleFlow(FlowLayer):
    """``levels`` levels of (squeeze if the side is even, ``steps`` flow steps, factor out half
    the channels — not after the last level) on (B, channels, size, size) images; z is the
    concatenation of every scale's latents, reshaped to the input's shape."""

    def __init__(self, channels: int = 1, size: int = 8, levels: int = 2, steps: int = 4,
                 width: int = 64, generator: torch.Generator | None = None):
        super().__init__()
        if min(channels, size, levels, steps, width) <= 0:
            raise ValueError("channels, size, levels, steps and width must be positive")
        if size % 2:
            raise ValueError(f"the first level squeezes: size must be even, got {size}")
        self.shape = (channels, size, size)
        self.levels, self.squeezes = nn.ModuleList(), []
        c, s = channels, size
        for level in range(levels):
            sq = s % 2 == 0
            if sq:
                c, s = 4 * c, s // 2
            if c < 2:
                raise ValueError(f"level {level} has {c} channel(s) left: too many levels")
            self.squeezes.append(sq)
            self.levels.append(FlowSequence([layer for k in range(steps)
                                             for layer in flow_step(c, s, k % 2, width, generator)]))
            if level < levels - 1:
                c = c - c // 2

    def forward(self, x: Tensor, **cond) -> tuple[Tensor, Tensor]:
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"MultiscaleFlow expects (B, {self.shape}), got {tuple(x.shape)}")
        log_det, out, h = x.new_zeros(len(x)), [], x
        for i, (level, sq) in enumerate(zip(self.levels, self.squeezes)):
            h, ld = level(squeeze(h) if sq else h)
            log_det = log_det + ld
            if i < len(self.levels) - 1:
                k = h.shape[1] // 2
                out.append(h[:, :k].reshape(len(x), -1))
                h = h[:, k:]
        out.append(h.reshape(len(x), -1))
        return torch.cat(out, 1).reshape(x.shape), log_det

    def inverse(self, z: Tensor, **cond) -> Tensor:
        flat, shapes, c, s = z.reshape(len(z), -1), [], *self.shape[:2]
        for i, sq in enumerate(self.squeezes):  # the shape of each level's output
            c, s = (4 * c, s // 2) if sq else (c, s)
            shapes.append((c, s))
            c = c - c // 2 if i < len(self.squeezes) - 1 else c
        pieces, start = [], 0
        for i, (c, s) in enumerate(shapes):
            k = c // 2 if i < len(shapes) - 1 else c
            pieces.append(flat[:, start:start + k * s * s].reshape(len(z), k, s, s))
            start += k * s * s
        h = pieces[-1]
        for i in reversed(range(len(self.levels))):
            if i < len(self.levels) - 1:
                h = torch.cat([pieces[i], h], 1)
            h = self.levels[i].inverse(h)
            h = unsqueeze(h) if self.squeezes[i] else h
        return h


def image_coupling_flow(channels: int = 1, size: int = 8, levels: int = 2, steps: int = 4,
                        width: int = 64, seed: int = 0, logit: float | None = None) -> NormalizingFlow:
    """A multiscale Glow-style coupling flow on (channels, size, size) images in [-1, 1]
    (``logit``: α of a ``Logit`` layer in front, None for none)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    body = MultiscaleFlow(channels, size, levels, steps, width, g)
    transform = FlowSequence([Logit(logit), body]) if logit is not None else body
    return NormalizingFlow(transform, (channels, size, size))


def vector_coupling_flow(dim: int = 2, layers: int = 8, width: int = 128, depth: int = 2,
                         seed: int = 0) -> NormalizingFlow:
    """RealNVP on vectors: ``layers`` x (ActNorm, affine coupling with alternating masks)."""
    if dim < 2 or layers <= 0:
        raise ValueError(f"dim must be >= 2 and layers positive, got {dim}, {layers}")
    torch.manual_seed(seed)
    steps = []
    for k in range(layers):
        coupling = AffineCoupling(alternating_mask(dim, k % 2), MLPConditioner(dim, width, depth))
        steps += [ActNorm(dim), coupling]
    return NormalizingFlow(FlowSequence(steps), (dim,))
