"""Robust weighting on the digits workload: FedAvg as today vs FedAvg + robust defaults.

The in-process simulation of bench/learning_quality.py (its bundle and its splits: digits, 20%
held out, 10 devices, Dirichlet 0.5; the real ``ort-training`` agent backend, the real FedAvg
aggregator) with the demo's training settings (5 local epochs, batch 16, AdamW lr 0.01).
Device 0 is the attacker:

* ``honest``: nobody attacks.
* ``liar``: device 0 claims 10^15 samples (in its status too, so the registered cap does not
  help) and sends a random delta with 100x the honest median norm, every round.
* ``scaled``: device 0 sends -10x its honest delta with its honest count, every round.

Weightings: ``today`` (weight = claimed count, no clipping: ``max_update_norm`` 0, the default),
``robust`` (``RobustWeighting()`` defaults), and the two halves alone (``cap only``,
``clip only``). Each update goes through the round close's two passes: norms first, then
``scale * delta`` with the capped weight into the FedAvg aggregator.

Usage: python bench/robust_weighting_bench.py [--rounds 30] [--report-at 10] [--seeds 5]
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_quality import make_bundle, split  # noqa: E402

from fedge.agent.backends import create_backend  # noqa: E402
from fedge.orchestrator.robust_weighting import (  # noqa: E402
    RobustWeighting,
    RoundUpdate,
    scale_delta,
)
from fedge.orchestrator.strategies import create_strategy  # noqa: E402
from fedge.protocol.bundle import load_bundle  # noqa: E402
from fedge.protocol.inference import InferenceRunner  # noqa: E402
from fedge.protocol.tensors import l2_norm  # noqa: E402

Params = dict[str, np.ndarray]
LIAR_SAMPLES = 10**15
LIAR_NORM_MULTIPLE = 100.0
SCALED_FACTOR = -10.0


def weightings(options: dict[str, float]) -> dict[str, Callable[[], RobustWeighting | None]]:
    """today, robust (the defaults, or ``options`` over them), and its two halves alone."""
    return {
        "today": lambda: None,
        "robust": lambda: RobustWeighting(**options),
        "cap only": lambda: RobustWeighting(**{**options, "norm_multiple": 0}),
        "clip only": lambda: RobustWeighting(
            **{**options, "sample_cap_multiple": 0, "max_samples": 0}
        ),
    }


PLAN = [
    ("honest", "today"),
    ("honest", "robust"),
    ("liar", "today"),
    ("liar", "cap only"),
    ("liar", "clip only"),
    ("liar", "robust"),
    ("scaled", "today"),
    ("scaled", "clip only"),
    ("scaled", "robust"),
]


def train_delta(backend, bundle, params: Params, x, y, dev: int, rnd: int, args) -> Params:
    """One device's honest local training, seeded per (device, round) like learning_quality."""
    backend.load(bundle)
    backend.set_parameters(params)
    seed = int.from_bytes(hashlib.sha256(f"{dev}/{rnd}".encode()).digest()[:4], "big")
    backend.train(x, y, epochs=args.epochs, batch_size=args.batch_size, seed=seed)
    local = backend.get_parameters()
    return {n: (local[n] - params[n]).astype(params[n].dtype) for n in params}


def random_delta(like: Params, norm: float, rng: np.random.Generator) -> Params:
    raw = {n: rng.standard_normal(v.shape) for n, v in like.items()}
    factor = norm / l2_norm(raw)
    return {n: (r * factor).astype(like[n].dtype) for n, r in raw.items()}


