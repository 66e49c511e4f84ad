"""A small convolutional autoencoder with a spatial latent: the first stage of latent
generative models (Rombach et al., 2022, "High-Resolution Image Synthesis with Latent
Diffusion Models"; Dao et al., 2023, "Flow Matching in Latent Space").

The encoder E maps an image to a (c, h, w) latent grid, the decoder D maps it back; both are
trained on the reconstruction error alone (no KL: the latent's scale is whatever training
makes it, which is why ``latent.standardize`` measures it),

    L(x) = Σ_ij w_ij (D(E(x))_ij - x_ij)² / Σ_ij w_ij ,

with an optional spatial weight map w (uniform by default) — e.g. the feed-forward
reconstruction encoders' spatially weighted loss, which spends the capacity where the image
has content.

Encoder: 3x3 conv (C -> base), then ``downs`` 3x3 stride-2 convs (-> 2·base), SiLU after
each, and a 1x1 conv to ``latent_channels``. A side n becomes ceil(n / 2) per down
(14 -> 7 -> 4). Decoder: a 3x3 conv (-> 2·base), then per level a nearest-neighbour upsampling
*to the exact encoder size* and a 3x3 conv, SiLU after each, and a last 3x3 conv to C.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minigen.recipe.results import LossResult

Tensor = torch.Tensor


class ConvAutoencoder(nn.Module):
    """E: (B, C, S, S) -> (B, latent_channels, s, s), D: back; ``model(x)`` reconstructs."""

    def __init__(self, image_size: int = 14, channels: int = 1, latent_channels: int = 4,
                 base: int = 32, downs: int = 2):
        super().__init__()
        for name, v in (("image_size", image_size), ("channels", channels),
                        ("latent_channels", latent_channels), ("base", base), ("downs", downs)):
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.image_size, self.channels = image_size, channels
        self.sizes = [image_size]
        for _ in range(downs):
            self.sizes.append((self.sizes[-1] + 1) // 2)
        self.latent_shape = (latent_channels, self.sizes[-1], self.sizes[-1])
        w = 2 * base
        enc = [nn.Conv2d(channels, base, 3, padding=1), nn.SiLU()]
        for k in range(downs):
            enc += [nn.Conv2d(base if k == 0 else w, w, 3, stride=2, padding=1), nn.SiLU()]
        self.encoder = nn.Sequential(*enc, nn.Conv2d(w, latent_channels, 1))
        self.dec_in = nn.Conv2d(latent_channels, w, 3, padding=1)
        self.dec_up = nn.ModuleList([nn.Conv2d(w, w if k < downs - 1 else base, 3, padding=1)
                                     for k in range(downs)])
        self.dec_out = nn.Conv2d(base, channels, 3, padding=1)

    def encode(self, x: Tensor) -> Tensor:
        """(B, C, S, S) -> (B, *latent_shape)."""
        want = (self.channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"ConvAutoencoder expects images of shape (B, {', '.join(map(str, want))}), "
                             f"got {tuple(x.shape)}")
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """(B, *latent_shape) -> (B, C, S, S), unconstrained (clip to [-1, 1] for images)."""
        if z.ndim != 4 or tuple(z.shape[1:]) != self.latent_shape:
            raise ValueError(f"ConvAutoencoder expects latents of shape (B, {self.latent_shape}), "
                             f"got {tuple(z.shape)}")
        h = F.silu(self.dec_in(z))
        for conv, size in zip(self.dec_up, reversed(self.sizes[:-1])):
            h = F.silu(conv(F.interpolate(h, size=size, mode="nearest")))
        return self.dec_out(h)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))


def weighted_reconstruction_loss(model: ConvAutoencoder, x: Tensor, generator=None, per_sample: bool = False,
                                 weight: Tensor | None = None, latent_noise: float = 0.0) -> LossResult:
    """``train``'s loss: Σ w (D(E(x)) - x)² / Σ w per image (w: (S, S) or None = uniform).
    ``latent_noise`` σ decodes E(x) + σ ε instead (a decoder that tolerates noisy latents)."""
    z = model.encode(x)
    if latent_noise:
        z = z + latent_noise * torch.randn(z.shape, generator=generator).to(z)
    err = (model.decode(z) - x) ** 2
    w = torch.ones(x.shape[-2:], device=x.device) if weight is None else weight.to(x.device)
    per = (err * w).sum((-2, -1)).mean(1) / w.sum()
    return LossResult(per.mean(), per.detach() if per_sample else None, None)
