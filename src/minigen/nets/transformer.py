"""A small patch transformer (DiT-style adaLN blocks) with a time input: ``model(x, t, cond=None)``.
"""

from __future__ import annotations

import torch
from torch import nn

from minigen.broadcast import expand_t
from minigen.nets.embeddings import add_label_embedding, sinusoidal_embedding


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """Cut images into non-overlapping p x p patches, row-major: (B, C, H, W) -> (B, HW/p², C p²)."""
    b, c, h, w = x.shape
    if h % p or w % p:
        raise ValueError(f"image side {h}x{w} is not divisible by the patch size {p}")
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)

def unpatchify(tokens: torch.Tensor, p: int, channels: int, h: int, w: int) -> torch.Tensor:
    """Inverse of ``patchify``: (B, HW/p², C p²) -> (B, C, H, W)."""
    b = tokens.shape[0]
    x = tokens.reshape(b, h // p, w // p, channels, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels, h, w)

def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Adaptive layer norm's affine part: x (1 + scale) + shift, per sample: (B, N, D), (B, D)."""
    return x * (1 + scale[:, None]) + shift[:, None]

class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning (Peebles & Xie, 2023, §3.2, Fig. 3):

        x <- x + g1 * Attn(modulate(LN(x), b1, s1)),   x <- x + g2 * MLP(modulate(LN(x), b2, s2)),

    where (b1, s1, g1, b2, s2, g2) = Linear(SiLU(c)) is initialised to zero, so every block
    starts as the identity. Shapes: x (B, N, D), c (B, D) -> (B, N, D).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        b1, s1, g1, b2, s2, g2 = self.ada(c).chunk(6, dim=1)
        h = modulate(self.norm1(x), b1, s1)
        x = x + g1[:, None] * self.attn(h, h, h, need_weights=False)[0]
        return x + g2[:, None] * self.mlp(modulate(self.norm2(x), b2, s2))

class PatchTransformer(nn.Module):
    """A small diffusion transformer, ``model(x, t, cond=None)`` like ``UNet`` (Peebles & Xie,
    2023, "Scalable Diffusion Models with Transformers"; the backbone family of Esser et al., 2024).

    Patchify p x p patches with a linear embedding, add a learned position embedding
    (initialised with 2D sinusoids), ``depth`` adaLN-Zero blocks conditioned on
    c = MLP(sinusoidal(t)) (+ a label embedding with a null label, as in ``UNet``), a final
    adaLN + linear layer initialised to zero (the network starts at output 0), unpatchify.

    Shapes: x (B, channels, image_size, image_size), t (B,) or scalar, cond (B,) int64 or
    None -> (B, channels, image_size, image_size).
    """

    def __init__(self, channels: int = 1, image_size: int = 8, patch: int = 2, dim: int = 64,
                 depth: int = 4, heads: int = 4, num_classes: int | None = None):
        super().__init__()
        if min(channels, image_size, patch, dim, depth, heads) <= 0:
            raise ValueError("channels, image_size, patch, dim, depth and heads must be positive")
        if image_size % patch:
            raise ValueError(f"image_size {image_size} is not divisible by patch {patch}")
        if dim % heads or dim % 4:
            raise ValueError(f"dim {dim} must be divisible by heads={heads} and by 4")
        if num_classes is not None and num_classes <= 0:
            raise ValueError(f"num_classes must be positive or None, got {num_classes}")
        self.channels, self.image_size, self.patch, self.dim = channels, image_size, patch, dim
        self.num_classes = num_classes
        n_side = image_size // patch
        self.embed = nn.Linear(channels * patch * patch, dim)
        self.pos = nn.Parameter(self.sincos_positions(n_side, dim))
        self.time_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.label_emb = nn.Embedding(num_classes + 1, dim) if num_classes is not None else None
        self.blocks = nn.ModuleList([DiTBlock(dim, heads) for _ in range(depth)])
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.out = nn.Linear(dim, channels * patch * patch)
        for layer in (self.ada_out[1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @staticmethod
    def sincos_positions(n_side: int, dim: int) -> torch.Tensor:
        """2D sine-cosine position embedding: half the channels encode the row, half the column
        (Vaswani et al., 2017, per axis): (n_side², dim)."""
        rows, cols = torch.meshgrid(torch.arange(n_side), torch.arange(n_side), indexing="ij")
        emb = [sinusoidal_embedding(a.flatten().float(), dim // 2, scale=1.0) for a in (rows, cols)]
        return torch.cat(emb, 1)

    def conditioning(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """c = MLP(sinusoidal(t)) (+ label embedding; null label when cond is None): (B, dim)."""
        return add_label_embedding(self.time_mlp(sinusoidal_embedding(expand_t(t, x).view(-1), self.dim)),
                                   self.label_emb, self.num_classes, cond, len(x), 'PatchTransformer')

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None):
        s = self.image_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (self.channels, s, s):
            raise ValueError(f"PatchTransformer expects x of shape (B, {self.channels}, {s}, {s}), "
                             f"got {tuple(x.shape)}")
        c = self.conditioning(x, t, cond)
        h = self.embed(patchify(x, self.patch)) + self.pos
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.ada_out(c).chunk(2, dim=1)
        h = self.out(modulate(self.norm_out(h), shift, scale))
        return unpatchify(h, self.patch, self.channels, s, s)
