"""Every path, gamma schedule and SDE refuses a t outside the time domain [0, 1] (t = 0 source,
t = 1 data; book/design.md) instead of extrapolating its formula (``broadcast.check_time``).
The classes are read off the modules, so a new one is covered without editing this file."""

from __future__ import annotations

import inspect

import pytest
import torch

from minigen import broadcast
from minigen.recipe import gamma, paths, sde

torch.set_num_threads(1)
X = torch.zeros(4, 2)
PATH_CLASSES = sorted((c for c in vars(paths).values() if isinstance(c, type)
                       and issubclass(c, paths.GaussianPath) and c is not paths.GaussianPath),
                      key=lambda c: c.__name__)
SCHEDULE = ("alpha", "sigma", "d_alpha", "d_sigma", "gamma", "d_gamma")
SDE_CLASSES = [sde.VPSDE, sde.SubVPSDE, sde.VESDE]
# a number, a 0-d tensor, and a batch with one bad entry (float32 and float64)
OUTSIDE = [1.5, -0.1, torch.tensor(1.5), torch.tensor(-0.1),
           torch.tensor([0.5, 1.5]), torch.tensor([-0.1, 0.5], dtype=torch.float64)]
IDS = ["1.5", "-0.1", "0d>1", "0d<0", "batch>1", "batch<0"]


def bad(t) -> str:
    """The offending value as the message prints it."""
    t = torch.as_tensor(t)
    return f"{float(t.max() if t.max() > 1 else t.min()):.6g}"


def test_the_path_classes_are_found():
    assert {c.__name__ for c in PATH_CLASSES} >= {"LinearPath", "VPCosinePath", "VPLinearBetaPath",
                                                  "VEPath", "SubVPPath", "Interpolant", "BridgePath"}
    assert set(paths.PATHS.values()) <= set(PATH_CLASSES)


def test_the_issue_example():
    """VPCosinePath().alpha(1.5) was sin(0.75 pi) = 0.71, a valid-looking number."""
    with pytest.raises(ValueError, match=r"VPCosinePath\.alpha: t must lie in \[0, 1\].*\[1\.5, 1\.5\]"):
        paths.VPCosinePath().alpha(1.5)


