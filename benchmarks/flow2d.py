"""flow2d: minigen's flow-matching training step against a bare PyTorch loop and its peers,
the price of OT pairings, and sample quality against solver steps on 8gaussians -> moons.

    .venv/bin/python benchmarks/flow2d.py            # full: 10000 training steps per variant
    .venv/bin/python benchmarks/flow2d.py --quick    # smoke run, well under a minute

Setting (Tong et al., 2024, 2D experiments): 3 x 64 SELU MLP (``minigen.nets.MLP``),
batch 256, Adam lr 1e-3, one torch thread, fixed seed.

1. Speed. Every contender trains its own copy of the same initial MLP with its own Adam,
   on the same batches (block b draws from a generator seeded ``seed + b``), in short
   blocks interleaved in a rotating order, so the machine's speed drift hits all of them
   alike. A figure is the median over blocks of the per-block ratio contender / reference.
   minigen is timed through its real ``minigen.train.train``, one call per block with a
   shared optimizer; "call" ratios include the per-call set-up, "loop" ratios use the
   loop time ``train`` itself reports (``TrainResult.wall_s``).
2. OT. Exact minibatch OT (minigen, torchcfm) and minigen's few-iteration Sinkhorn
   pairing, as step-time ratios to the I-CFM step of the same library.
3. Quality. Exact W2² (EMD) between 2000 fresh moons points and the EMA model's samples
   from 2000 fresh 8gaussians points at 1, 8 and 100 Euler steps and with dopri5 (NFE).

The last line of the output is one JSON object with every figure.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # numpy / scipy / POT: one thread, like torch

import argparse
import contextlib
import copy
import importlib.metadata
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from minigen.data import toy2d
from minigen.eval.metrics import w2sq_at_steps, wasserstein2_squared
from minigen.nets.mlp import MLP
from minigen.recipe import objectives
from minigen.train import train
from minigen.workbook.record import git_sha

try:
    from torchcfm.conditional_flow_matching import (
        ConditionalFlowMatcher,
        ExactOptimalTransportConditionalFlowMatcher,
    )
except ImportError:  # optional peer
    ConditionalFlowMatcher = ExactOptimalTransportConditionalFlowMatcher = None
try:
    from flow_matching.path import AffineProbPath
    from flow_matching.path.scheduler import CondOTScheduler
except ImportError:  # optional peer
    AffineProbPath = CondOTScheduler = None

Run = Callable[[int, int], float]  # (seed, steps) -> seconds spent in the training loop


@dataclass
class Config:
    """Everything a run depends on; printed and stored in the JSON line."""

    mode: str = "full"
    seed: int = 0
    batch: int = 256
    lr: float = 1e-3
    block: int = 25  # training steps per timed block
    blocks: int = 60  # timed blocks per contender (>= 40 in full mode)
    steps: int = 10000  # training steps per variant for the quality table
    n_eval: int = 2000
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    per_t_bins: int = 10
    sinkhorn_reg: float = 0.1  # x the batch's mean squared distance (see README: tuning)
    sinkhorn_iter: int = 10


# ----------------------------------------------------------------------------- set-up

def sample_batch(cfg: Config) -> Callable:
    """``gen -> (x0, x1)``: a batch of 8gaussians (source) and moons (data)."""
    return lambda gen: (toy2d.eight_gaussians(cfg.batch, gen), toy2d.moons(cfg.batch, gen))


def initial_mlp(seed: int) -> MLP:
    """The 3 x 64 SELU MLP every contender starts from (same seed, same weights)."""
    torch.manual_seed(seed)
    return MLP(2, 64, 3, "selu")


def variant(name: str, cfg: Config) -> objectives.CFM:
    """minigen's CFM variant for a non-Gaussian source (8gaussians)."""
    return objectives.cfm_variant(name, source_is_gaussian=False, sinkhorn_reg=cfg.sinkhorn_reg,
                                  sinkhorn_iter=cfg.sinkhorn_iter)


def peer_versions() -> dict:
    """Installed versions of the optional peers (None when absent)."""
    out = {}
    for dist, present in (("torchcfm", ConditionalFlowMatcher), ("flow_matching", AffineProbPath)):
        out[dist] = importlib.metadata.version(dist.replace("_", "-")) if present else None
    return out


