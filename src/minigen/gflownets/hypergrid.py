"""The hypergrid environment (Bengio et al., 2021, "Flow network based generative models for
non-iterative diverse candidate generation", section 4.1; Malkin et al., 2022, "Trajectory
balance", section 5.1).

States are the points x of {0, ..., H-1}^D; every trajectory starts at s_0 = (0, ..., 0). An
action either increments one coordinate (action d < D, allowed while x_d < H - 1) or stops
(action D, always allowed): the stop action sends x to the sink s_f and makes x the terminal
object. So every state is terminable, a trajectory has at most D (H - 1) + 1 actions, and the
parents of x are the states x - e_d with x_d > 0. The reward, with u_d = |x_d / (H - 1) - 0.5|,

    R(x) = R0 + 0.5 prod_d 1[0.25 < u_d <= 0.5] + 2 prod_d 1[0.3 < u_d < 0.4],

has 2^D maximal-reward regions (the modes) near the corners; a smaller R0 makes the valleys
between them deeper and exploration harder (R0 in {0.1, 0.01, 0.001} in the papers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class Hypergrid:
    """D dimensions of height H, reward R(x) = r0 + r1 [outer band] + r2 [inner band]."""

    dim: int = 2
    height: int = 8
    r0: float = 0.1
    r1: float = 0.5
    r2: float = 2.0

    def __post_init__(self):
        if not (isinstance(self.dim, int) and self.dim >= 1):
            raise ValueError(f"dim must be an integer >= 1, got {self.dim!r}")
        if not (isinstance(self.height, int) and self.height >= 2):
            raise ValueError(f"height must be an integer >= 2, got {self.height!r}")
        if not (math.isfinite(self.r0) and self.r0 > 0):
            raise ValueError(f"r0 must be > 0 (log R must be finite everywhere), got {self.r0!r}")
        if not (self.r1 >= 0 and self.r2 >= 0):
            raise ValueError(f"r1 and r2 must be >= 0, got {self.r1!r}, {self.r2!r}")
        if self.height ** self.dim > 2 ** 22:
            raise ValueError(f"H^D = {self.height ** self.dim} states is too many to enumerate")

    @property
    def n_states(self) -> int:
        return self.height ** self.dim

    @property
    def n_actions(self) -> int:
        """D increments and the stop action (index D)."""
        return self.dim + 1

    @property
    def max_len(self) -> int:
        """The most actions a trajectory takes: D (H - 1) increments and the stop."""
        return self.dim * (self.height - 1) + 1

    def check(self, x: Tensor) -> Tensor:
        """x as a (B, D) long tensor of coordinates in [0, H); else ValueError."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"states must have shape (B, {self.dim}), got {tuple(x.shape)}")
        if x.dtype.is_floating_point or bool(((x < 0) | (x >= self.height)).any()):
            raise ValueError(f"states must be integers in [0, {self.height})")
        return x.long()

    def all_states(self) -> Tensor:
        """Every state, (H^D, D), in the order of ``index`` (row i has index i)."""
        grids = torch.meshgrid(*[torch.arange(self.height)] * self.dim, indexing="ij")
        return torch.stack([g.reshape(-1) for g in grids], 1)

    def index(self, x: Tensor) -> Tensor:
        """The flat index sum_d x_d H^(D-1-d): (..., D) -> (...)."""
        w = self.height ** torch.arange(self.dim - 1, -1, -1, device=x.device)
        return (x.long() * w).sum(-1)

    def stride(self, d: int) -> int:
        """How much the flat index grows when coordinate d is incremented."""
        return self.height ** (self.dim - 1 - d)

    def reward(self, x: Tensor) -> Tensor:
        """R(x) above: (..., D) -> (...), float64."""
        u = (x.double() / (self.height - 1) - 0.5).abs()
        outer = ((u > 0.25) & (u <= 0.5)).all(-1).double()
        inner = ((u > 0.3) & (u < 0.4)).all(-1).double()
        return self.r0 + self.r1 * outer + self.r2 * inner

    def log_reward(self, x: Tensor) -> Tensor:
        """log R(x): (..., D) -> (...), float32 (R >= r0 > 0, so always finite)."""
        return self.reward(x).log().float()

    def forward_mask(self, x: Tensor) -> Tensor:
        """(..., D) -> (..., D + 1) bool: increment d allowed iff x_d < H - 1; stop always."""
        inc = x < self.height - 1
        return torch.cat([inc, torch.ones_like(inc[..., :1])], -1)

    def backward_mask(self, x: Tensor) -> Tensor:
        """(..., D) -> (..., D) bool: the parent x - e_d exists iff x_d > 0."""
        return x > 0

    def n_parents(self, x: Tensor) -> Tensor:
        """How many parents x has, (..., D) -> (...) (0 only for s_0)."""
        return self.backward_mask(x).sum(-1)

    def encode(self, x: Tensor) -> Tensor:
        """The one-hot input of the policy network: (..., D) -> (..., D H), float32."""
        return torch.nn.functional.one_hot(x.long(), self.height).flatten(-2).float()

    def mode_id(self, x: Tensor) -> Tensor:
        """Which of the 2^D maximal-reward regions x lies in (bit d: x_d in the upper half),
        or -1 if R(x) is not maximal: (..., D) -> (...) long."""
        u = (x.double() / (self.height - 1) - 0.5).abs()
        top = ((u > 0.3) & (u < 0.4)).all(-1) & ((u > 0.25) & (u <= 0.5)).all(-1)
        bits = (2 * x > self.height - 1).long() * (2 ** torch.arange(self.dim, device=x.device))
        return torch.where(top, bits.sum(-1), torch.full_like(bits[..., 0], -1))

    def n_modes(self) -> int:
        """How many distinct maximal-reward regions exist (2^D when H is large enough)."""
        ids = self.mode_id(self.all_states())
        return int(ids[ids >= 0].unique().numel())
