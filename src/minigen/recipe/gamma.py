"""gamma(t): the scale of the independent noise z in x_t = alpha x1 + sigma x0 + gamma z
(stochastic interpolants, Albergo, Boffi & Vanden-Eijnden, 2023; the Brownian bridge of
Schrödinger-bridge CFM, Tong et al., 2024). gamma(0) = gamma(1) = 0. Each schedule is a
callable gamma(t) with ``deriv`` gamma'(t) and ``t_eps``, the distance from the ends where
gamma' is singular (0 when it is bounded); ``paths.Interpolant`` adds one to any path.
gamma(t) and gamma'(t) reject t outside [0, 1] (``broadcast.time_checked_methods``).
"""

from __future__ import annotations

import math

import torch

from minigen.broadcast import time_checked_methods

Tensor = torch.Tensor


@time_checked_methods
class ZeroGamma:
    """gamma(t) = 0: a deterministic interpolant (flow matching, rectified flow)."""

    name, t_eps = "zero", 0.0

    def __call__(self, t: Tensor) -> Tensor: return torch.zeros_like(t)
    def deriv(self, t: Tensor) -> Tensor: return torch.zeros_like(t)

@time_checked_methods
class BrownianGamma:
    """gamma(t) = a sqrt(t (1 - t)), the Brownian-bridge scale (Albergo et al., 2023;
    a = sqrt(a') for their sqrt(a' t(1-t))). gamma' = a (1 - 2t) / (2 sqrt(t(1-t))) is
    singular at t = 0, 1: it is evaluated at t clamped to [t_eps, 1 - t_eps]."""

    name = "brownian"

    def __init__(self, a: float = 1.0, t_eps: float = 1e-3):
        if not a > 0 or not 0 < t_eps < 0.5:
            raise ValueError(f"need a > 0 and 0 < t_eps < 0.5, got a={a}, t_eps={t_eps}")
        self.a, self.t_eps = a, t_eps

    def __call__(self, t: Tensor) -> Tensor:
        return self.a * torch.sqrt((t * (1 - t)).clamp_min(0))

    def deriv(self, t: Tensor) -> Tensor:
        t = t.clamp(self.t_eps, 1 - self.t_eps)
        return self.a * (1 - 2 * t) / (2 * torch.sqrt(t * (1 - t)))

@time_checked_methods
class SineSquaredGamma:
    """gamma(t) = a sin²(pi t): zero with zero slope at both ends, so gamma' is bounded."""

    name, t_eps = "sin2", 0.0

    def __init__(self, a: float = 1.0):
        if not a > 0:
            raise ValueError(f"need a > 0, got {a}")
        self.a = a

    def __call__(self, t: Tensor) -> Tensor: return self.a * torch.sin(math.pi * t) ** 2
    def deriv(self, t: Tensor) -> Tensor: return self.a * math.pi * torch.sin(2 * math.pi * t)

GAMMAS = {"zero": ZeroGamma, "brownian": BrownianGamma, "sin2": SineSquaredGamma}

def make_gamma(name: str, a: float = 1.0):
    """Build a gamma schedule by name (see ``GAMMAS``)."""
    if name not in GAMMAS:
        raise ValueError(f"unknown gamma {name!r}; choose from {sorted(GAMMAS)}")
    return ZeroGamma() if name == "zero" else GAMMAS[name](a)
