"""compile: eager PyTorch against ``torch.compile`` (inductor on CPU) for the training steps the
chapters run, on 1 and 2 torch threads.

    .venv/bin/python benchmarks/compile.py            # both nets, 1 and 2 threads
    .venv/bin/python benchmarks/compile.py --quick    # smoke run

Nets and batches as the chapters train them: the 3 x 64 SELU MLP with the CFM loss at batch 256
(chapters 01, 04, 05) and ``UNet(1, base=16, mults=(1, 2))`` with DDPM's L_simple-style epsilon
regression at batch 64 on 14 x 14 (chapters 04 and 06 use this size; 02 and 03 a wider base). A
step is forward + backward + Adam. Each contender (eager, compiled, and for the U-Net
channels-last, alone and compiled) trains its own copy of one initial net on the same batches; blocks are
interleaved in a rotating order and a figure is the median over blocks (compile time is
reported apart). Agreement: the first step's loss against eager's, same weights and batch.
The last line of the output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from minigen.nets.mlp import MLP
from minigen.nets.unet import UNet


def mlp_step(model, opt, g):
    x1 = torch.randn(256, 2, generator=g)
    x0 = torch.randn(256, 2, generator=g)
    t = torch.rand(256, generator=g)
    xt = t[:, None] * x1 + (1 - t[:, None]) * x0
    loss = ((model(xt, t) - (x1 - x0)) ** 2).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def unet_step(model, opt, g):
    x1 = torch.randn(64, 1, 14, 14, generator=g)
    eps = torch.randn(64, 1, 14, 14, generator=g)
    t = torch.rand(64, generator=g)
    xt = t.sqrt()[:, None, None, None] * x1 + (1 - t).sqrt()[:, None, None, None] * eps
    loss = ((model(xt, t) - eps) ** 2).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


NETS = {"mlp_3x64_b256": (lambda: MLP(2, 64, 3, "selu"), mlp_step),
        "unet_b16_14x14_b64": (lambda: UNet(1, base=16, mults=(1, 2)), unet_step)}


class ChannelsLast(torch.nn.Module):
    """The same U-Net with NHWC weights and inputs (channels-last memory format)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net.to(memory_format=torch.channels_last)

    def forward(self, x, t):
        return self.net(x.contiguous(memory_format=torch.channels_last), t)


def bench(name: str, threads: int, blocks: int, steps: int) -> dict:
    """Median ms/step of each contender, its speed-up over eager, compile time, agreement."""
    torch.set_num_threads(threads)
    make, step = NETS[name]
    torch.manual_seed(0)
    base = make()
    nets = {"eager": copy.deepcopy(base), "compiled": torch.compile(copy.deepcopy(base))}
    if name.startswith("unet"):
        nets["channels_last"] = ChannelsLast(copy.deepcopy(base))
        nets["compiled_channels_last"] = torch.compile(ChannelsLast(copy.deepcopy(base)))
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-3) for k, m in nets.items()}
    first, compile_s = {}, 0.0
    for k, m in nets.items():  # the first step from the same weights and batch (compiles)
        t0 = time.perf_counter()
        first[k] = step(m, opts[k], torch.Generator().manual_seed(0)).item()
        if k.startswith("compiled"):
            compile_s = max(compile_s, time.perf_counter() - t0)
    times = {k: [] for k in nets}
    labels = list(nets)
    for b in range(blocks + 1):
        for k in labels[b % len(labels):] + labels[:b % len(labels)]:
            g = torch.Generator().manual_seed(1000 + b)
            t0 = time.perf_counter()
            for _ in range(steps):
                step(nets[k], opts[k], g)
            if b:  # the first round warms up
                times[k].append((time.perf_counter() - t0) / steps)
    out = {"net": name, "threads": threads, "compile_s": round(compile_s, 1)}
    for k in labels:
        out[f"ms_{k}"] = round(1000 * statistics.median(times[k]), 3)
        if k != "eager":
            out[f"speedup_{k}"] = round(statistics.median(
                e / c for e, c in zip(times["eager"], times[k])), 3)
            out[f"first_loss_rel_diff_{k}"] = abs(first["eager"] - first[k]) / abs(first["eager"])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    blocks, steps = (2, 3) if args.quick else (12, 20)
    rows = []
    for name in NETS:
        for threads in (1, 2):
            r = bench(name, threads, blocks, max(1, steps // (4 if name.startswith("unet") else 1)))
            rows.append(r)
            others = [k[3:] for k in r if k.startswith("ms_") and k != "ms_eager"]
            print(f"{r['net']:<20} {threads} thread(s): eager {r['ms_eager']:8.3f} ms; " + "; ".join(
                f"{k} {r['ms_' + k]:8.3f} ms ({r['speedup_' + k]:.2f}x, first loss rel. diff "
                f"{r['first_loss_rel_diff_' + k]:.1e})" for k in others)
                + f"; compile {r['compile_s']} s", flush=True)
    print(json.dumps({"torch": torch.__version__, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
