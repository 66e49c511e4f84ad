"""Data definitions (the published 2D sets), image loaders, bits/dim, and metrics."""

from __future__ import annotations

import math

import torch

from minigen import data, metrics

torch.set_num_threads(1)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_eight_gaussians_is_torchcfms_definition():
    """Centres at radius 5, covariance sqrt(0.1) I: per-coordinate std 0.1**0.25 ≈ 0.562.
    With 80000 points the std estimate of each mode has a relative error ~ 1 %."""
    x = data.eight_gaussians(80_000, gen(1))
    angle = torch.atan2(x[:, 1], x[:, 0])
    k = torch.round(angle / (math.pi / 4)) % 8
    centres = 5 * torch.stack([torch.cos(k * math.pi / 4), torch.sin(k * math.pi / 4)], 1)
    resid = x - centres
    assert resid.mean(0).abs().max() < 0.02
    assert abs(float(resid.std(0).mean()) - 0.1 ** 0.25) < 0.02
    assert torch.equal(data.eight_gaussians(50, gen(2)), data.eight_gaussians(50, gen(2)))


def test_moons_is_torchdyns_generator_scaled():
    """Arc points at evenly spaced angles, one U[0, 0.2) shift on both coordinates, then
    3x - 1: undoing the scaling and the shift must land exactly on the arcs."""
    n = 1001
    x = (data.moons(n, gen(3)) + 1) / 3
    shift = x[:, 0] - x[:, 0].new_tensor(
        torch.cat([torch.cos(torch.linspace(0, math.pi, n // 2)),
                   1 - torch.cos(torch.linspace(0, math.pi, n - n // 2))]).tolist())
    assert shift.min() >= -1e-6 and shift.max() < 0.2
    y = x[:, 1] - shift
    arcs = torch.cat([torch.sin(torch.linspace(0, math.pi, n // 2)),
                      0.5 - torch.sin(torch.linspace(0, math.pi, n - n // 2))])
    assert torch.allclose(y, arcs, atol=1e-5)


def test_checkerboard_density():
    g = gen(4)
    x = data.checkerboard(5000, g)
    assert torch.all(data.checkerboard_log_density(x) == -math.log(32))
    # integrates to one: mean density on a fine grid of [-4, 4]^2 times the area 64
    s = torch.linspace(-4 + 0.02, 4 - 0.02, 200)
    grid = torch.stack(torch.meshgrid(s, s, indexing="xy"), -1).reshape(-1, 2)
    mass = torch.exp(data.checkerboard_log_density(grid)).mean() * 64
    assert abs(float(mass) - 1) < 1e-6


def test_bits_per_dim_of_a_uniform_density_is_log2_levels():
    """The uniform density 2^-D on [-1, 1]^D assigns each of K^D bins mass K^-D: log2 K bits/dim."""
    d, k = 64, 17
    log_p = torch.full((5,), -d * math.log(2.0))
    assert torch.allclose(data.bits_per_dim(log_p, d, k), torch.full((5,), math.log2(k)))


def test_dequantize_stays_in_bins():
    levels = torch.randint(0, 256, (100, 1, 4, 4), generator=gen(5))
    y = data.dequantize(levels, 256, gen(6))
    assert y.min() >= -1 and y.max() < 1
    assert torch.equal(torch.floor((y + 1) / 2 * 256).long(), levels)


def test_image_loaders_split_seeded_and_disjoint():
    (xtr, ytr), (xte, yte) = data.load_digits_8x8()
    assert xtr.shape[1:] == (1, 8, 8) and len(xtr) + len(xte) == 1797
    assert xtr.dtype == torch.uint8 and int(xtr.max()) == 16
    (a, _), _ = data.load_digits_8x8(seed=0)
    assert torch.equal(a, xtr)
    (mtr, mytr), (mte, myte) = data.load_mnist_5k()
    assert mtr.shape[1:] == (1, 28, 28) and len(mtr) + len(mte) == 5000
    assert int(mtr.max()) == 255
    # shuffled before the split: every class in both parts
    assert set(mytr.tolist()) == set(range(10)) == set(myte.tolist())
    flat_tr = {bytes(x.flatten().numpy()) for x in mtr}
    assert not any(bytes(x.flatten().numpy()) in flat_tr for x in mte[:200])


def test_w2_known_answers():
    g = gen(7)
    x = torch.randn(1000, 2, generator=g)
    y = torch.randn(1000, 2, generator=g) + torch.tensor([2.0, 0.0])
    # W2²(N(0,I), N(m,I)) = |m|² = 4; finite samples add a small positive bias (~0.05)
    assert abs(metrics.wasserstein2_squared(x, y) - 4) < 0.25
    assert metrics.wasserstein2_squared(x, x) < 1e-12
    a, b = torch.randn(5, 2, generator=g), torch.randn(5, 2, generator=g)
    from itertools import permutations

    brute = min(float(((a - b[list(p)]) ** 2).sum(1).mean()) for p in permutations(range(5)))
    assert abs(metrics.wasserstein2_squared(a, b) - brute) < 1e-6  # brute force in float32
    assert abs(metrics.wasserstein2_squared(a, b) - metrics.wasserstein2_squared(b, a)) < 1e-9


def test_mmd_sliced_straightness_path_energy():
    g = gen(8)
    x, x2 = torch.randn(500, 2, generator=g), torch.randn(500, 2, generator=g)
    assert abs(metrics.mmd(x, x2)) < 0.01 < metrics.mmd(x, x2 + 1)
    assert metrics.sliced_wasserstein(x, x, g) < 1e-12
    c = torch.tensor([1.0, -2.0])
    const = lambda z, t: c.expand_as(z)
    assert metrics.straightness(const, x) < 1e-10
    assert abs(metrics.path_energy(const, x) - 5.0) < 1e-5
    try:
        metrics.normalized_path_energy(1.0, 0.0)
    except ValueError:
        pass
    else:
        raise AssertionError("w2sq = 0 accepted")
