"""The training loop's checkpoints and resume, and clear errors on bad input."""

from __future__ import annotations

import math

import pytest
import torch

from minigen import couplings, data, objectives, paths, solvers
from minigen.nets import MLP
from minigen.record import metric, quick_from_env, record
from minigen.train import EMA, load_checkpoint, train

torch.set_num_threads(1)


def _run(steps, ckpt=None, every=0):
    cfm = objectives.cfm_variant("otcfm", source_is_gaussian=False)
    torch.manual_seed(0)
    net = MLP(2, width=16, depth=2)
    batch = lambda g: (data.eight_gaussians(32, g), data.moons(32, g))
    return train(net, cfm.loss, batch, steps=steps, progress=False, device="cpu",
                 ema_decay=0.9, per_t_bins=5, grad_clip=1.0, checkpoint=ckpt,
                 checkpoint_every=every)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    full = _run(60)
    ckpt = tmp_path / "run.pt"
    _run(30, ckpt)  # stops half way; the checkpoint holds step 30
    assert load_checkpoint(ckpt)["step"] == 30
    resumed = _run(60, ckpt)  # a fresh model object picks up at step 30
    assert resumed.steps_run == 30
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(full.ema.state_dict().values(), resumed.ema.state_dict().values()):
        assert torch.equal(a, b)
    assert full.losses == resumed.losses
    assert torch.equal(full.per_t[1], resumed.per_t[1])
    assert not list(tmp_path.glob("*.tmp"))  # written atomically, nothing left behind


def test_corrupt_checkpoint_raises_a_clear_error(tmp_path):
    ckpt = tmp_path / "run.pt"
    _run(5, ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(RuntimeError, match="corrupt"):
        load_checkpoint(ckpt)
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="corrupt"):
        _run(10, ckpt)


def test_non_finite_loss_raises():
    net = MLP(2, width=8, depth=1)
    bad = lambda model, x, generator, per_sample: ((model(x, torch.zeros(len(x))) * math.inf).mean(),
                                                  None, None)
    with pytest.raises(FloatingPointError, match="non-finite"):
        train(net, bad, lambda g: (torch.randn(4, 2, generator=g),), steps=3, progress=False,
              device="cpu")


@pytest.mark.parametrize("kwargs,match", [({"lr": 0.0}, "lr"), ({"grad_clip": -1.0}, "grad_clip")])
def test_bad_training_settings(kwargs, match):
    net = MLP(2, width=8, depth=1)
    with pytest.raises(ValueError, match=match):
        train(net, None, None, steps=1, progress=False, device="cpu", **kwargs)


def test_ema_decay_out_of_range():
    with pytest.raises(ValueError, match="decay"):
        EMA(MLP(2), 1.5)


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="unknown path"):
        paths.make_path("diagonal")
    with pytest.raises(ValueError, match="unknown solver"):
        solvers.integrate(lambda x, t: x, torch.zeros(2, 2), "rk45")
    with pytest.raises(ValueError, match="unknown prediction"):
        paths.LinearPath().convert(torch.zeros(2, 2), torch.zeros(2, 2), torch.ones(2) / 2,
                                   "velocity", "noise")
    with pytest.raises(ValueError, match="unknown time sampler"):
        objectives.sample_time(4, torch.Generator(), "beta")
    with pytest.raises(ValueError, match="unknown CFM variant"):
        objectives.cfm_variant("rf")
    with pytest.raises(ValueError, match="unknown 2D data set"):
        data.sample_2d("swissroll", 10, torch.Generator())


def test_shapes_and_ranges_are_checked():
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        MLP(2)(torch.zeros(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="t must be"):
        MLP(2)(torch.zeros(4, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="same shape"):
        paths.LinearPath().sample(torch.zeros(4, 2), torch.zeros(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="same batch size"):
        couplings.exact_ot_assignment(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="steps"):
        solvers.integrate(lambda x, t: x, torch.zeros(2, 2), "euler", 0)
    with pytest.raises(ValueError, match="beta_min"):
        paths.VPLinearBetaPath(beta_min=30.0)
    with pytest.raises(ValueError, match="eps"):
        couplings.gibbs_weights(torch.zeros(2, 2), torch.zeros(2, 2), 0.0)
    with pytest.raises(ValueError, match="Generator"):
        data.moons(10, None)


def test_gaussian_only_conversions_refuse_other_sources():
    p = paths.LinearPath(source_is_gaussian=False)
    x, t = torch.randn(3, 2), torch.full((3,), 0.5)
    with pytest.raises(ValueError, match="N\\(0, I\\) source"):
        p.score_from_epsilon(x, x, t)
    with pytest.raises(ValueError, match="N\\(0, I\\) source"):
        p.convert(x, x, t, "velocity", "epsilon")
    assert torch.allclose(p.convert(p.convert(x, x, t, "velocity", "x1"), x, t, "x1", "velocity"), x)


def test_boundary_checked_at_construction():
    class Broken(paths.LinearPath):
        def sigma(self, t):
            return 1 - 0.9 * t

    with pytest.raises(ValueError, match="sigma\\(1\\)"):
        Broken()
    assert abs(float(paths.VPLinearBetaPath().alpha(torch.tensor(0.0))) - math.exp(-5.025)) < 1e-6


def test_record_format_and_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIGEN_RESULTS_DIR", str(tmp_path))
    path = record("99_test", {"w2": metric(0.5, "", "lower")}, mode="quick", seed=3, wall_s=1.0)
    import json

    out = json.loads(path.read_text())
    assert path == tmp_path / "quick" / "99_test.json"
    assert set(out) == {"chapter", "mode", "seed", "git_sha", "torch", "device", "threads",
                        "wall_s", "metrics"}
    assert out["metrics"]["w2"] == {"value": 0.5, "unit": "", "better": "lower"}
    with pytest.raises(ValueError, match="better"):
        metric(1.0, "", "smaller")
    with pytest.raises(ValueError, match="finite"):
        metric(float("nan"))
    with pytest.raises(ValueError, match="mode"):
        record("99_test", {}, mode="fast", seed=0, wall_s=0)
    monkeypatch.setenv("MINIGEN_QUICK", "1")
    assert quick_from_env() is True
    monkeypatch.setenv("MINIGEN_QUICK", "0")
    assert quick_from_env() is False
