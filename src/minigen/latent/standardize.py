"""Latent standardisation: the per-channel shift and scale of the training latents.

An autoencoder trained on reconstruction alone leaves its latents at whatever scale
training found (Stable Diffusion's first stage had a standard deviation of about 5.5, hence
its "magic" factor 0.18215 = 1 / 5.49; Rombach et al., 2022, App. G). A flow or diffusion in
latent space assumes data of roughly unit scale: its source N(0, I), its noise schedule and
its time sampler are all set for it. Measuring on the training latents, per channel c,

    m_c = mean(z_c),   s_c = std(z_c),   z̃ = (z - m) / s,

gives standardised latents with zero mean and unit variance per channel; samples are mapped
back with z = s z̃ + m before decoding. ``LatentStats.scaled(k)`` gives deliberately
mis-scaled statistics (latents k times too large) to show what the factor does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class LatentStats:
    """Per-channel shift (C,) and scale (C,) of (B, C, ...) latents."""

    shift: Tensor
    scale: Tensor

    @classmethod
    def measured(cls, z: Tensor, eps: float = 1e-8) -> LatentStats:
        """m_c, s_c over the batch and spatial positions of training latents z (B, C, ...)."""
        if z.ndim < 2 or len(z) < 2:
            raise ValueError(f"need at least 2 latents of shape (B, C, ...), got {tuple(z.shape)}")
        flat = z.detach().transpose(0, 1).reshape(z.shape[1], -1)
        return cls(flat.mean(1), flat.std(1).clamp_min(eps))

    def _view(self, p: Tensor, z: Tensor) -> Tensor:
        return p.to(z).view(1, -1, *([1] * (z.ndim - 2)))

    def standardize(self, z: Tensor) -> Tensor:
        """(z - m) / s per channel."""
        return (z - self._view(self.shift, z)) / self._view(self.scale, z)

    def unstandardize(self, z: Tensor) -> Tensor:
        """s z + m per channel (the inverse of ``standardize``)."""
        return z * self._view(self.scale, z) + self._view(self.shift, z)

    def scaled(self, factor: float) -> LatentStats:
        """Statistics that make standardised latents ``factor`` times too large (x0.2, x5)."""
        if not factor > 0:
            raise ValueError(f"factor must be > 0, got {factor}")
        return LatentStats(self.shift, self.scale / factor)
