"""Networks with a time input (and an optional condition): ``model(x, t, cond=None)``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .paths import expand_t

ACTIVATIONS = {"selu": nn.SELU, "silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU,
               "tanh": nn.Tanh, "softplus": nn.Softplus}


class MLP(nn.Module):
    """Time-conditioned MLP on flat vectors: input [x, t (, cond)] -> output of size ``out_dim``.

    ``depth`` hidden layers of width ``width``; t is concatenated as a raw scalar,
    as in the 2D experiments of Tong et al. (2024) (3 x 64, SELU).
    ``cond_dim`` > 0 adds a condition vector (e.g. a one-hot label) to the input.

    Shapes: x (B, dim), t (B,) or scalar, cond (B, cond_dim) -> (B, out_dim).
    """

    def __init__(self, dim: int, width: int = 64, depth: int = 3, activation: str = "selu",
                 cond_dim: int = 0, out_dim: int | None = None):
        super().__init__()
        if dim <= 0 or width <= 0 or depth <= 0:
            raise ValueError(f"dim, width and depth must be positive, got {dim}, {width}, {depth}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {sorted(ACTIVATIONS)}")
        self.dim, self.cond_dim = dim, cond_dim
        act = ACTIVATIONS[activation]
        layers, d_in = [], dim + 1 + cond_dim
        for _ in range(depth):
            layers += [nn.Linear(d_in, width), act()]
            d_in = width
        layers.append(nn.Linear(d_in, out_dim or dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None):
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLP expects x of shape (B, {self.dim}), got {tuple(x.shape)}")
        parts = [x, expand_t(t, x)]
        if self.cond_dim:
            if cond is None or cond.shape != (x.shape[0], self.cond_dim):
                raise ValueError(f"MLP expects cond of shape (B, {self.cond_dim})")
            parts.append(cond)
        return self.net(torch.cat(parts, 1))


# ---------------------------------------------------------------- U-Net

def sinusoidal_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Transformer sinusoids of the time (Vaswani et al., 2017; Ho et al., 2020, App. B).

        e(t) = [sin(s·t·w_0), ..., sin(s·t·w_{h-1}), cos(s·t·w_0), ..., cos(s·t·w_{h-1})],
        w_i = 10000^(-i / h),  h = dim / 2.

    t in [0, 1] is first multiplied by ``scale`` = 1000, so the fastest frequency
    resolves the 1000 discrete steps of DDPM. Shapes: t (B,) -> (B, dim).
    """
    if dim % 2:
        raise ValueError(f"embedding dim must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=t.dtype) / half)
    angles = scale * t[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], 1)


def add_label_embedding(emb: torch.Tensor, label_emb: nn.Embedding | None, num_classes: int | None,
                        cond: torch.Tensor | None, batch: int, name: str) -> torch.Tensor:
    """emb + label_emb(cond) for integer labels cond (B,) in 0..num_classes, where num_classes is
    the null label used when cond is None (classifier-free guidance); emb alone for a network
    without labels. Shapes: emb (B, E) -> (B, E)."""
    if label_emb is None:
        if cond is not None:
            raise ValueError(f"this {name} has no labels (num_classes=None) but got cond")
        return emb
    if cond is None:
        cond = torch.full((batch,), num_classes, dtype=torch.long, device=emb.device)
    if cond.shape != (batch,) or cond.dtype.is_floating_point:
        raise ValueError(f"cond must be integer labels of shape ({batch},), got "
                         f"{cond.dtype} {tuple(cond.shape)}")
    if cond.numel() and (cond.min() < 0 or cond.max() > num_classes):
        raise ValueError(f"labels must be in 0..{num_classes} ({num_classes} = null)")
    return emb + label_emb(cond.long())


class ResBlock(nn.Module):
    """Residual block: GroupNorm, SiLU, 3x3 conv, + time/label embedding, GroupNorm, SiLU, 3x3 conv.

    As in Ho et al. (2020) (a Wide-ResNet block with the embedding added as a
    per-channel bias after the first conv). The skip is a 1x1 conv when the width
    changes. Shapes: h (B, c_in, H, W), emb (B, emb_dim) -> (B, c_out, H, W).
    """

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(groups, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.silu(self.norm1(h))) + self.emb(emb)[:, :, None, None]
        out = self.conv2(self.dropout(F.silu(self.norm2(out))))
        return self.skip(h) + out


