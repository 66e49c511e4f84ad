"""The Gaussian-to-Gaussian flow of the linear path in closed form: velocity, flow map and average
velocity, the ground truth the one-step losses are tested against (chapter 10).

Source N(m0, diag s0²), data N(m1, diag s1²), independent pairs, x_t = t x1 + (1 - t) x0. The
marginal is N(mu_t, diag sigma_t²) with mu_t = (1 - t) m0 + t m1 and
sigma_t² = (1 - t)² s0² + t² s1²; the marginal velocity E[x1 - x0 | x_t = x] is affine,

    v(x, t) = mu_t' + (sigma_t' / sigma_t) (x - mu_t),

so the standardised coordinate (x - mu_t) / sigma_t is constant along the ODE and the flow map is

    X_{t->r}(x) = mu_r + (sigma_r / sigma_t) (x - mu_t),   u(x, t, r) = (X_{t->r}(x) - x) / (r - t),

with u(x, t, t) = v(x, t) (the limit r -> t).
"""

from __future__ import annotations

import torch

from minigen.broadcast import expand_t

Tensor = torch.Tensor


class GaussianLinearFlow:
    """The closed forms above, per coordinate; also callable as a two-time model
    ``flow(x, t, r=None)`` = u(x, t, r). m0, s0, m1, s1: (d,) tensors (s > 0) or numbers."""

    def __init__(self, m0, s0, m1, s1):
        as64 = lambda a: torch.as_tensor(a, dtype=torch.float64).reshape(-1)
        self.m0, self.s0, self.m1, self.s1 = map(as64, (m0, s0, m1, s1))
        if bool((self.s0 <= 0).any()) or bool((self.s1 <= 0).any()):
            raise ValueError("standard deviations must be positive")

    def _moments(self, t: Tensor, x: Tensor):
        tt = expand_t(t, x)
        mu = (1 - tt) * self.m0 + tt * self.m1
        sig = ((1 - tt) ** 2 * self.s0**2 + tt**2 * self.s1**2).sqrt()
        dsig = (tt * self.s1**2 - (1 - tt) * self.s0**2) / sig
        return mu, sig, dsig

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        """v(x, t) = mu' + (sigma' / sigma)(x - mu): (B, d)."""
        mu, sig, dsig = self._moments(t, x)
        return (self.m1 - self.m0) + dsig / sig * (x - mu)

    def flow_map(self, x: Tensor, t: Tensor, r: Tensor) -> Tensor:
        """X_{t->r}(x) = mu_r + (sigma_r / sigma_t)(x - mu_t): (B, d)."""
        mu_t, sig_t, _ = self._moments(t, x)
        mu_r, sig_r, _ = self._moments(r, x)
        return mu_r + sig_r / sig_t * (x - mu_t)

    def average_velocity(self, x: Tensor, t: Tensor, r: Tensor) -> Tensor:
        """u(x, t, r) = (X_{t->r}(x) - x) / (r - t), and v(x, t) where r = t: (B, d)."""
        gap = expand_t(r, x) - expand_t(t, x)
        safe = torch.where(gap.abs() > 0, gap, torch.ones_like(gap))
        return torch.where(gap.abs() > 0, (self.flow_map(x, t, r) - x) / safe, self.velocity(x, t))

    def sample_source(self, n: int, generator: torch.Generator) -> Tensor:
        return self.m0 + self.s0 * torch.randn(n, len(self.m0), generator=generator, dtype=torch.float64)

    def sample_data(self, n: int, generator: torch.Generator) -> Tensor:
        return self.m1 + self.s1 * torch.randn(n, len(self.m1), generator=generator, dtype=torch.float64)

    def __call__(self, x: Tensor, t: Tensor, r: Tensor | None = None, cond=None) -> Tensor:
        return self.velocity(x, t) if r is None else self.average_velocity(x, t, r)
