"""Figures of merit (W2, MMD, sliced W2, path energy, straightness) on known answers, and
the results-JSON recorder."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from minigen.eval import metrics
from minigen.workbook import record

torch.set_num_threads(1)
F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------ W2

def test_w2_between_shifted_gaussian_samples():
    """For any equal-size sets, W2²(x, y + m) = W2²(x, y) + |m|² - 2 m.(mean x - mean y):
    the cross term sum_i m.(x_i - y_s(i)) does not depend on the permutation s. So:
    (i) that identity holds to LP accuracy, and (ii) against N(0, I) vs N(m, I),
    |W2² - |m|²| <= 5 SD of the linear term (2 |m| sqrt(2/n) = 0.18 at n = 1000,
    |m| = 2) + the finite-sample bias W2²(x, y) of two N(0, I) samples (>= 0; measured
    0.033 at n = 1000 in 2D; W2² = 3.79 here)."""
    g = gen(0)
    n = 1000
    m = torch.tensor([2.0, 0.0], dtype=F64)
    x, y = torch.randn(n, 2, generator=g, dtype=F64), torch.randn(n, 2, generator=g, dtype=F64)
    shifted = metrics.wasserstein2_squared(x, y + m)
    base = metrics.wasserstein2_squared(x, y)
    lin = float(m @ m - 2 * m @ (x.mean(0) - y.mean(0)))
    assert shifted == pytest.approx(base + lin, abs=1e-9)
    assert 0 < base < 0.1  # the bias decays like log(n)/n in 2D: 0.033 measured
    assert abs(shifted - 4.0) < 5 * 2 * 2.0 * math.sqrt(2 / n) + base
    assert metrics.wasserstein2(x, y + m) == pytest.approx(math.sqrt(shifted))


def test_w2_of_a_set_with_itself_is_zero_and_w2_is_symmetric():
    g = gen(1)
    x, y = torch.randn(300, 3, generator=g), torch.randn(200, 3, generator=g) + 0.5
    assert metrics.wasserstein2_squared(x, x) == pytest.approx(0.0, abs=1e-12)
    # the same empirical measure with every point twice: still distance zero (unequal sizes)
    assert metrics.wasserstein2_squared(x, torch.cat([x, x])) == pytest.approx(0.0, abs=1e-9)
    assert metrics.wasserstein2_squared(x, y) == pytest.approx(metrics.wasserstein2_squared(y, x),
                                                               rel=1e-9)
    assert metrics.wasserstein2_squared(x, y) > 0.5**2 * 3 * 0.5  # clearly non-zero


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("n", [2, 4, 6])
def test_w2_equals_the_brute_force_assignment_cost(n, seed):
    """Equal sizes, uniform weights: the optimal plan is a permutation (Birkhoff), so
    W2² = min_s (1/n) sum_i |x_i - y_s(i)|² over all n! permutations (float64)."""
    g = gen(10 * n + seed)
    x, y = torch.randn(n, 2, generator=g, dtype=F64), torch.randn(n, 2, generator=g, dtype=F64)
    cost = ((x[:, None] - y[None]) ** 2).sum(-1).numpy()
    perms = np.array(list(itertools.permutations(range(n))))
    brute = cost[np.arange(n)[None], perms].sum(1).min() / n
    assert metrics.wasserstein2_squared(x, y) == pytest.approx(brute, abs=1e-12)


# ----------------------------------------------------------------------------- MMD

def test_mmd_known_answer_for_two_point_sets():
    """x = {a, a}, y = {b, b}: unbiased MMD² = k(a,a) + k(b,b) - 2 k(a,b)
    = 2 B - 2 sum_h exp(-|a-b|² / 2h²) with B bandwidths."""
    a, b = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 2.0]])
    hs = (0.5, 1.0, 3.0)
    want = 2 * len(hs) - 2 * sum(math.exp(-5.0 / (2 * h * h)) for h in hs)
    assert metrics.mmd(a.repeat(2, 1), b.repeat(2, 1), hs) == pytest.approx(want, rel=1e-12)


def test_mmd_near_zero_for_one_distribution_and_positive_for_a_shift():
    """Unbiased MMD² has mean 0 when both samples come from one law. Its null spread is
    estimated from 20 random re-splits of the pooled sample (permutation null, measured
    SD 0.0044 at n = 400); 'near zero' means within 5 of those SDs (measured -0.0046),
    'positive' far beyond them (a unit shift measures 0.295, a half shift 0.149)."""
    g = gen(2)
    n = 400
    x, x2 = torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g)
    pooled = torch.cat([x, x2])
    null = []
    for _ in range(20):
        p = torch.randperm(2 * n, generator=g)
        null.append(metrics.mmd(pooled[p[:n]], pooled[p[n:]]))
    sd = float(np.std(null))
    assert abs(metrics.mmd(x, x2)) < 5 * sd
    assert metrics.mmd(x, x2 + torch.tensor([1.0, 0.0])) > 20 * sd
    assert metrics.mmd(x, x2 + 1) > metrics.mmd(x, x2 + 0.5) > 5 * sd


# --------------------------------------------------------------------- sliced W2

def test_sliced_wasserstein():
    """Zero from a set to itself. For a pure shift y = x + m every projection gives
    (theta.m)² exactly, whose mean over uniform directions in 2D is |m|²/2; with 512
    directions the MC SD is |m|² sqrt(1/8 / 512) = 0.016 |m|² (Var cos² = 1/8)."""
    g = gen(3)
    x = torch.randn(500, 2, generator=g)
    assert metrics.sliced_wasserstein(x, x, gen(4)) == pytest.approx(0.0, abs=1e-12)
    m = torch.tensor([3.0, -1.0])
    sw = metrics.sliced_wasserstein(x, x + m, gen(5), n_projections=512)
    msq = float(m @ m)
    assert abs(sw - msq / 2) < 5 * msq * math.sqrt(1 / 8 / 512)
    with pytest.raises(ValueError, match="equal sample counts"):
        metrics.sliced_wasserstein(x, x[:10], gen(6))


# ------------------------------------------------------- path energy, straightness

def test_path_energy_and_straightness_of_simple_fields():
    """v = c: energy |c|², straightness 0 (exact for Euler). v = 2 t c: every trajectory is
    still a straight line, but S = ∫ |c - 2tc|² dt = |c|²/3 and PE = ∫ 4t²|c|² = 4|c|²/3;
    the left-point Riemann sums over N = 1000 steps are off by O(1/N) (for PE exactly
    -2|c|²/N + O(N^-2)), so both must lie within 3|c|²/N."""
    x = torch.randn(100, 2, generator=gen(7), dtype=F64)
    c = torch.tensor([1.0, -2.0], dtype=F64)
    csq = float(c @ c)
    const = lambda z, t: c.expand_as(z)
    assert metrics.path_energy(const, x) == pytest.approx(csq, rel=1e-12)
    assert metrics.straightness(const, x) == pytest.approx(0.0, abs=1e-20)
    ramp = lambda z, t: 2 * t[:, None] * c
    steps = 1000
    assert abs(metrics.straightness(ramp, x, steps) - csq / 3) < 3 * csq / steps
    assert abs(metrics.path_energy(ramp, x, steps) - 4 * csq / 3) < 3 * csq / steps
    # a rotation: curved paths, never straight
    rot = lambda z, t: torch.stack([-z[:, 1], z[:, 0]], 1)
    assert metrics.straightness(rot, x) > 0.1


def test_normalized_path_energy():
    assert metrics.normalized_path_energy(1.5, 1.0) == pytest.approx(0.5)
    assert metrics.normalized_path_energy(0.5, 1.0) == pytest.approx(0.5)
    assert metrics.normalized_path_energy(2.0, 2.0) == 0.0
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="W2² must be > 0"):
            metrics.normalized_path_energy(1.0, bad)


def test_w2sq_at_steps_reports_every_solver_setting():
    x0 = torch.randn(50, 2, generator=gen(8), dtype=F64)
    shift = torch.tensor([1.0, 1.0], dtype=F64)
    out = metrics.w2sq_at_steps(lambda z, t: shift.expand_as(z), x0, x0 + shift, steps=(1, 4))
    assert set(out) == {"euler1", "euler4", "adaptive", "nfe_adaptive"}
    # a constant field is integrated exactly by any method: zero distance to the target
    assert out["euler1"] == pytest.approx(0.0, abs=1e-9) and out["adaptive"] == pytest.approx(0.0, abs=1e-9)
    assert out["nfe_adaptive"] > 0


# -------------------------------------------------------------------------- record

def test_record_writes_the_design_json_format(tmp_path, monkeypatch):
    monkeypatch.setenv(record.RESULTS_ENV, str(tmp_path))
    metrics_in = {"w2": record.metric(0.25, "", "lower"),
                  "bpd": {"value": 1.5, "unit": "bits/dim", "better": "lower"},
                  "acc": record.metric(0.9, "%", "higher"),
                  "nfe": 12}
    path = record.record("99_unit", metrics_in, mode="quick", seed=3, wall_s=1.234)
    assert path == tmp_path / "quick" / "99_unit.json"
    assert not list(tmp_path.rglob("*.tmp"))  # written atomically
    out = json.loads(path.read_text())
    assert list(out) == ["chapter", "mode", "seed", "git_sha", "torch", "versions", "device",
                         "threads", "machine", "inputs", "wall_s", "metrics"]
    assert set(out["machine"]) == {"cpu", "cores", "ram_gib"}
    assert out["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert set(out["versions"]) == {"python", "torch", "numpy", "scipy", "pot"}
    assert out["chapter"] == "99_unit" and out["mode"] == "quick" and out["seed"] == 3
    assert out["torch"] == torch.__version__ and out["device"] == "cpu"
    assert out["threads"] == torch.get_num_threads() and out["wall_s"] == 1.23
    assert isinstance(out["git_sha"], str) and out["git_sha"]
    assert out["metrics"] == {
        "w2": {"value": 0.25, "unit": "", "better": "lower"},
        "bpd": {"value": 1.5, "unit": "bits/dim", "better": "lower"},
        "acc": {"value": 0.9, "unit": "%", "better": "higher"},
        "nfe": {"value": 12.0, "unit": "", "better": "lower"},
    }
    assert record.load("99_unit", "quick") == out
    with pytest.raises(FileNotFoundError, match="no results"):
        record.load("98_missing", "full")


@pytest.mark.parametrize("value,expected", [("1", True), ("true", True), (" Yes ", True),
                                            ("on", True), ("0", False), ("false", False),
                                            ("", False), ("no", False)])
def test_quick_from_env_parses_minigen_quick(monkeypatch, value, expected):
    monkeypatch.setenv("MINIGEN_QUICK", value)
    assert record.quick_from_env() is expected
    assert record.quick_from_env(default=True) is expected  # set beats the default


def test_quick_from_env_default_when_unset(monkeypatch):
    monkeypatch.delenv("MINIGEN_QUICK", raising=False)
    assert record.quick_from_env() is False and record.quick_from_env(default=True) is True


def test_mean_and_std_over_seeds_and_mean_and_se():
    from minigen.eval.metrics import mean_and_se, mean_and_std

    assert mean_and_std([2.0]) == (2.0, 0.0)  # one seed: no spread
    m, s = mean_and_std(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    assert m == 2.0 and s == pytest.approx(1.0)  # n - 1 in the denominator
    m, se = mean_and_se(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert m == 2.5 and se == pytest.approx(math.sqrt(5 / 3) / 2)
    with pytest.raises(ValueError, match="two values"):
        mean_and_se(torch.tensor([1.0]))