def simulate(
    bundle, data, test, *, attack: str, weighting: RobustWeighting | None, split_seed: int, args
) -> tuple[list[float], dict[str, int]]:
    """Accuracy after every round, and how often honest updates were capped or clipped."""
    backend = create_backend("ort-training")
    strategy = create_strategy("fedavg")
    params = bundle.initial_parameters()
    history: list[float] = []
    honest_effects = {"updates": 0, "capped": 0, "clipped": 0}
    for rnd in range(1, args.rounds + 1):
        updates: list[tuple[str, int, Params]] = []  # (agent, claimed, delta) as stored
        for dev, (x, y) in enumerate(data):
            if dev == 0 and attack == "liar":
                continue  # it does not train; it is added below
            delta = train_delta(backend, bundle, params, x, y, dev, rnd, args)
            if dev == 0 and attack == "scaled":
                delta = {n: (SCALED_FACTOR * d).astype(d.dtype) for n, d in delta.items()}
            updates.append((f"dev-{dev}", len(y), delta))
        if attack == "liar":
            honest_median = float(np.median([l2_norm(d) for _, _, d in updates]))
            rng = np.random.default_rng([split_seed, rnd])
            liar = random_delta(params, LIAR_NORM_MULTIPLE * honest_median, rng)
            updates.insert(0, ("dev-0", LIAR_SAMPLES, liar))
        registered = {f"dev-{i}": len(y) for i, (_, y) in enumerate(data)}
        if attack == "liar":
            registered["dev-0"] = LIAR_SAMPLES  # its status lies as well
        agg = strategy.start_aggregation(params)
        if weighting is None:
            for _, claimed, delta in updates:
                agg.add(delta, claimed)
        else:
            plan = weighting.weigh(
                [RoundUpdate(a, n, registered[a], l2_norm(d)) for a, n, d in updates]
            )
            for agent, _, delta in updates:
                w = plan.get(agent)
                if w.accepted:
                    agg.add(scale_delta(delta, w.scale), w.weight)
                if agent != "dev-0" or attack == "honest":
                    honest_effects["updates"] += 1
                    honest_effects["capped"] += w.capped
                    honest_effects["clipped"] += w.clipped
        params = agg.result()
        pred = InferenceRunner(bundle, params).run(test[0]).argmax(1)
        history.append(float((pred == test[1]).mean()))
    return history, honest_effects


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--report-at", type=int, default=10, help="also report this round")
    ap.add_argument("--seeds", type=int, default=5, help="splits (median over them)")
    ap.add_argument("--epochs", type=int, default=5, help="local epochs (the demo's 5)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--norm-multiple", type=float, help="override the default (tuning)")
    ap.add_argument("--cap-multiple", type=float, help="sample_cap_multiple (tuning)")
    ap.add_argument("--norm-window", type=int, help="override the default (tuning)")
    ap.add_argument("--only", default="", help="rows, e.g. 'honest:robust,scaled:robust'")
    args = ap.parse_args()
    options = {
        k: v
        for k, v in (
            ("norm_multiple", args.norm_multiple),
            ("sample_cap_multiple", args.cap_multiple),
            ("norm_window", args.norm_window),
        )
        if v is not None
    }
    table = weightings(options)
    only = set(filter(None, args.only.split(",")))
    rows = [r for r in PLAN if not only or f"{r[0]}:{r[1]}" in only or r == ("honest", "today")]
    logging.basicConfig(level=logging.WARNING)
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}"
    )
    seeds = list(range(args.seeds))
    at = min(args.report_at, args.rounds)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = load_bundle(make_bundle(Path(tmp) / "digits"))
        splits = [split(seed) for seed in seeds]
        print(
            f"fedavg, 10 devices, Dirichlet 0.5, {args.epochs} local epochs, batch "
            f"{args.batch_size}; {args.rounds} rounds; median over splits {seeds} (min-max)"
        )
        print(f"robust = RobustWeighting({', '.join(f'{k}={v}' for k, v in options.items())})")
        print(
            f"| attack | weighting | accuracy r{at} | accuracy r{args.rounds} | "
            f"vs honest today r{at} / r{args.rounds} (points) | honest capped / clipped | s/run |"
        )
        print("|---|---|---|---|---|---|---|")
        base_early: list[float] = []
        baseline: list[float] = []
        for attack, name in rows:
            t = time.perf_counter()
            early, final, effects = [], [], {"updates": 0, "capped": 0, "clipped": 0}
            for s, (data, test) in zip(seeds, splits, strict=True):
                hist, eff = simulate(
                    bundle,
                    data,
                    test,
                    attack=attack,
                    weighting=table[name](),
                    split_seed=s,
                    args=args,
                )
                early.append(hist[at - 1])
                final.append(hist[-1])
                effects = {k: effects[k] + eff[k] for k in effects}
            if (attack, name) == ("honest", "today"):
                base_early, baseline = early, final
            diff_early = 100 * np.median(np.subtract(early, base_early))
            diff = 100 * np.median(np.subtract(final, baseline))
            shown = (
                f"{100 * effects['capped'] / effects['updates']:.0f}% / "
                f"{100 * effects['clipped'] / effects['updates']:.0f}%"
                if effects["updates"]
                else "-"
            )
            print(
                f"| {attack} | {name} | {_cell(early)} | {_cell(final)} | {diff_early:+.1f} / {diff:+.1f} | "
                f"{shown} | {(time.perf_counter() - t) / len(seeds):.1f} |",
                flush=True,
            )
    return 0


def _cell(values: list[float]) -> str:
    return f"{np.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


if __name__ == "__main__":
    sys.exit(main())
