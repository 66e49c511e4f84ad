"""Data: toy 2D samplers and small image sets, all offline.

Every sampler takes ``n`` and an explicit ``torch.Generator`` and never touches
global RNG state, so a notebook's numbers depend only on its seeds.

``eight_gaussians`` and ``moons`` follow the definitions used by the published
2D tables of torchcfm (Tong et al., "Improving and generalizing flow-based
generative models with minibatch optimal transport", 2023), so W2 numbers
compare with theirs:

* 8gaussians: centres at radius 5 on the 8 compass directions, Gaussian noise
  with covariance sqrt(0.1)·I (std 0.1**0.25 ≈ 0.562 per coordinate);
* moons: torchdyn's generator — the two arcs at evenly spaced angles, shifted
  along the diagonal by one uniform U[0, 0.2) scalar per point, then scaled by
  3 and shifted by -1. This is not sklearn's ``make_moons`` noise; that variant
  is ``moons_sklearn``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

Tensor = torch.Tensor


def _gen(generator: torch.Generator | None) -> torch.Generator:
    if generator is None:
        raise ValueError("pass an explicit torch.Generator: samplers never use global RNG state")
    return generator

def _check_n(n: int) -> int:
    if not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return int(n)

def standard_normal(n: int, generator: torch.Generator, dim: int = 2) -> Tensor:
    """N(0, I) in ``dim`` dimensions: (n, dim)."""
    return torch.randn(_check_n(n), dim, generator=_gen(generator))

def eight_gaussians(n: int, generator: torch.Generator, scale: float = 5.0,
                    var: float = 0.1) -> Tensor:
    """Mixture of 8 Gaussians on a circle of radius ``scale``: (n, 2).

    Noise covariance is sqrt(var)·I, as in torchcfm's ``sample_8gaussians``.
    """
    n, g = _check_n(n), _gen(generator)
    angles = torch.arange(8) * (math.pi / 4)
    centres = scale * torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    idx = torch.randint(0, 8, (n,), generator=g)
    return centres[idx] + var ** 0.25 * torch.randn(n, 2, generator=g)

def moons(n: int, generator: torch.Generator, noise: float = 0.2) -> Tensor:
    """Two interleaved half-moons as torchcfm samples them (torchdyn generator): (n, 2).

    Arc points at evenly spaced angles, plus one U[0, noise) scalar added to both
    coordinates, then ``x * 3 - 1``.
    """
    n, g = _check_n(n), _gen(generator)
    n_out = n // 2
    n_in = n - n_out
    a_out = torch.linspace(0, math.pi, n_out)
    a_in = torch.linspace(0, math.pi, n_in)
    outer = torch.stack([torch.cos(a_out), torch.sin(a_out)], 1)
    inner = torch.stack([1 - torch.cos(a_in), 0.5 - torch.sin(a_in)], 1)
    x = torch.cat([outer, inner]) + noise * torch.rand(n, 1, generator=g)
    return x * 3 - 1

def moons_sklearn(n: int, generator: torch.Generator, noise: float = 0.05) -> Tensor:
    """``make_moons``-style half-moons: random angles, isotropic Gaussian noise: (n, 2).

    Scaled like ``moons`` (x * 3 - 1) so the two variants overlap.
    """
    n, g = _check_n(n), _gen(generator)
    upper = torch.rand(n, generator=g) < 0.5
    a = math.pi * torch.rand(n, generator=g)
    x = torch.where(upper, torch.cos(a), 1 - torch.cos(a))
    y = torch.where(upper, torch.sin(a), 0.5 - torch.sin(a))
    pts = torch.stack([x, y], 1) + noise * torch.randn(n, 2, generator=g)
    return pts * 3 - 1

def checkerboard(n: int, generator: torch.Generator) -> Tensor:
    """Uniform on 8 of the 16 cells of a 4x4 board covering [-4, 4]^2: (n, 2).

    As in the 2D example of Lipman et al., "Flow Matching Guide and Code" (2024).
    The density is 1/32 on its support, so the true mean log-density is log(1/32).
    """
    n, g = _check_n(n), _gen(generator)
    x1 = 4 * torch.rand(n, generator=g) - 2
    x2 = torch.rand(n, generator=g) - 2 * torch.randint(0, 2, (n,), generator=g)
    x2 = x2 + torch.floor(x1) % 2
    return 2 * torch.stack([x1, x2], 1)

def checkerboard_log_density(x: Tensor) -> Tensor:
    """Exact log-density of ``checkerboard``: log(1/32) on the support, -inf off it: (n,)."""
    u = x / 2
    inside = (u.abs() <= 2).all(1)
    parity = (torch.floor(u[:, 0]) + torch.floor(u[:, 1])) % 2
    on = inside & (parity == 0)
    out = torch.full((x.shape[0],), -math.inf, dtype=x.dtype)
    out[on] = -math.log(32.0)
    return out

def spirals(n: int, generator: torch.Generator, noise: float = 0.1) -> Tensor:
    """Two interleaved spirals (arms of up to 1.5 turns), scaled to about [-4, 4]^2: (n, 2)."""
    n, g = _check_n(n), _gen(generator)
    r = torch.sqrt(torch.rand(n, generator=g)) * 3 * math.pi
    arm = torch.randint(0, 2, (n,), generator=g) * 2 - 1
    pts = arm[:, None] * torch.stack([-torch.cos(r) * r, torch.sin(r) * r], 1)
    return pts / 2.5 + noise * torch.randn(n, 2, generator=g)

def rings(n: int, generator: torch.Generator, radii=(1.0, 2.0, 3.0, 4.0),
          noise: float = 0.08) -> Tensor:
    """Concentric circles with equal mass per ring: (n, 2)."""
    n, g = _check_n(n), _gen(generator)
    r = torch.tensor(radii)[torch.randint(0, len(radii), (n,), generator=g)]
    a = 2 * math.pi * torch.rand(n, generator=g)
    return torch.stack([r * torch.cos(a), r * torch.sin(a)], 1) + noise * torch.randn(
        n, 2, generator=g)

def s_curve(n: int, generator: torch.Generator, noise: float = 0.1) -> Tensor:
    """2D projection (x, z) of scikit-learn's S-curve, scaled by 2: (n, 2)."""
    n, g = _check_n(n), _gen(generator)
    t = 3 * math.pi * (torch.rand(n, generator=g) - 0.5)
    pts = torch.stack([torch.sin(t), torch.sign(t) * (torch.cos(t) - 1)], 1)
    return 2 * pts + noise * torch.randn(n, 2, generator=g)

TOY_2D = {
    "normal": standard_normal,
    "8gaussians": eight_gaussians,
    "moons": moons,
    "moons_sklearn": moons_sklearn,
    "checkerboard": checkerboard,
    "spirals": spirals,
    "rings": rings,
    "s_curve": s_curve,
}

def sample_2d(name: str, n: int, generator: torch.Generator) -> Tensor:
    """Sample a toy 2D set by name (see ``TOY_2D``): (n, 2)."""
    if name not in TOY_2D:
        raise ValueError(f"unknown 2D data set {name!r}; choose from {sorted(TOY_2D)}")
    return TOY_2D[name](n, generator)
