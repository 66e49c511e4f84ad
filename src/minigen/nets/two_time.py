"""Networks with two times, ``model(x, t, r=None, **cond)``, for average velocities and flow maps
(chapter 10): u(x, t, r) is the average velocity from time t to time r >= t, and ``r=None``
means r = t, where u is the instantaneous velocity v(x, t).

    TwoTimeMLP    the 2D toys' MLP with the gap r - t as a second time input; ``features``
                  returns its hidden activations (the dispersive regulariser reads them)
    TwoTimeUNet   ``nets.unet.UNet`` with a second sinusoidal embedding of r - t added to the
                  time embedding, zero-initialised, so that a flow-matching U-Net's weights load
                  into it unchanged (``from_velocity_unet``) and it starts as u(x, t, r) = v(x, t)

Both take the gap r - t rather than r: the instantaneous velocity is then the network at gap 0,
whatever t (Geng et al., 2025, "Mean Flows for One-step Generative Modeling", also feed t - r).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minigen.broadcast import expand_t
from minigen.nets.embeddings import sinusoidal_embedding
from minigen.nets.mlp import ACTIVATIONS
from minigen.nets.unet import UNet

Tensor = torch.Tensor


def time_gap(x: Tensor, t: Tensor, r: Tensor | None) -> tuple[Tensor, Tensor]:
    """(t, r - t) as (B,) tensors in x's dtype; r = None means r = t (gap 0)."""
    tt = expand_t(t, x).reshape(-1)
    if r is None:
        return tt, torch.zeros_like(tt)
    return tt, expand_t(r, x).reshape(-1) - tt


class TwoTimeMLP(nn.Module):
    """MLP on [x, t, r - t (, cond)] -> (B, dim): ``depth`` hidden layers of ``width``.

    Shapes: x (B, dim), t and r (B,) or scalars, cond (B, cond_dim) -> (B, dim).
    """

    def __init__(self, dim: int, width: int = 128, depth: int = 3, activation: str = "silu",
                 cond_dim: int = 0):
        super().__init__()
        if dim <= 0 or width <= 0 or depth <= 0 or cond_dim < 0:
            raise ValueError(f"dim, width, depth must be positive and cond_dim >= 0, got "
                             f"{dim}, {width}, {depth}, {cond_dim}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {sorted(ACTIVATIONS)}")
        self.dim, self.cond_dim = dim, cond_dim
        sizes = [dim + 2 + cond_dim] + [width] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.act = ACTIVATIONS[activation]()
        self.out = nn.Linear(width, dim)

    def features(self, x: Tensor, t: Tensor, r: Tensor | None = None,
                 cond: Tensor | None = None) -> list[Tensor]:
        """The hidden activations, one (B, width) tensor per layer."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"TwoTimeMLP expects x of shape (B, {self.dim}), got {tuple(x.shape)}")
        tt, gap = time_gap(x, t, r)
        parts = [x, tt[:, None], gap[:, None]]
        if self.cond_dim:
            if cond is None or cond.shape != (x.shape[0], self.cond_dim):
                raise ValueError(f"TwoTimeMLP expects cond of shape (B, {self.cond_dim})")
            parts.append(cond)
        elif cond is not None:
            raise ValueError("this TwoTimeMLP takes no condition (cond_dim=0) but got cond")
        h, feats = torch.cat(parts, 1), []
        for layer in self.hidden:
            h = self.act(layer(h))
            feats.append(h)
        return feats

    def forward(self, x: Tensor, t: Tensor, r: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        return self.out(self.features(x, t, r, cond)[-1])


class TwoTimeUNet(UNet):
    """``UNet`` with the gap r - t embedded like t (sinusoids and an MLP) and added to the time
    embedding; the gap MLP's last layer starts at zero, so the untrained gap branch changes
    nothing. All other arguments are ``UNet``'s.

    Shapes: x (B, channels, H, W), t and r (B,) or scalars, cond (B,) int64 or None -> x's shape.
    """

    def __init__(self, channels: int = 1, base: int = 32, mults=(1, 2), **kw):
        super().__init__(channels, base, mults, **kw)
        emb = 4 * base
        self.gap_mlp = nn.Sequential(nn.Linear(base, emb), nn.SiLU(), nn.Linear(emb, emb))
        nn.init.zeros_(self.gap_mlp[-1].weight)
        nn.init.zeros_(self.gap_mlp[-1].bias)

    @classmethod
    def from_velocity_unet(cls, unet: UNet, **kw) -> TwoTimeUNet:
        """A two-time U-Net holding a trained ``UNet``'s weights: u(x, t, r) = v(x, t) at first.
        ``kw``: the ``UNet`` arguments other than channels, base, mults and num_classes."""
        mults = tuple(blocks[0].conv1.out_channels // unet.base for blocks in unet.down)
        kw.setdefault("blocks", len(unet.down[0]))
        net = cls(unet.channels, unet.base, mults, num_classes=unet.num_classes, **kw)
        missing, unexpected = net.load_state_dict(unet.state_dict(), strict=False)
        if unexpected or any(not k.startswith("gap_mlp") for k in missing):
            raise ValueError(f"the U-Net does not match: missing {missing}, unexpected {unexpected}")
        return net

    def forward(self, x: Tensor, t: Tensor, r: Tensor | None = None, cond: Tensor | None = None,
                cond_image: Tensor | None = None) -> Tensor:
        levels = len(self.down)
        if x.ndim != 4 or x.shape[1] != self.channels or min(x.shape[2:]) < 2 ** (levels - 1):
            raise ValueError(f"TwoTimeUNet expects x of shape (B, {self.channels}, H, W) with H, W >= "
                             f"{2 ** (levels - 1)}, got {tuple(x.shape)}")
        _, gap = time_gap(x, t, r)
        emb = self.embedding(x, t, cond) + self.gap_mlp(sinusoidal_embedding(gap, self.base))
        h, skips = self.conv_in(self.network_input(x, cond_image)), []
        for i, blocks in enumerate(self.down):  # UNet.forward's body, with this embedding
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
