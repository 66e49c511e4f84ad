"""kv_cache: what chapter 14's key-value cache buys — autoregressive sampling with and without
it, in tokens per second, at the chapter's setting, on one CPU thread.

    .venv/bin/python benchmarks/kv_cache.py             # length 64, batch 64, 21 pairs (under a minute)
    .venv/bin/python benchmarks/kv_cache.py --quick     # smoke run, a few seconds

Setting: ``minigen.nets.token_transformer.TokenTransformer`` as chapter 14 builds it (causal,
vocabulary 17 grey levels + BOS, width 48, 3 layers, 4 heads), untrained (the cost does not
depend on the weights), eval mode, ``minigen.discrete.autoregressive.sample_autoregressive``
drawing ``--batch`` sequences of ``--length`` tokens. Without the cache every call reruns the
prefix (O(L^2) token passes per sequence), with it each call reads one token (O(L)).

The two contenders run in blocks interleaved in alternating order, so the machine's drift hits
both alike; a figure is the median over blocks (with quartiles) of tokens per second, and the
speed-up is the median of the per-pair ratios. The last line is one JSON object.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one BLAS thread, like torch

import argparse
import json
import statistics
import time

import torch

from minigen.discrete.autoregressive import sample_autoregressive
from minigen.nets.token_transformer import TokenTransformer
from minigen.workbook.record import git_sha


def tokens_per_second(model, batch: int, use_cache: bool, seed: int) -> float:
    """One sampling run of ``batch`` sequences: generated tokens / wall seconds."""
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = sample_autoregressive(model, batch, g, use_cache=use_cache)
    return out.x.numel() / (time.perf_counter() - t0)


def quartiles(xs: list[float]) -> list[float]:
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return [round(v, 1) for v in q]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--blocks", type=int, default=21, help="timed runs per contender")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.length, args.batch, args.blocks = 16, 8, 3
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = TokenTransformer(length=args.length, vocab=18, dim=48, depth=3, heads=4, causal=True).eval()
    tokens_per_second(model, args.batch, True, 0)  # warm-up: first calls allocate
    rates: dict[str, list[float]] = {"cached": [], "uncached": []}
    for b in range(args.blocks):
        order = ("cached", "uncached") if b % 2 == 0 else ("uncached", "cached")
        for name in order:
            rates[name].append(tokens_per_second(model, args.batch, name == "cached", b))
    ratios = [c / u for c, u in zip(rates["cached"], rates["uncached"])]
    result = {
        "benchmark": "kv_cache", "commit": git_sha(), "torch": torch.__version__, "threads": 1,
        "length": args.length, "batch": args.batch, "blocks": args.blocks,
        **{f"tokens_per_s_{k}_median": round(statistics.median(v), 1) for k, v in rates.items()},
        **{f"tokens_per_s_{k}_quartiles": quartiles(v) for k, v in rates.items()},
        "speedup_median": round(statistics.median(ratios), 2),
        "speedup_range": [round(min(ratios), 2), round(max(ratios), 2)],
    }
    for k, v in rates.items():
        print(f"{k:9s} {statistics.median(v):9.0f} tokens/s (quartiles {quartiles(v)})")
    print(f"speed-up at length {args.length}: {result['speedup_median']}x (median of {args.blocks} pairs)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
