"""Blockwise flow matching (Park et al., 2025, "Blockwise Flow Matching: Improving Flow Matching
Models For Efficient High-Quality Generation", §3): split [0, 1] into M segments
0 = e_0 < e_1 < .. < e_M = 1 and give each its own, smaller velocity network, trained only on
times inside its segment. A sampler step at time t evaluates the one network whose segment holds
t, so an evaluation costs one small network, not one large one, and each network specialises
in the signal it sees (coarse structure near the noise, detail near the data).
"""

from __future__ import annotations

import torch
from torch import nn

from minigen.recipe.results import LossResult

Tensor = torch.Tensor


def check_edges(edges) -> Tensor:
    """Segment edges as an increasing float64 tensor from 0 to 1: (M+1,), M >= 1."""
    edges = torch.as_tensor(edges, dtype=torch.float64).flatten()
    if len(edges) < 2 or edges[0] != 0 or edges[-1] != 1 or not bool((edges[1:] > edges[:-1]).all()):
        raise ValueError(f"segment edges must increase from 0 to 1, got {edges.tolist()}")
    return edges


class BlockwiseVelocity(nn.Module):
    """v(x, t) = v_m(x, t) for t in [e_m, e_{m+1}) (the last segment closed at 1): one network
    per segment, ``model(x, t, **cond)`` each. Shapes: x (B, ...), t (B,) -> (B, ...)."""

    def __init__(self, nets: list[nn.Module], edges):
        super().__init__()
        self.edges = check_edges(edges)
        if len(nets) != len(self.edges) - 1:
            raise ValueError(f"{len(self.edges) - 1} segments need as many networks, got {len(nets)}")
        self.nets = nn.ModuleList(nets)

    def segment(self, t: Tensor) -> Tensor:
        """The segment index of each t: (B,) int64 in 0..M-1."""
        inner = self.edges[1:-1].to(t.device, torch.float64)
        return torch.bucketize(t.double(), inner, right=True)

    def forward(self, x: Tensor, t: Tensor, **cond) -> Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        seg = self.segment(t)
        first = int(seg[0])
        if bool((seg == first).all()):  # a sampler's step: the whole batch in one segment
            return self.nets[first](x, t, **cond)
        out = torch.empty_like(x)
        for m in seg.unique().tolist():
            idx = (seg == m).nonzero().squeeze(1)
            out[idx] = self.nets[m](x[idx], t[idx], **{k: c[idx] for k, c in cond.items()})
        return out


def segment_cfm_loss(path, lo: float, hi: float):
    """Conditional flow matching with t ~ U(lo, hi) only (one segment's network; Lipman et al.,
    2023, eq. 23 restricted in t): a loss ``(model, x0, x1, generator, per_sample=False)`` for
    ``train``, target the path's conditional velocity."""
    if not 0 <= lo < hi <= 1:
        raise ValueError(f"need 0 <= lo < hi <= 1, got {lo}, {hi}")

    def loss(model: nn.Module, x0: Tensor, x1: Tensor, generator: torch.Generator,
             per_sample: bool = False) -> LossResult:
        t = (lo + (hi - lo) * torch.rand(len(x1), generator=generator, dtype=torch.float64)).to(x1)
        ps = path.sample(x0, x1, t)
        err = (model(ps.xt, t) - ps.dxt).pow(2).flatten(1).mean(1)
        return LossResult(err.mean(), err.detach() if per_sample else None, t)

    return loss
