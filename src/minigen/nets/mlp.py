"""A multilayer perceptron with a time input (and an optional condition): ``model(x, t, cond=None)``.
"""

from __future__ import annotations

import torch
from torch import nn

from minigen.broadcast import expand_t

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
