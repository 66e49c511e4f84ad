"""A small U-Net with a time (and optional class or image) condition: ``model(x, t, cond=None)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minigen.broadcast import expand_t
from minigen.nets.embeddings import add_label_embedding, sinusoidal_embedding


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
