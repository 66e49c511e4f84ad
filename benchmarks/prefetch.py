"""prefetch: exact minibatch-OT CFM with the pairing in the step against the pairing prefetched on
a worker thread (``minigen.recipe.prefetch``), as ratios to the I-CFM step.

    .venv/bin/python benchmarks/prefetch.py             # the machine's cores (2 here)
    .venv/bin/python benchmarks/prefetch.py --cores 1   # pinned to one core
    .venv/bin/python benchmarks/prefetch.py --quick     # smoke run

Setting as ``benchmarks/flow2d.py``: 8gaussians -> moons, batch 256, 3 x 64 SELU MLP, Adam 1e-3,
one torch thread for the step. Three contenders train their own copy of one initial MLP through
``minigen.train.train``, in blocks of ``block`` steps interleaved in a rotating order; a figure
is the median over blocks of the per-block ratio to the I-CFM block of the same round. The
prefetched contender's first batch of each block is not prefetched (one in ``block``).
The last line of the output is one JSON object with every figure.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from minigen.data.toy2d import sample_2d  # noqa: E402
from minigen.nets.mlp import MLP  # noqa: E402
from minigen.recipe.couplings import ExactOT, independent  # noqa: E402
from minigen.recipe.objectives import CFM  # noqa: E402
from minigen.recipe.paths import LinearPath  # noqa: E402
from minigen.recipe.prefetch import PairedBatches  # noqa: E402
from minigen.train import train  # noqa: E402

BATCH = 256


def draw(g):
    return sample_2d("8gaussians", BATCH, g), sample_2d("moons", BATCH, g)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cores", type=int, default=0, help="pin to this many cores (0: all)")
    ap.add_argument("--blocks", type=int, default=40)
    ap.add_argument("--block", type=int, default=50, help="steps per block")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.blocks, args.block = 4, 10
    if args.cores:
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:args.cores]))
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model0 = MLP(2, 64, 3, "selu")
    lin = LinearPath()
    contenders = {
        "icfm": (PairedBatches(draw, independent, 0, ahead=0), CFM(lin).loss),
        "ot_in_step": (PairedBatches(draw, independent, 0, ahead=0), CFM(lin, coupling=ExactOT()).loss),
        "ot_prefetched": (PairedBatches(draw, ExactOT(), 0, ahead=2), CFM(lin).loss),
    }
    models = {n: copy.deepcopy(model0) for n in contenders}
    opts = {n: torch.optim.Adam(models[n].parameters(), lr=1e-3) for n in contenders}
    names = list(contenders)
    times = {n: [] for n in names}
    for b in range(args.blocks + 2):  # two warm-up rounds
        order = names[b % 3:] + names[:b % 3]
        for n in order:
            batches, loss = contenders[n]
            t0 = time.perf_counter()
            train(models[n], loss, batches, steps=args.block, seed=b, optimizer=opts[n],
                  progress=False, device="cpu")
            if b >= 2:
                times[n].append(time.perf_counter() - t0)
    for batches, _ in contenders.values():
        batches.close()
    ms = {n: round(1000 * statistics.median(times[n]) / args.block, 3) for n in names}
    ratio = {n: round(statistics.median(t / r for t, r in zip(times[n], times["icfm"])), 3)
             for n in names if n != "icfm"}
    cores = len(os.sched_getaffinity(0))
    for n in names:
        print(f"{n:<14} {ms[n]:7.3f} ms/step" + (f"   {ratio[n]:.3f} x I-CFM" if n in ratio else ""))
    print(json.dumps({"cores": cores, "torch_threads": 1, "batch": BATCH, "blocks": args.blocks,
                      "block_steps": args.block, "ms_per_step": ms, "ratio_to_icfm": ratio}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
