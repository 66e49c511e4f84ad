"""The training loop: exact resume, atomic and validated checkpoints, EMA, the per-t
diagnostic, and refusal of bad settings and non-finite losses."""

from __future__ import annotations

import math

import pytest
import torch

from minigen import train as train_mod
from minigen.data import toy2d
from minigen.nets.mlp import MLP
from minigen.recipe import objectives
from minigen.train import EMA, load_checkpoint, save_checkpoint, train

torch.set_num_threads(1)
STEPS = 40


def batch(g: torch.Generator):
    return toy2d.eight_gaussians(32, g), toy2d.moons(32, g)


def run(steps: int, ckpt=None, every: int = 0, init_seed: int = 0, loss_fn=None, **kw):
    """A small OT-CFM run with every stateful feature on: Adam, EMA, per-t bins, clipping
    (a fresh model object each call; ``init_seed`` changes its initial weights)."""
    cfm = objectives.cfm_variant("otcfm", source_is_gaussian=False)
    torch.manual_seed(init_seed)
    net = MLP(2, width=16, depth=2)
    kw = {"ema_decay": 0.9, "per_t_bins": 5, "grad_clip": 1.0, **kw}
    return train(net, loss_fn or cfm.loss, batch, steps=steps, seed=7, progress=False,
                 device="cpu", checkpoint=ckpt, checkpoint_every=every, check_every=8, **kw)


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_same_seed_same_run():
    a, b = run(10), run(10)
    assert_same_state(a.model.state_dict(), b.model.state_dict())
    assert a.losses == b.losses and len(a.losses) == 10 and a.steps_run == 10


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    full = run(STEPS, tmp_path / "full.pt")
    ckpt = tmp_path / "run.pt"
    half = run(STEPS // 2, ckpt)
    assert half.steps_run == STEPS // 2 and load_checkpoint(ckpt)["step"] == STEPS // 2
    # a fresh model object with *different* initial weights: the checkpoint must overwrite them
    resumed = run(STEPS, ckpt, init_seed=123)
    assert resumed.steps_run == STEPS - STEPS // 2
    assert_same_state(full.model.state_dict(), resumed.model.state_dict())
    assert_same_state(full.ema.state_dict(), resumed.ema.state_dict())
    assert full.losses == resumed.losses and len(resumed.losses) == STEPS
    assert torch.equal(full.per_t[0], resumed.per_t[0]) and torch.equal(full.per_t[1], resumed.per_t[1])
    # the final checkpoints agree as well (optimizer moments, generator state, per-t sums)
    a, b = load_checkpoint(tmp_path / "full.pt"), load_checkpoint(ckpt)
    assert a["step"] == b["step"] == STEPS and torch.equal(a["generator"], b["generator"])
    assert_same_state(a["ema"], b["ema"])
    assert torch.equal(a["per_t_sums"], b["per_t_sums"]) and torch.equal(a["per_t_counts"], b["per_t_counts"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert_same_state(sa, sb)
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporary behind
    # and the EMA really differs from the raw weights (the feature is on)
    assert not torch.equal(full.ema.state_dict()["net.0.weight"], full.model.state_dict()["net.0.weight"])


def test_resume_after_a_crash_between_periodic_checkpoints(tmp_path):
    """checkpoint_every = 10, the run dies at step 25: resuming replays 20..39 exactly."""
    full = run(STEPS)
    cfm = objectives.cfm_variant("otcfm", source_is_gaussian=False)
    calls = {"n": 0}

    def dies_at_25(model, *b, generator, per_sample):
        calls["n"] += 1
        if calls["n"] == 26:
            raise KeyboardInterrupt
        return cfm.loss(model, *b, generator=generator, per_sample=per_sample)

    ckpt = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        run(STEPS, ckpt, every=10, loss_fn=dies_at_25)
    assert load_checkpoint(ckpt)["step"] == 20
    resumed = run(STEPS, ckpt, every=10, init_seed=5)
    assert resumed.steps_run == 20
    assert_same_state(full.model.state_dict(), resumed.model.state_dict())
    assert_same_state(full.ema.state_dict(), resumed.ema.state_dict())
    assert full.losses == resumed.losses


def test_a_checkpoint_past_the_requested_steps_keeps_its_step(tmp_path):
    ckpt = tmp_path / "run.pt"
    done = run(20, ckpt)
    again = run(10, ckpt)  # nothing to do: the model comes back as checkpointed
    assert again.steps_run == 0 and load_checkpoint(ckpt)["step"] == 20
    assert_same_state(done.model.state_dict(), again.model.state_dict())
    assert len(load_checkpoint(ckpt)["losses"]) == 20


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A crash half-way through writing leaves the previous checkpoint intact."""
    ckpt = tmp_path / "run.pt"
    save_checkpoint(ckpt, {"model": {}, "optimizer": {}, "step": 3,
                           "generator": torch.Generator().get_state(), "losses": [1.0]})
    before = ckpt.read_bytes()

    def crashing_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(train_mod.torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(ckpt, {"step": 4})
    monkeypatch.undo()
    assert ckpt.read_bytes() == before and load_checkpoint(ckpt)["step"] == 3


def test_corrupt_checkpoints_raise_a_clear_error(tmp_path):
    ckpt = tmp_path / "run.pt"
    run(5, ckpt)
    good = ckpt.read_bytes()
    for damaged in (good[: len(good) // 2], good[:100], b"", b"garbage, not a checkpoint" * 10):
        ckpt.write_bytes(damaged)
        with pytest.raises(RuntimeError, match="corrupt"):
            load_checkpoint(ckpt)
    with pytest.raises(RuntimeError, match="corrupt"):  # train refuses to resume from it too
        run(10, ckpt)
    # valid file, missing pieces
    torch.save({"model": {}, "step": 1}, ckpt)
    with pytest.raises(RuntimeError, match="lacks"):
        load_checkpoint(ckpt)


class NotAWeight:
    pass


def test_checkpoints_are_loaded_with_weights_only(tmp_path):
    """An arbitrary pickled object is refused, not executed/unpickled."""
    ckpt = tmp_path / "run.pt"
    torch.save({"model": {}, "optimizer": {}, "step": 0, "generator": torch.Generator().get_state(),
                "losses": [], "payload": NotAWeight()}, ckpt)
    with pytest.raises(RuntimeError, match="corrupt or unreadable"):
        load_checkpoint(ckpt)


def test_non_finite_loss_raises():
    net = MLP(2, width=8, depth=1)

    def blows_up(model, x, generator, per_sample):
        return model(x, torch.zeros(len(x))).pow(2).mean() * math.inf, None, None

    with pytest.raises(FloatingPointError, match="non-finite"):
        train(net, blows_up, lambda g: (torch.randn(4, 2, generator=g),), steps=3, progress=False,
              device="cpu")
    nan_loss = lambda model, x, generator, per_sample: (model(x, torch.zeros(len(x))).mean() * math.nan,
                                                        None, None)
    with pytest.raises(FloatingPointError, match="non-finite"):
        train(MLP(2, width=8, depth=1), nan_loss, lambda g: (torch.randn(4, 2, generator=g),),
              steps=100, check_every=1000, progress=False, device="cpu")


@pytest.mark.parametrize("kwargs,match", [
    ({"lr": 0.0}, "lr"), ({"lr": -1e-3}, "lr"), ({"lr": math.nan}, "lr"), ({"lr": math.inf}, "lr"),
    ({"grad_clip": 0.0}, "grad_clip"), ({"grad_clip": -1.0}, "grad_clip"),
    ({"grad_clip": math.nan}, "grad_clip"), ({"steps": -1}, "steps"),
])
def test_bad_training_settings_are_refused(kwargs, match):
    kw = {"steps": 1, **kwargs}
    net = MLP(2, width=8, depth=1)
    before = [p.clone() for p in net.parameters()]
    with pytest.raises(ValueError, match=match):
        train(net, objectives.cfm_variant("icfm").loss, lambda g: (torch.randn(4, 2, generator=g),) * 2,
              progress=False, device="cpu", **kw)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))  # nothing trained


def test_ema_update_is_the_exponential_moving_average():
    torch.manual_seed(0)
    net = MLP(2, width=4, depth=1)
    ema = EMA(net, 0.75, warmup=False)
    theta0 = [p.detach().clone() for p in net.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update(net)
    for e, t0 in zip(ema.model.parameters(), theta0):
        assert torch.allclose(e, 0.75 * t0 + 0.25 * (t0 + 1.0), atol=1e-6)
        assert not e.requires_grad
    for bad in (0.0, 1.0, 1.5, -0.1, math.nan):
        with pytest.raises(ValueError, match="EMA decay"):
            EMA(net, bad)


def test_ema_warmup_forgets_the_initial_weights():
    """With warm-up, d_n = min(decay, (1 + n) / (10 + n)): the initial weights' share after N
    updates is prod_n d_n (< 1e-6 after 2000 updates at decay 0.999; 0.999^2000 = 13.5% without)."""
    torch.manual_seed(0)
    net = MLP(2, width=4, depth=1)
    theta0 = [p.detach().clone() for p in net.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    shares = {}
    for warm in (True, False):
        ema = EMA(MLP(2, width=4, depth=1), 0.999, warmup=warm)
        with torch.no_grad():
            for e, t0 in zip(ema.model.parameters(), theta0):
                e.copy_(t0)
        decays = []
        for _ in range(2000):
            decays.append(ema.current_decay())
            ema.update(net)  # the trained weights are 0: what is left is the initial weights' share
        shares[warm] = float(next(ema.model.parameters()).flatten()[0] / theta0[0].flatten()[0])
        assert ema.updates == 2000
        if warm:
            assert decays[:3] == [1 / 10, 2 / 11, 3 / 12] and max(decays) <= 0.999
    assert abs(shares[True]) < 1e-6
    assert shares[False] == pytest.approx(0.999 ** 2000, rel=1e-3)


def test_per_t_diagnostic_is_the_binned_mean_of_the_per_sample_losses():
    """A loss function reporting fixed per-sample losses at fixed times: the diagnostic must
    be their mean per bin of t, accumulated over steps (and empty bins report 0)."""
    t = torch.tensor([0.1, 0.3, 0.35, 0.9, 0.95])
    per = torch.tensor([1.0, 2.0, 4.0, 4.0, 5.0])

    def fixed(model, x, generator, per_sample):
        assert per_sample  # requested because per_t_bins > 0
        return model(x, torch.zeros(len(x))).pow(2).mean(), per, t

    res = train(MLP(2, width=4, depth=1), fixed, lambda g: (torch.randn(5, 2, generator=g),), steps=6,
                per_t_bins=4, progress=False, device="cpu")
    centres, means = res.per_t
    assert torch.allclose(centres, torch.tensor([0.125, 0.375, 0.625, 0.875]))
    assert torch.equal(means, torch.tensor([1.0, 3.0, 0.0, 4.5]))
    assert res.ema is None and res.ms_per_step > 0 and res.wall_s > 0


def test_cosine_lr_warms_up_then_decays_to_zero():
    from minigen.train import cosine_lr
    assert cosine_lr(0, 1000, 1e-3, warmup=100) == pytest.approx(1e-5 * 0.5 * (1 + math.cos(0)))
    want = 1e-3 * 0.5 * (1 + math.cos(math.pi * 0.099))
    assert cosine_lr(99, 1000, 1e-3, warmup=100) == pytest.approx(want)
    assert cosine_lr(500, 1000, 1e-3, warmup=100) == pytest.approx(0.5e-3)
    assert cosine_lr(999, 1000, 1e-3, warmup=0) < 1e-8
    with pytest.raises(ValueError, match="warmup"):
        cosine_lr(0, 0, 1e-3)


def test_train_follows_the_cosine_schedule():
    """The optimizer's lr at the last step is the schedule's; unknown schedules are refused."""
    from minigen.train import cosine_lr
    torch.manual_seed(0)
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)

    def loss_fn(model, x, generator, per_sample):
        return model(x).pow(2).mean(), None, None
    train(net, loss_fn, lambda g: (torch.randn(8, 2, generator=g),), steps=30, lr=0.1, optimizer=opt,
          lr_schedule="cosine", warmup=5, progress=False, device="cpu")
    assert opt.param_groups[0]["lr"] == pytest.approx(cosine_lr(29, 30, 0.1, 5))
    with pytest.raises(ValueError, match="lr_schedule"):
        train(net, loss_fn, lambda g: (torch.randn(8, 2, generator=g),), steps=1, lr_schedule="step",
              progress=False, device="cpu")


@pytest.mark.parametrize("bins", [0, 3])
def test_the_call_contract_of_sample_batch_and_loss_fn(bins):
    """As the docstring states: sample_batch(generator) may return a list; loss_fn gets the model,
    the batch unpacked, the same generator and ``per_sample=per_t_bins > 0``, and may return a
    plain (loss, per_sample, t) triple; the result has the model in eval mode, no EMA copy
    without ``ema_decay``, one loss per step."""
    torch.manual_seed(0)
    net, seen = torch.nn.Linear(2, 1), []

    def sample_batch(g):
        seen.append(("batch", g))
        return [torch.randn(8, 2, generator=g), torch.rand(8, generator=g)]

    def loss_fn(model, x, t, *, generator, per_sample):
        seen.append(("loss", model, generator, per_sample))
        per = model(x).pow(2).squeeze(1)
        return per.mean(), per.detach() if per_sample else None, t if per_sample else None

    out = train(net, loss_fn, sample_batch, steps=5, progress=False, device="cpu", per_t_bins=bins)
    gens = {id(s[1]) for s in seen if s[0] == "batch"} | {id(s[2]) for s in seen if s[0] == "loss"}
    assert len(seen) == 10 and len(gens) == 1 and isinstance(seen[0][1], torch.Generator)
    assert all(s[1] is net and s[3] is (bins > 0) for s in seen if s[0] == "loss")
    assert out.model is net and not net.training and out.ema is None
    assert len(out.losses) == 5 and out.steps_run == 5
    assert (out.per_t is None) == (bins == 0)
    if bins:
        assert out.per_t[0].shape == (bins,) and torch.isfinite(out.per_t[1]).all()
