"""The one training loop: seed, device, EMA, gradient clipping, a progress bar,
the per-t loss diagnostic, atomic checkpoints and exact resume.

Every paradigm trains through ``train``: it needs a model, a
``loss_fn(model, *batch, generator, per_sample)`` returning a ``recipe.results.LossResult``
(loss, per_sample (B,) or None, t (B,) or None) — the scalar loss to differentiate, and, when
``per_sample`` is True, detached per-sample losses with their times for the per-t diagnostic;
every objective's ``loss`` method is one (``CFM``, ``DDPMLoss``, ``DenoisingScoreMatching``,
``PFGMppLoss``, ``DenoiserObjective``, ``vae_loss``) — and a
``sample_batch(generator) -> tuple of tensors``. All randomness of a run
flows through one ``torch.Generator`` whose state is checkpointed, so a resumed
run continues exactly where it stopped.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from minigen.recipe.objectives import per_t_loss


def pick_device() -> torch.device:
    """cuda, then mps, then cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class EMA:
    """Exponential moving average of parameters: theta_ema <- d_n theta_ema + (1 - d_n) theta.

    With ``warmup`` (the default) the n-th update (n = 0, 1, ...) uses
    d_n = min(decay, (1 + n) / (10 + n)), the ``num_updates`` rule of TensorFlow's
    ``ExponentialMovingAverage``: early on the average forgets the random initial
    weights fast. Without it, decay 0.999 over 2000 steps still keeps
    0.999^2000 = 13.5% of the initial weights — enough to ruin a 2D probability-flow
    ODE (chapter 03). ``updates`` counts the updates (saved in checkpoints).
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.999, warmup: bool = True):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay, self.warmup, self.updates = decay, warmup, 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """d_n for the next update: min(decay, (1 + n) / (10 + n)) with warm-up, else decay."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        torch._foreach_lerp_(list(self.model.parameters()),
                             [p.detach() for p in model.parameters()], 1 - self.current_decay())
        self.updates += 1


@dataclass
class TrainResult:
    model: torch.nn.Module
    ema: torch.nn.Module | None
    losses: list[float]
    per_t: tuple[torch.Tensor, torch.Tensor] | None  # (bin centres, mean loss per bin)
    wall_s: float
    ms_per_step: float
    steps_run: int
    history: dict = field(default_factory=dict)


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write atomically: save to a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict:
    """Load with ``weights_only=True``; a damaged file raises a clear error."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for damaged files
        raise RuntimeError(f"corrupt or unreadable checkpoint {path}: {e}") from e
    missing = {"model", "optimizer", "step", "generator", "losses"} - set(state)
    if missing:
        raise RuntimeError(f"checkpoint {path} lacks {sorted(missing)}")
    return state


def cosine_lr(step: int, steps: int, lr: float, warmup: int = 100) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``steps``:
    lr · min(1, (n + 1) / warmup) · ½ (1 + cos(π n / steps)) (Loshchilov & Hutter, 2017,
    without restarts; the warm-up is Goyal et al., 2017)."""
    if warmup < 0 or steps <= 0:
        raise ValueError(f"need warmup >= 0 and steps > 0, got {warmup}, {steps}")
    ramp = min(1.0, (step + 1) / warmup) if warmup else 1.0
    return lr * ramp * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))


