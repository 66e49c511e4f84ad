"""A toy multi-modal policy task for chapter 10's DM1 section: an observation o in [-1, 1]² and
``k`` equally valid 2D actions around it,

    a_j(o) = o + rho (cos theta_j(o), sin theta_j(o)),   theta_j(o) = 2 pi j / k + omega o_1,

a demonstration being one mode chosen uniformly plus N(0, noise²) jitter. The modes rotate with
the observation (``omega``), so a policy must tell nearby observations apart — the setting in
which DM1 reports representation collapse. A sampled action succeeds when it lies within
``tol`` of a valid mode; coverage is the share of the k modes an observation's samples hit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass
class ModalActions:
    k: int = 4
    rho: float = 1.0
    omega: float = 3.0
    noise: float = 0.05
    tol: float = 0.2

    def __post_init__(self):
        if self.k < 1 or not self.rho > 0 or self.noise < 0 or not self.tol > 0:
            raise ValueError("need k >= 1, rho > 0, noise >= 0 and tol > 0")

    def observations(self, n: int, generator: torch.Generator) -> Tensor:
        """o ~ U[-1, 1]²: (n, 2)."""
        return 2 * torch.rand(n, 2, generator=generator) - 1

    def modes(self, obs: Tensor) -> Tensor:
        """The k valid actions of each observation: (n, 2) -> (n, k, 2)."""
        if obs.ndim != 2 or obs.shape[1] != 2:
            raise ValueError(f"observations must have shape (n, 2), got {tuple(obs.shape)}")
        theta = 2 * math.pi * torch.arange(self.k, dtype=obs.dtype) / self.k + self.omega * obs[:, :1]
        return obs[:, None, :] + self.rho * torch.stack([theta.cos(), theta.sin()], -1)

    def demonstrations(self, obs: Tensor, generator: torch.Generator) -> Tensor:
        """One demonstrated action per observation: a uniformly chosen mode plus jitter, (n, 2)."""
        j = torch.randint(0, self.k, (len(obs),), generator=generator)
        a = self.modes(obs)[torch.arange(len(obs)), j]
        return a + self.noise * torch.randn(a.shape, generator=generator)

    def nearest_mode(self, obs: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """(distance to the nearest valid mode (n,), its index (n,)) for actions (n, 2)."""
        d = (self.modes(obs) - actions[:, None, :]).norm(dim=-1)
        return d.min(1)

    def success_rate(self, obs: Tensor, actions: Tensor) -> float:
        """Share of actions within ``tol`` of a valid mode."""
        return float((self.nearest_mode(obs, actions)[0] < self.tol).float().mean())

    def mode_coverage(self, obs: Tensor, actions: Tensor) -> float:
        """actions (n, m, 2), m samples per observation: mean share of the k modes hit."""
        n, m = actions.shape[:2]
        d, j = self.nearest_mode(obs.repeat_interleave(m, 0), actions.reshape(n * m, 2))
        hit = torch.zeros(n, self.k)
        rows = torch.arange(n).repeat_interleave(m)
        ok = d < self.tol
        hit[rows[ok], j[ok]] = 1.0
        return float(hit.mean())