@pytest.mark.parametrize("cls", PATH_CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("t", OUTSIDE, ids=IDS)
def test_every_schedule_of_every_path_rejects_t_outside(cls, t):
    path = cls()
    for name in SCHEDULE:
        with pytest.raises(ValueError, match=rf"{cls.__name__}\.{name}: t must lie in \[0, 1\]") as err:
            getattr(path, name)(t)
        assert bad(t) in str(err.value)


@pytest.mark.parametrize("cls", PATH_CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("t", [1.5, -0.1, torch.tensor([0.5, 0.5, 0.5, 1.5])], ids=["1.5", "-0.1", "batch"])
def test_sample_and_the_conversions_reject_t_outside(cls, t):
    path = cls()
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.sample: t must lie in \[0, 1\]"):
        path.sample(X, X, t, z=torch.zeros_like(X))
    if path.has_bridge_noise:  # conversions assume gamma = 0
        return
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.convert: t must lie in \[0, 1\]"):
        path.convert(X, X, t, "velocity", "x1")
    for name in ("velocity_from_x1", "x1_from_velocity", "x0_from_velocity"):
        with pytest.raises(ValueError, match=rf"{cls.__name__}\.{name}: t must lie in \[0, 1\]"):
            getattr(path, name)(X, X, t)


@pytest.mark.parametrize("cls", PATH_CLASSES, ids=lambda c: c.__name__)
def test_paths_accept_the_ends_of_the_interval(cls):
    path = cls()
    for t in (torch.tensor(0.0), torch.tensor(1.0), torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)):
        for name in SCHEDULE:
            getattr(path, name)(t)
        assert torch.isfinite(path.alpha(t)).all() and torch.isfinite(path.sigma(t)).all()
    path.sample(X, X, torch.tensor([0.0, 0.3, 0.7, 1.0]), z=torch.zeros_like(X))
    path.sample(X, X, 1.0, z=torch.zeros_like(X))


def test_float_rounding_at_the_ends_is_accepted_but_no_more():
    """``T_SLACK`` = 1e-6: a time summed from float32 steps may land a rounding above 1."""
    path = paths.LinearPath()
    assert float(path.alpha(torch.tensor(1 + 1e-7, dtype=torch.float64))) == pytest.approx(1.0)
    path.sigma(torch.tensor(-1e-7))
    for t in (1 + 1e-5, -1e-5, float("nan")):
        with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
            path.alpha(torch.tensor([0.5, t]))


def test_check_time_takes_numbers_tensors_and_empty_batches():
    for t in (0, 1, 0.0, 1.0, 0.5, torch.tensor(1.0), torch.zeros(3, dtype=torch.float16),
              torch.tensor([0, 1]), torch.empty(0), [0.0, 1.0]):
        broadcast.check_time(t, "P", "f")
    with pytest.raises(ValueError, match=r"P\.f: t must lie in \[0, 1\] .*got t in \[-1, 2\]"):
        broadcast.check_time(torch.tensor([[2.0, -1.0]]), "P", "f")


@pytest.mark.parametrize("name", sorted(gamma.GAMMAS))
@pytest.mark.parametrize("t", OUTSIDE, ids=IDS)
def test_gamma_schedules_reject_t_outside(name, t):
    g = gamma.make_gamma(name)
    for fn in (g, g.deriv):
        with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
            fn(t if isinstance(t, torch.Tensor) else torch.tensor(t))
    ends = torch.tensor([0.0, 1.0])
    assert torch.isfinite(g(ends)).all() and torch.isfinite(g.deriv(ends)).all()


@pytest.mark.parametrize("cls", SDE_CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("t", [1.5, -0.1, torch.tensor([0.5, 0.5, 0.5, 1.5])], ids=["1.5", "-0.1", "batch"])
def test_sdes_reject_t_outside(cls, t):
    s = cls()
    calls = {"drift": lambda: s.drift(X, t), "diffusion": lambda: s.diffusion(t),
             "marginal": lambda: s.marginal(X, t), "reverse_drift": lambda: s.reverse_drift(X, t, X)}
    for name, call in calls.items():
        with pytest.raises(ValueError, match=rf"{cls.__name__}\.{name}: t must lie in \[0, 1\]"):
            call()


@pytest.mark.parametrize("cls", SDE_CLASSES, ids=lambda c: c.__name__)
def test_sdes_accept_their_sampling_interval(cls):
    s = cls()
    for t in (s.t_min, s.t_max):
        assert torch.isfinite(s.reverse_drift(X, t, X)).all()
        assert torch.isfinite(s.diffusion(t)).all()


def test_one_check_per_call_and_nested_calls_are_not_rechecked(monkeypatch):
    """Keep it cheap: a sample (or conversion) of the VP linear-beta path runs a dozen schedule
    calls (sigma calls alpha, d_sigma calls alpha, d_alpha and sigma); only the outermost checks
    its t, one reduction and one host sync per training step."""
    seen = []
    real = broadcast.check_time
    monkeypatch.setattr(broadcast, "check_time", lambda t, *a: (seen.append(a), real(t, *a)))
    t = torch.full((4,), 0.5)
    for path in (paths.VPLinearBetaPath(), paths.SubVPPath(), paths.BridgePath()):
        seen.clear()
        path.sample(X, X, t, z=torch.zeros_like(X))
        assert seen == [(type(path).__name__, "sample")]
    path, vp_sde = paths.VPLinearBetaPath(), sde.VPSDE()
    seen.clear()
    path.convert(X, X, t, "velocity", "score")
    assert seen == [("VPLinearBetaPath", "convert")]
    seen.clear()
    vp_sde.reverse_drift(X, t, X)
    assert seen == [("VPSDE", "reverse_drift")]


def test_a_failing_call_leaves_the_checks_on():
    """The "inside a checked call" flag is reset when the call raises."""
    path = paths.Interpolant()
    with pytest.raises(ValueError, match="same shape"):
        path.sample(X, torch.zeros(4, 3), torch.full((4,), 0.5))
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        path.alpha(torch.tensor(1.5))


def test_every_method_that_takes_t_is_checked():
    for cls in [*PATH_CLASSES, paths.GaussianPath, *SDE_CLASSES, sde.SDE,
                *(type(gamma.make_gamma(n)) for n in gamma.GAMMAS)]:
        for name, fn in vars(cls).items():
            if inspect.isfunction(fn) and "t" in inspect.signature(fn).parameters:
                assert getattr(fn, "time_checked", False), f"{cls.__name__}.{name} does not check t"
