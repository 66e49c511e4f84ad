"""unet: what the image chapters' U-Net costs — one DDPM training step, one sampling call, and
the DiffuseVAE pieces — at chapter 02/03 settings on one CPU thread.

    .venv/bin/python benchmarks/unet.py              # MNIST 14x14, the CPU setting (< 2 min)
    .venv/bin/python benchmarks/unet.py --size 28    # the GPU-sized setting, ~4x the work
    .venv/bin/python benchmarks/unet.py --quick      # smoke run, well under a minute

Setting: ``minigen.nets.UNet()`` (defaults: base 32, mults (1, 2), one block per level, no
labels), MNIST-5k training images average-pooled to ``--size`` and scaled to [-1, 1],
Adam lr 2e-4, one torch thread, fixed seed.

1. Training step: forward + backward + Adam step of epsilon-prediction DDPM,
   ``DDPMSchedule().l_simple`` (Ho et al., 2020, Alg. 1), batch 64. Also timed in the same
   interleaved blocks: the DiffuseVAE refiner (the same U-Net with ``cond_channels=1``, fed
   the data as a stand-in for the VAE's reconstruction) and the VAE itself
   (``minigen.vae.ConvVAE`` at the same size, ``vae_loss``).
2. Sampling: one no-grad network call on a batch of 500 images, and one full
   ``DDPMSchedule.ddim_step`` (the call plus DDIM's arithmetic), in eval mode; the implied
   wall time of 1000 images x 50 DDIM steps = 2 batches x 50 steps x (ms per DDIM step).

Contenders run in short blocks interleaved in a rotating order, so the machine's speed drift
hits all of them alike; a figure is the median over blocks (with quartiles) of the block time
per step or per call. The last line of the output is one JSON object with every figure.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one BLAS thread, like torch

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from minigen.data import images as image_data
from minigen.diffusion.ddpm import DDPMSchedule
from minigen.latent.vae import ConvVAE, vae_loss
from minigen.nets.unet import UNet
from minigen.workbook.record import git_sha

Run = Callable[[int, int], None]  # (seed, repetitions) -> None; timed from outside


@dataclass
class Config:
    """Everything a run depends on; printed and stored in the JSON line."""

    mode: str = "default"
    size: int = 14
    seed: int = 0
    batch: int = 64
    lr: float = 2e-4
    train_block: int = 3  # training steps per timed block
    train_blocks: int = 10  # timed blocks per training contender
    sample_batch: int = 500
    sample_block: int = 1  # network calls per timed block
    sample_blocks: int = 8  # timed blocks per sampling contender
    n_images: int = 1000  # for the implied sampling time
    ddim_steps: int = 50
    vae: bool = True


# ----------------------------------------------------------------------------- set-up

def mnist_images(size: int) -> torch.Tensor:
    """MNIST-5k training images at ``size`` x ``size`` in [-1, 1]: (4000, 1, size, size)."""
    (x, _), _ = image_data.load_mnist_5k()
    return image_data.to_unit_interval(image_data.downsample_mnist(x, size), 256)


def batches(images: torch.Tensor, batch: int) -> Callable[[torch.Generator], torch.Tensor]:
    """``gen -> (batch, 1, H, W)``: a uniformly drawn minibatch."""
    return lambda gen: images[torch.randint(len(images), (batch,), generator=gen)]


def fresh(seed: int, make: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """A model built under ``torch.manual_seed(seed)``: every contender starts from fixed weights."""
    torch.manual_seed(seed)
    return make()


# ----------------------------------------------------------------------------- contenders

def ddpm_train_step(model: UNet, cfg: Config, draw: Callable, cond: bool = False) -> Run:
    """k steps of forward + backward + Adam on L_simple; ``cond`` feeds the batch itself as
    the U-Net's image condition (the DiffuseVAE refiner's input, same cost)."""
    schedule, opt = DDPMSchedule(), torch.optim.Adam(model.parameters(), lr=cfg.lr)
    model.train()

    def run(seed: int, k: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        for _ in range(k):
            x0 = draw(gen)
            eps_model = (lambda x, t, x0=x0: model(x, t, cond_image=x0)) if cond else model
            per_sample, _ = schedule.l_simple(eps_model, x0, gen)
            loss = per_sample.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return run


def vae_train_step(model: ConvVAE, cfg: Config, draw: Callable) -> Run:
    """k steps of forward + backward + Adam on ``vae_loss`` (-ELBO, obs_std 0.2), lr 2e-3."""
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()

    def run(seed: int, k: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        for _ in range(k):
            loss, _, _ = vae_loss(model, draw(gen), gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return run


def network_call(model: UNet, x: torch.Tensor) -> Run:
    """k no-grad calls eps_theta(x, t) on the sampling batch, t drawn per call."""
    model.eval()

    def run(seed: int, k: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for _ in range(k):
                model(x, torch.rand((), generator=gen).expand(len(x)))

    return run


def ddim_step_call(model: UNet, x: torch.Tensor, cfg: Config) -> Run:
    """k DDIM steps (eta = 0) of the 50-step schedule on the sampling batch, no grad."""
    schedule = DDPMSchedule()
    pairs = schedule.timesteps(cfg.ddim_steps)
    model.eval()

    def run(seed: int, k: int) -> None:
        with torch.no_grad():
            for i in range(k):
                step, prev = pairs[(seed + i) % len(pairs)]
                schedule.ddim_step(model, x, step, prev, eta=0.0)

    return run


# ----------------------------------------------------------------------------- timing

def interleave(runs: dict[str, Run], reps: int, blocks: int, seed: int, warmup: int = 1) -> dict:
    """Time every contender in ``blocks`` blocks of ``reps`` repetitions, rotating the order
    each block. Returns {name: [seconds per block]}."""
    names = list(runs)
    for b in range(warmup):
        for name in names:
            runs[name](seed - 1 - b, reps)
    times = {name: [] for name in names}
    for b in range(blocks):
        for name in names[b % len(names):] + names[:b % len(names)]:
            t0 = time.perf_counter()
            runs[name](seed + b, reps)
            times[name].append(time.perf_counter() - t0)
    return times


def ms_per_rep(block_times: list[float], reps: int) -> dict:
    """Median and quartiles over blocks of the block time per repetition, in ms."""
    per = [1000 * s / reps for s in block_times]
    q = statistics.quantiles(per, n=4)
    return {"median": statistics.median(per), "q25": q[0], "q75": q[2]}


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- benchmarks

def training(cfg: Config, images: torch.Tensor) -> dict:
    """Part 1: ms per training step of each contender, interleaved."""
    draw = batches(images, cfg.batch)
    models = {"ddpm_unet": fresh(cfg.seed, UNet),
              "ddpm_unet_cond": fresh(cfg.seed, lambda: UNet(cond_channels=1))}
    runs = {"ddpm_unet": ddpm_train_step(models["ddpm_unet"], cfg, draw),
            "ddpm_unet_cond": ddpm_train_step(models["ddpm_unet_cond"], cfg, draw, cond=True)}
    if cfg.vae:
        models["vae"] = fresh(cfg.seed, lambda: ConvVAE(image_size=cfg.size))
        runs["vae"] = vae_train_step(models["vae"], cfg, draw)
    times = interleave(runs, cfg.train_block, cfg.train_blocks, cfg.seed)
    return {name: {"ms_per_step": ms_per_rep(times[name], cfg.train_block),
                   "params": param_count(models[name])} for name in runs}


def sampling(cfg: Config, images: torch.Tensor) -> dict:
    """Part 2: ms per network call and per DDIM step on a batch of ``cfg.sample_batch``, and
    the implied seconds for ``cfg.n_images`` images x ``cfg.ddim_steps`` DDIM steps."""
    model = fresh(cfg.seed, UNet)
    x = torch.randn(cfg.sample_batch, 1, cfg.size, cfg.size,
                    generator=torch.Generator().manual_seed(cfg.seed))
    runs = {"network_call": network_call(model, x), "ddim_step": ddim_step_call(model, x, cfg)}
    times = interleave(runs, cfg.sample_block, cfg.sample_blocks, cfg.seed)
    out = {name: {"ms_per_call": ms_per_rep(times[name], cfg.sample_block)} for name in runs}
    calls = -(-cfg.n_images // cfg.sample_batch) * cfg.ddim_steps  # ceil(n / batch) batches
    for name in runs:
        out[name]["implied_s"] = calls * out[name]["ms_per_call"]["median"] / 1000
    out["calls_for_implied"] = calls
    return out


# ----------------------------------------------------------------------------- printing

def fmt(r: dict) -> str:
    """'123.4 [120.1, 130.2]': median and quartiles."""
    return f"{r['median']:8.1f} [{r['q25']:.1f}, {r['q75']:.1f}]"


def print_training(rows: dict, cfg: Config) -> None:
    print(f"\nTraining step (forward + backward + Adam), batch {cfg.batch}, {cfg.size}x{cfg.size}, "
          f"{cfg.train_blocks} blocks x {cfg.train_block} steps")
    print(f"  {'contender':16s} {'params':>8s}   {'ms/step [q25, q75]':28s}")
    for name, r in rows.items():
        print(f"  {name:16s} {r['params']:8d}   {fmt(r['ms_per_step'])}")


def print_sampling(rows: dict, cfg: Config) -> None:
    print(f"\nSampling, no grad, batch {cfg.sample_batch}, {cfg.sample_blocks} blocks x "
          f"{cfg.sample_block} calls")
    print(f"  {'contender':16s} {'ms/call [q25, q75]':28s} "
          f"{f'{cfg.n_images} images x {cfg.ddim_steps} DDIM steps':>30s}")
    for name in ("network_call", "ddim_step"):
        r = rows[name]
        print(f"  {name:16s} {fmt(r['ms_per_call']):28s} {r['implied_s']:28.1f} s")
    print(f"  (implied: {rows['calls_for_implied']} calls x the median ms/call)")


# ----------------------------------------------------------------------------- main

def parse_args(argv=None) -> Config:
    """Command line -> Config."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=14, choices=(14, 28),
                   help="image side (14: CPU, 28: GPU-sized)")
    p.add_argument("--quick", action="store_true", help="smoke run: few blocks")
    p.add_argument("--no-vae", action="store_true", help="skip the VAE training step")
    p.add_argument("--blocks", type=int, default=None, help="timed training blocks per contender (10)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    cfg = Config(mode="quick", train_block=2, train_blocks=3, sample_block=1, sample_blocks=3) \
        if a.quick else Config()
    cfg.size, cfg.seed, cfg.vae = a.size, a.seed, not a.no_vae
    cfg.train_blocks = a.blocks if a.blocks is not None else cfg.train_blocks
    return cfg


def main(argv=None) -> dict:
    """Run both parts, print the tables, end with the JSON line."""
    cfg = parse_args(argv)
    torch.set_num_threads(1)
    wall = time.perf_counter()
    images = mnist_images(cfg.size)
    print(f"unet ({cfg.mode}): UNet() defaults, MNIST-5k {cfg.size}x{cfg.size} in [-1, 1], "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread, git {git_sha()}")
    train_rows = training(cfg, images)
    print_training(train_rows, cfg)
    sample_rows = sampling(cfg, images)
    print_sampling(sample_rows, cfg)
    out = {"benchmark": "unet", "config": asdict(cfg), "git_sha": git_sha(),
           "torch": torch.__version__, "threads": torch.get_num_threads(),
           "train": train_rows, "sampling": sample_rows,
           "wall_s": round(time.perf_counter() - wall, 1)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