class UNet(nn.Module):
    """A small U-Net for images, ``model(x, t, cond=None, cond_image=None)``
    (Ronneberger et al., 2015; Ho et al., 2020).

    Levels of widths ``base * m`` for m in ``mults``, ``blocks`` residual blocks per
    level, two at the bottom, one skip connection per level. Time t in [0, 1] is
    embedded with ``sinusoidal_embedding`` and an MLP to ``emb_dim`` = 4·base.

    Class labels (``num_classes`` not None): an embedding of ``num_classes + 1``
    rows is added to the time embedding; row ``num_classes`` is the *null label*
    used when ``cond`` is None (or where cond == num_classes), so one network
    gives both the conditional and the unconditional prediction of
    classifier-free guidance (Ho & Salimans, 2022).

    Odd sizes: downsampling is a 3x3 conv with stride 2 and padding 1, so a side
    n becomes ceil(n / 2) (28 -> 14 -> 7, 14 -> 7 -> 4, 8 -> 4 -> 2); upsampling
    is nearest-neighbour interpolation *to the exact size of the skip* followed
    by a 3x3 conv, so no padding or cropping is needed and the output has the
    input's shape for every side >= 2^(levels - 1).

    Image conditioning (``cond_channels`` > 0): ``cond_image`` (B, cond_channels, H, W) is
    concatenated to x along the channels before the first conv, and the output keeps x's
    ``channels`` — DiffuseVAE's formulation 1, where the VAE's reconstruction y conditions
    the refiner eps_theta(x_t, y, t) (Pandey et al., 2022, §3.1). cond_channels = 0 (the
    default) is the unconditioned network, with the same parameters as before.

    Shapes: x (B, channels, H, W), t (B,) or scalar, cond (B,) int64 or None,
    cond_image (B, cond_channels, H, W) or None -> (B, channels, H, W).
    """

    def __init__(self, channels: int = 1, base: int = 32, mults=(1, 2), num_classes: int | None = None,
                 blocks: int = 1, groups: int = 8, dropout: float = 0.0, cond_channels: int = 0):
        super().__init__()
        if channels <= 0 or base <= 0 or blocks <= 0 or not mults:
            raise ValueError(f"channels, base, blocks must be positive and mults non-empty, got "
                             f"{channels}, {base}, {blocks}, {mults}")
        widths = [base * m for m in mults]
        if any(w % groups for w in widths):
            raise ValueError(f"every width {widths} must be divisible by groups={groups}")
        if num_classes is not None and num_classes <= 0:
            raise ValueError(f"num_classes must be positive or None, got {num_classes}")
        if not isinstance(cond_channels, int) or cond_channels < 0:
            raise ValueError(f"cond_channels must be an integer >= 0, got {cond_channels!r}")
        self.channels, self.num_classes, self.base = channels, num_classes, base
        self.cond_channels = cond_channels
        emb = 4 * base
        self.time_mlp = nn.Sequential(nn.Linear(base, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.label_emb = nn.Embedding(num_classes + 1, emb) if num_classes is not None else None
        self.conv_in = nn.Conv2d(channels + cond_channels, base, 3, padding=1)
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        c = base
        for i, w in enumerate(widths):
            self.down.append(nn.ModuleList(
                [ResBlock(c if j == 0 else w, w, emb, groups, dropout) for j in range(blocks)]))
            c = w
            if i < len(widths) - 1:
                self.downsample.append(nn.Conv2d(w, w, 3, stride=2, padding=1))
        self.mid = nn.ModuleList([ResBlock(c, c, emb, groups, dropout) for _ in range(2)])
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(widths))):
            w = widths[i]
            if i < len(widths) - 1:
                self.upsample.append(nn.Conv2d(c, c, 3, padding=1))
            self.up.append(nn.ModuleList(
                [ResBlock(c + w if j == 0 else w, w, emb, groups, dropout) for j in range(blocks)]))
            c = w
        self.norm_out = nn.GroupNorm(groups, c)
        self.conv_out = nn.Conv2d(c, channels, 3, padding=1)

    def embedding(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """Time embedding plus label embedding (null label when cond is None): (B, 4·base)."""
        return add_label_embedding(self.time_mlp(sinusoidal_embedding(expand_t(t, x).view(-1), self.base)),
                                   self.label_emb, self.num_classes, cond, len(x), 'UNet')

    def network_input(self, x: torch.Tensor, cond_image: torch.Tensor | None) -> torch.Tensor:
        """x, or [x, cond_image] along the channels when cond_channels > 0:
        (B, channels (+ cond_channels), H, W)."""
        if not self.cond_channels:
            if cond_image is not None:
                raise ValueError("this UNet takes no image condition (cond_channels=0) but got cond_image")
            return x
        want = (x.shape[0], self.cond_channels, *x.shape[2:])
        if cond_image is None:
            raise ValueError(f"this UNet needs cond_image of shape {want} (cond_channels="
                             f"{self.cond_channels})")
        if tuple(cond_image.shape) != want:
            raise ValueError(f"cond_image must have shape {want}, got {tuple(cond_image.shape)}")
        return torch.cat([x, cond_image.to(x.dtype)], 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None,
                cond_image: torch.Tensor | None = None):
        levels = len(self.down)
        if x.ndim != 4 or x.shape[1] != self.channels or min(x.shape[2:]) < 2 ** (levels - 1):
            raise ValueError(f"UNet expects x of shape (B, {self.channels}, H, W) with H, W >= "
                             f"{2 ** (levels - 1)}, got {tuple(x.shape)}")
        emb = self.embedding(x, t, cond)
        h, skips = self.conv_in(self.network_input(x, cond_image)), []
        for i, blocks in enumerate(self.down):
            for block in blocks:
                h = block(h, emb)
            skips.append(h)
            if i < levels - 1:
                h = self.downsample[i](h)
        for block in self.mid:
            h = block(h, emb)
        for k, blocks in enumerate(self.up):
            skip = skips.pop()
            if k > 0:
                h = self.upsample[k - 1](F.interpolate(h, size=skip.shape[2:], mode="nearest"))
            h = torch.cat([h, skip], 1)
            for block in blocks:
                h = block(h, emb)
        return self.conv_out(F.silu(self.norm_out(h)))


# ---------------------------------------------------------------- patch transformer (DiT)

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