# ----------------------------------------------------------------------------- contenders

def bare_loop(model0: MLP, cfg: Config, sample: Callable) -> Run:
    """The floor: I-CFM written out by hand in plain PyTorch, nothing else."""
    model = copy.deepcopy(model0)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)

    def run(seed: int, k: int) -> float:
        gen = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        for _ in range(k):
            x0, x1 = sample(gen)
            t = torch.rand(len(x1), generator=gen)
            xt = t[:, None] * x1 + (1 - t[:, None]) * x0
            loss = F.mse_loss(model(xt, t), x1 - x0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return time.perf_counter() - t0

    run.model = model
    return run


def minigen_train(model0: MLP, cfg: Config, sample: Callable, cfm: objectives.CFM,
                  **train_kw) -> Run:
    """minigen's real ``train``, one call per block with a shared optimizer.

    ``train_kw`` switches features on (``ema_decay``, ``grad_clip``, ``per_t_bins``,
    ``progress``); all are off by default. The progress bar writes to /dev/null.
    """
    model = copy.deepcopy(model0)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    kw = dict(progress=False, device="cpu", optimizer=opt) | train_kw

    def run(seed: int, k: int) -> float:
        with quiet_stderr() if kw["progress"] else contextlib.nullcontext():
            return train(model, cfm.loss, sample, steps=k, seed=seed, **kw).wall_s

    run.model = model
    return run


@contextlib.contextmanager
def quiet_stderr():
    """Send stderr (tqdm's bar) to /dev/null."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        yield


class CatInput(torch.nn.Module):
    """torchcfm's network convention, ``net(cat([x, t[:, None]], -1))``, over minigen's MLP
    weights (its ``net`` already takes [x, t])."""

    def __init__(self, mlp: MLP):
        super().__init__()
        self.net = mlp.net

    def forward(self, xt_cat: torch.Tensor) -> torch.Tensor:
        return self.net(xt_cat)


def torchcfm_loop(model0: MLP, cfg: Config, sample: Callable, exact_ot: bool) -> Run:
    """torchcfm's (exact-OT) conditional flow matcher, sigma = 0, as in its 2D examples."""
    matcher = (ExactOptimalTransportConditionalFlowMatcher if exact_ot else ConditionalFlowMatcher)(0.0)
    net = CatInput(copy.deepcopy(model0))
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)

    def run(seed: int, k: int) -> float:
        gen = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        for _ in range(k):
            x0, x1 = sample(gen)
            t = torch.rand(len(x1), generator=gen)
            t, xt, ut = matcher.sample_location_and_conditional_flow(x0, x1, t)
            loss = torch.mean((net(torch.cat([xt, t[:, None]], -1)) - ut) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return time.perf_counter() - t0

    return run


def flow_matching_loop(model0: MLP, cfg: Config, sample: Callable) -> Run:
    """Meta's flow_matching: ``AffineProbPath(CondOTScheduler())``, model(x_t, t) -> dx_t."""
    path = AffineProbPath(scheduler=CondOTScheduler())
    model = copy.deepcopy(model0)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)

    def run(seed: int, k: int) -> float:
        gen = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        for _ in range(k):
            x0, x1 = sample(gen)
            t = torch.rand(len(x1), generator=gen)
            ps = path.sample(x_0=x0, x_1=x1, t=t)
            loss = torch.pow(model(ps.x_t, ps.t) - ps.dx_t, 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return time.perf_counter() - t0

    return run


# ----------------------------------------------------------------------------- timing

def interleave(runs: dict[str, Run], cfg: Config, warmup: int = 2) -> dict[str, dict]:
    """Time every contender in ``cfg.blocks`` blocks of ``cfg.block`` steps, rotating the
    order each block. Returns {name: {"call": [s per block], "loop": [s per block]}}."""
    names = list(runs)
    for b in range(warmup):
        for name in names:
            runs[name](cfg.seed - 1 - b, cfg.block)
    times = {name: {"call": [], "loop": []} for name in names}
    for b in range(cfg.blocks):
        for name in names[b % len(names):] + names[:b % len(names)]:
            t0 = time.perf_counter()
            loop = runs[name](cfg.seed + b, cfg.block)
            times[name]["call"].append(time.perf_counter() - t0)
            times[name]["loop"].append(loop)
    return times


def block_ratio(times: dict, name: str, ref: str, kind: str = "call") -> dict:
    """Median and quartiles over blocks of the per-block ratio name / ref."""
    r = [a / b for a, b in zip(times[name][kind], times[ref][kind])]
    q = statistics.quantiles(r, n=4)
    return {"median": statistics.median(r), "q25": q[0], "q75": q[2]}


def ms_per_step(times: dict, name: str, cfg: Config, kind: str = "call") -> float:
    """Median block time per step, in ms (drifts with the machine; ratios do not)."""
    return 1000 * statistics.median(times[name][kind]) / cfg.block


def summarize(times: dict, ref: str, cfg: Config) -> dict:
    """ms/step and call / loop ratios to ``ref`` for every contender."""
    return {name: {"ms_per_step": ms_per_step(times, name, cfg),
                   "ratio_call": block_ratio(times, name, ref, "call"),
                   "ratio_loop": block_ratio(times, name, ref, "loop")} for name in times}


def call_overhead_ms(times: dict, name: str) -> float:
    """Median over blocks of call time - loop time: what one ``train`` call costs besides
    its steps (set-up before the loop, tear-down after it), in ms."""
    return 1000 * statistics.median(c - lo for c, lo in zip(times[name]["call"], times[name]["loop"]))


def same_trajectory(model0: MLP, cfg: Config, sample: Callable) -> float:
    """Max |weight difference| between the bare loop and minigen I-CFM after one block
    from the same weights and batches: ~1e-7 means both do the same arithmetic."""
    bare, mg = bare_loop(model0, cfg, sample), minigen_train(model0, cfg, sample, variant("icfm", cfg))
    bare(cfg.seed, cfg.block)
    mg(cfg.seed, cfg.block)
    with torch.no_grad():
        return max(float((p - q).abs().max()) for p, q in zip(bare.model.parameters(),
                                                                 mg.model.parameters()))


# ----------------------------------------------------------------------------- benchmarks

def speed_vs_bare(model0: MLP, cfg: Config, sample: Callable) -> dict:
    """Part 1a: minigen's I-CFM step and the peers' against the bare loop."""
    runs = {"bare": bare_loop(model0, cfg, sample),
            "minigen": minigen_train(model0, cfg, sample, variant("icfm", cfg))}
    if ConditionalFlowMatcher is not None:
        runs["torchcfm"] = torchcfm_loop(model0, cfg, sample, exact_ot=False)
    if AffineProbPath is not None:
        runs["flow_matching"] = flow_matching_loop(model0, cfg, sample)
    times = interleave(runs, cfg)
    return summarize(times, "bare", cfg) | {"train_call_overhead_ms": call_overhead_ms(times, "minigen")}


def feature_costs(model0: MLP, cfg: Config, sample: Callable) -> dict:
    """Part 1b: each of train's features on its own, against minigen-plain."""
    icfm = variant("icfm", cfg)
    runs = {"plain": minigen_train(model0, cfg, sample, icfm),
            "ema": minigen_train(model0, cfg, sample, icfm, ema_decay=cfg.ema_decay),
            "grad_clip": minigen_train(model0, cfg, sample, icfm, grad_clip=cfg.grad_clip),
            "per_t": minigen_train(model0, cfg, sample, icfm, per_t_bins=cfg.per_t_bins),
            "progress": minigen_train(model0, cfg, sample, icfm, progress=True)}
    return summarize(interleave(runs, cfg), "plain", cfg)


def ot_costs(model0: MLP, cfg: Config, sample: Callable) -> dict:
    """Part 2: exact OT and Sinkhorn pairing steps against the same library's I-CFM step."""
    runs = {f"minigen_{v}": minigen_train(model0, cfg, sample, variant(v, cfg))
            for v in ("icfm", "otcfm", "otcfm_sinkhorn")}
    if ConditionalFlowMatcher is not None:
        runs["torchcfm_icfm"] = torchcfm_loop(model0, cfg, sample, exact_ot=False)
        runs["torchcfm_otcfm"] = torchcfm_loop(model0, cfg, sample, exact_ot=True)
    times = interleave(runs, cfg)
    out = {name: {"ms_per_step": ms_per_step(times, name, cfg)} for name in runs}
    for name in runs:
        ref = name.split("_")[0] + "_icfm"
        if name != ref:
            out[name]["ratio_to_icfm"] = block_ratio(times, name, ref)
    return out


def quality(cfg: Config) -> dict:
    """Part 3: train each minigen variant (EMA) and measure W2² against solver steps."""
    sample = sample_batch(cfg)
    eval_gen = torch.Generator().manual_seed(cfg.seed + 1000)
    x0 = toy2d.eight_gaussians(cfg.n_eval, eval_gen)
    x1 = toy2d.moons(cfg.n_eval, eval_gen)
    out = {"floor": wasserstein2_squared(toy2d.moons(cfg.n_eval, eval_gen), x1)}
    for name in ("icfm", "otcfm", "otcfm_sinkhorn"):
        res = train(initial_mlp(cfg.seed), variant(name, cfg).loss, sample,
                    steps=cfg.steps, lr=cfg.lr, seed=cfg.seed, ema_decay=cfg.ema_decay,
                    progress=False, device="cpu")
        out[name] = w2sq_at_steps(res.ema, x0, x1, steps=(1, 8, 100))
        out[name]["train_ms_per_step"] = res.ms_per_step
    return out


def targets(speed: dict, ot: dict, qual: dict) -> dict:
    """The issue's targets, checked on this run's figures."""
    sk = ot["minigen_otcfm_sinkhorn"]["ratio_to_icfm"]["median"]
    w2 = qual["otcfm_sinkhorn"]["euler1"] / qual["otcfm"]["euler1"]
    return {"minigen_step_le_1.05x_bare": speed["minigen"]["ratio_loop"]["median"] <= 1.05,
            "sinkhorn_step_le_2x_icfm": sk <= 2.0,
            "sinkhorn_euler1_w2_within_10pct_of_exact_ot": w2 <= 1.10,
            "sinkhorn_euler1_w2_over_exact_ot": w2}


# ----------------------------------------------------------------------------- printing

def fmt_ratio(r: dict) -> str:
    """'1.023 [0.99, 1.05]': median and quartiles."""
    return f"{r['median']:.3f} [{r['q25']:.2f}, {r['q75']:.2f}]"


def print_speed(title: str, rows: dict, ref: str) -> None:
    """One speed table: ms/step, call ratio and loop ratio to ``ref``."""
    print(f"\n{title}\n  {'contender':16s} {'ms/step':>8s}   {'ratio (call) [q25, q75]':25s}"
          f" {'ratio (loop) [q25, q75]':25s}")
    for name, r in rows.items():
        if not isinstance(r, dict):
            continue
        print(f"  {name:16s} {r['ms_per_step']:8.3f}   {fmt_ratio(r['ratio_call']):25s}"
              f" {fmt_ratio(r['ratio_loop']):25s}")
    print(f"  (ratios: median over blocks of contender / {ref} in the same block)")


def print_ot(ot: dict) -> None:
    """The OT table: ms/step and the ratio to the same library's I-CFM step."""
    print(f"\nOT pairing cost (batch 256)\n  {'contender':24s} {'ms/step':>8s}   ratio to I-CFM [q25, q75]")
    for name, r in ot.items():
        ratio = fmt_ratio(r["ratio_to_icfm"]) if "ratio_to_icfm" in r else "(reference)"
        print(f"  {name:24s} {r['ms_per_step']:8.3f}   {ratio}")


def print_quality(qual: dict, cfg: Config) -> None:
    """The quality table: W2² against solver steps, and dopri5's NFE."""
    print(f"\nQuality: W2² to {cfg.n_eval} fresh moons points, EMA {cfg.ema_decay} weights, "
          f"{cfg.steps} steps each (floor: two fresh data samples, W2² = {qual['floor']:.4f})")
    print(f"  {'variant':16s} {'euler1':>8s} {'euler8':>8s} {'euler100':>8s} {'dopri5':>8s} "
          f"{'NFE':>5s} {'ms/step':>8s}")
    for name in ("icfm", "otcfm", "otcfm_sinkhorn"):
        r = qual[name]
        print(f"  {name:16s} {r['euler1']:8.4f} {r['euler8']:8.4f} {r['euler100']:8.4f} "
              f"{r['adaptive']:8.4f} {r['nfe_adaptive']:5d} {r['train_ms_per_step']:8.3f}")


# ----------------------------------------------------------------------------- main

def parse_args(argv=None) -> Config:
    """Command line -> Config (``--quick`` shrinks every budget)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run, well under a minute")
    p.add_argument("--steps", type=int, default=None, help="training steps per variant (10000)")
    p.add_argument("--blocks", type=int, default=None, help="timed blocks per contender (60)")
    p.add_argument("--block", type=int, default=None, help="steps per timed block (25)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sinkhorn-reg", type=float, default=Config.sinkhorn_reg)
    p.add_argument("--sinkhorn-iter", type=int, default=Config.sinkhorn_iter)
    a = p.parse_args(argv)
    cfg = Config(mode="quick", blocks=20, block=10, steps=1000, n_eval=500) if a.quick else Config()
    cfg.seed, cfg.sinkhorn_reg, cfg.sinkhorn_iter = a.seed, a.sinkhorn_reg, a.sinkhorn_iter
    cfg.steps = a.steps if a.steps is not None else cfg.steps
    cfg.blocks = a.blocks if a.blocks is not None else cfg.blocks
    cfg.block = a.block if a.block is not None else cfg.block
    return cfg


def main(argv=None) -> dict:
    """Run the three parts, print the tables, end with the JSON line."""
    cfg = parse_args(argv)
    torch.set_num_threads(1)
    np.random.seed(cfg.seed)  # torchcfm draws its OT pairs with numpy's global RNG
    wall = time.perf_counter()
    sample, model0 = sample_batch(cfg), initial_mlp(cfg.seed)
    print(f"flow2d ({cfg.mode}): 8gaussians -> moons, MLP(2, 64, 3, selu), batch {cfg.batch}, "
          f"Adam {cfg.lr}, torch {torch.__version__}, {torch.get_num_threads()} thread, "
          f"peers {peer_versions()}")
    print(f"timing: {cfg.blocks} blocks x {cfg.block} steps per contender, rotating order")
    diff = same_trajectory(model0, cfg, sample)
    speed = speed_vs_bare(model0, cfg, sample)
    overhead = speed["train_call_overhead_ms"]
    print(f"\nbare loop vs minigen I-CFM after {cfg.block} steps: max |weight diff| = {diff:.1e}")
    print_speed("Training step vs the bare PyTorch loop (I-CFM)", speed, "bare")
    print(f"  train() per-call set-up + tear-down (call - loop time): {overhead:.3f} ms "
          f"= {overhead / (cfg.block * speed['bare']['ms_per_step']):.1%} of a {cfg.block}-step block")
    features = feature_costs(model0, cfg, sample)
    print_speed("minigen.train features, each on its own (I-CFM)", features, "plain")
    ot = ot_costs(model0, cfg, sample)
    print_ot(ot)
    print(f"  Sinkhorn pairing: reg = {cfg.sinkhorn_reg} x mean squared distance, "
          f"{cfg.sinkhorn_iter} iterations")
    qual = quality(cfg)
    print_quality(qual, cfg)
    tg = targets(speed, ot, qual)
    print("\nTargets: " + ", ".join(f"{k} = {v:.3f}" if isinstance(v, float) else f"{k}: {v}"
                                    for k, v in tg.items()))
    out = {"benchmark": "flow2d", "config": asdict(cfg), "git_sha": git_sha(),
           "torch": torch.__version__, "threads": torch.get_num_threads(), "peers": peer_versions(),
           "bare_vs_minigen_max_weight_diff": diff,
           "speed": speed, "features": features, "ot": ot, "quality": qual, "targets": tg,
           "wall_s": round(time.perf_counter() - wall, 1)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