def train(model: torch.nn.Module, loss_fn: Callable, sample_batch: Callable, *, steps: int,
          lr: float = 1e-3, seed: int = 0, optimizer: torch.optim.Optimizer | None = None,
          ema_decay: float | None = None, grad_clip: float | None = None,
          per_t_bins: int = 0, progress: bool = True, checkpoint: str | Path | None = None,
          checkpoint_every: int = 0, device: torch.device | str | None = None,
          check_every: int = 50, lr_schedule: str | None = None, warmup: int = 100) -> TrainResult:
    """Train ``model`` for ``steps`` Adam steps (or with ``optimizer``) and return a
    ``TrainResult`` (the model in eval mode, its EMA copy or None, the loss every step, the
    per-t curve, wall time and ms per step of this call).

    The contract, each step:

    - ``sample_batch(generator)`` returns a tuple (or list) of tensors, e.g. ``(x0, x1)`` or
      ``(x1,)``; each is moved to ``device``. Draw every random number from ``generator`` (the
      run's one ``torch.Generator``, seeded by ``seed`` and checkpointed).
    - ``loss_fn(model, *batch, generator=generator, per_sample=bool)`` returns a
      ``recipe.results.LossResult`` (or any ``(loss, per_sample, t)`` triple): the scalar loss
      to differentiate and, when ``per_sample`` is True (``per_t_bins > 0``), the detached (B,)
      per-sample losses and their times t (B,); otherwise those may be None.

    There are no callbacks: to evaluate during training, call ``train`` again with the same
    ``checkpoint`` and a larger ``steps`` — resume is exact (model, optimizer, EMA, generator
    state, the losses so far), so ``steps=1000`` then ``steps=2000`` gives the weights of one
    2000-step run, with an evaluation in between (with a constant ``lr``: the cosine schedule
    is a function of ``steps`` as well, so a cosine run resumes exactly only to the same
    ``steps``). ``progress`` shows a tqdm bar.

    ``lr_schedule="cosine"`` sets the learning rate of step n to ``cosine_lr(n, steps, lr,
    warmup)`` (a function of the step, so a resumed run follows the same schedule); None keeps
    ``lr`` constant. ``ema_decay`` keeps an ``EMA`` copy of the weights (with its warm-up),
    updated after every optimizer step and returned as ``TrainResult.ema``; ``grad_clip`` clips
    the gradient norm. With ``checkpoint`` set, a checkpoint is written
    atomically every ``checkpoint_every`` steps and at the end, and an existing one is resumed
    from. A non-finite loss raises ``FloatingPointError`` (checked every ``check_every`` steps).
    """
    if steps < 0 or not 0 < lr < math.inf:  # written so that NaN is refused too
        raise ValueError(f"need steps >= 0 and 0 < lr < inf, got {steps}, {lr}")
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(f"grad_clip must be > 0, got {grad_clip}")
    if lr_schedule not in (None, "cosine"):
        raise ValueError(f"lr_schedule must be None or 'cosine', got {lr_schedule!r}")
    device = torch.device(device) if device is not None else pick_device()
    model.to(device).train()
    gen = torch.Generator().manual_seed(seed)
    opt = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    ema = EMA(model, ema_decay) if ema_decay else None
    start, losses = 0, []
    sums, counts = torch.zeros(per_t_bins), torch.zeros(per_t_bins)
    if checkpoint is not None and Path(checkpoint).exists():
        start, losses, per_t_state = _restore(load_checkpoint(checkpoint), model, opt, gen, ema)
        if per_t_bins and per_t_state is not None:
            sums, counts = per_t_state
    if hasattr(sample_batch, "seek"):  # batches keyed by step (recipe.prefetch): resume there
        sample_batch.seek(start)

    def state_at(step):
        st = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
              "generator": gen.get_state(), "losses": losses}
        if ema is not None:
            st["ema"] = ema.model.state_dict()
            st["ema_updates"] = ema.updates
        if per_t_bins:
            st["per_t_sums"], st["per_t_counts"] = sums, counts
        return st

    want_per_sample = per_t_bins > 0
    pending: list[torch.Tensor] = []
    bar = tqdm(total=steps, initial=start, disable=not progress, mininterval=1.0, leave=False)
    t_start = time.perf_counter()
    for step in range(start, steps):
        batch = [b.to(device) for b in sample_batch(gen)]
        loss, per_sample, t = loss_fn(model, *batch, generator=gen, per_sample=want_per_sample)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if lr_schedule == "cosine":
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, steps, lr, warmup)
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        if ema is not None:
            ema.update(model)
        if per_t_bins and t is not None and per_sample is not None:
            s, c = per_t_loss(t, per_sample, per_t_bins)
            sums += s
            counts += c
        pending.append(loss.detach())
        if len(pending) >= check_every or step == steps - 1:
            _flush(pending, losses, step)
            bar.update(step + 1 - bar.n)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
        if checkpoint is not None and checkpoint_every and (step + 1) % checkpoint_every == 0:
            _flush(pending, losses, step)
            save_checkpoint(checkpoint, state_at(step + 1))
    wall = time.perf_counter() - t_start
    bar.close()
    if checkpoint is not None:  # a checkpoint already past ``steps`` keeps its own step count
        save_checkpoint(checkpoint, state_at(max(steps, start)))
    n_run = max(steps - start, 0)
    per_t = None
    if per_t_bins:
        centres = (torch.arange(per_t_bins) + 0.5) / per_t_bins
        per_t = (centres, sums / counts.clamp_min(1))
    return TrainResult(model.eval(), ema.model if ema else None, losses, per_t, wall,
                       1000 * wall / max(n_run, 1), n_run)


def _restore(st: dict, model, opt, gen: torch.Generator, ema: EMA | None):
    """Load a checkpoint's states in place; return (step, losses, per-t sums and counts or None)."""
    model.load_state_dict(st["model"])
    opt.load_state_dict(st["optimizer"])
    gen.set_state(st["generator"])
    if ema is not None and "ema" in st:
        ema.model.load_state_dict(st["ema"])
        ema.updates = int(st.get("ema_updates", 0))
    per_t = (st["per_t_sums"], st["per_t_counts"]) if "per_t_sums" in st else None
    return int(st["step"]), list(st["losses"]), per_t


def _flush(pending: list, losses: list, step: int) -> None:
    if not pending:
        return
    vals = torch.stack(pending).cpu()
    pending.clear()
    if not torch.isfinite(vals).all():
        raise FloatingPointError(f"non-finite training loss at or before step {step}: "
                                 "lower the learning rate or check the data")
    losses.extend(vals.tolist())
