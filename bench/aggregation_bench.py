"""Aggregation throughput and peak memory: streaming FedAvg vs stacking every update.

100 updates of a 1M-parameter model (float32, 4 tensors like a small MLP). Streaming is
``fedge.orchestrator.strategies.FedAvg`` (one running float64 sum: O(model)); the baseline
holds every update and averages the stack (``weighted_mean``: O(devices x model)), which is
also what the robust strategies must do (median shown for scale). Updates are produced one at
a time, as the orchestrator reads them from SQLite. Peak memory by tracemalloc (numpy reports
its buffers to it); median of 5 runs. Usage: python bench/aggregation_bench.py [--updates 100]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import tracemalloc

import numpy as np

from fedge.orchestrator.strategies import create_strategy
from fedge.orchestrator.strategies.aggregate import apply_delta, weighted_mean

SHAPES = {
    "fc1.weight": (1000, 900),
    "fc1.bias": (1000,),
    "fc2.weight": (99, 1000),
    "fc2.bias": (99,),
}


def updates(n: int, base: dict[str, np.ndarray]):
    for i in range(n):
        yield {k: v * np.float32(1 + 0.01 * i) for k, v in base.items()}, 100 + i


def streaming(global_params, base, n, name="fedavg"):
    agg = create_strategy(name).start_aggregation(global_params)
    for delta, w in updates(n, base):
        agg.add(delta, w)
    return agg.result()


def stacking(global_params, base, n):
    deltas, weights = [], []
    for delta, w in updates(n, base):
        deltas.append(delta)
        weights.append(w)
    return apply_delta(global_params, weighted_mean(deltas, weights))


def measure(fn, *args):
    tracemalloc.start()
    t = time.perf_counter()
    out = fn(*args)
    secs = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return secs, peak, out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--updates", type=int, default=100)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    base = {k: rng.standard_normal(s).astype(np.float32) * 0.01 for k, s in SHAPES.items()}
    g = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    n_params = sum(v.size for v in base.values())
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cores, Python "
        f"{sys.version.split()[0]}, numpy {np.__version__}"
    )
    print(f"{args.updates} updates x {n_params:,} parameters ({n_params * 4 / 2**20:.1f} MiB each)")
    variants = {
        "streaming FedAvg": (streaming, g, base, args.updates),
        "streaming FedAdam": (streaming, g, base, args.updates, "fedadam"),
        "stacking mean (baseline)": (stacking, g, base, args.updates),
        "median (robust, stacks)": (streaming, g, base, args.updates, "median"),
    }
    results = {}
    for label, (fn, *a) in variants.items():
        runs = [measure(fn, *a) for _ in range(args.runs)]
        results[label] = (
            statistics.median(r[0] for r in runs),
            statistics.median(r[1] for r in runs),
        )
        results[label + "/out"] = runs[0][2]
    ref = results["stacking mean (baseline)/out"]
    got = results["streaming FedAvg/out"]
    err = max(float(np.abs(ref[k] - got[k]).max()) for k in ref)
    base_s, base_m = results["stacking mean (baseline)"]
    print("\n| variant | median s | updates/s | peak MiB | time vs stacking | memory vs stacking |")
    print("|---|---|---|---|---|---|")
    for label in variants:
        s, m = results[label]
        print(
            f"| {label} | {s:.2f} | {args.updates / s:.0f} | {m / 2**20:.0f} | "
            f"{s / base_s:.2f}x | {m / base_m:.3f}x |"
        )
    print(f"\nmax |streaming - stacking| = {err:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
