"""Learning quality of the aggregation strategies: in-process federated simulation.

Digits (scikit-learn), 20% held out for testing, the rest split over 10 devices non-IID
(Dirichlet alpha 0.5, seed 0). Each device trains with the real agent backend
(``ort-training`` on the exporter's bundle: MLP 64-32-10... as fedge.demo.models.digits_mlp,
AdamW lr 0.01, fresh optimizer state per round as on a device); the orchestrator's strategies
aggregate. No MQTT: this measures learning, not transport.

Part 1: rounds until the global model reaches 95% test accuracy, per strategy.
Part 2: 2 of 10 devices poisoned (they send -10 x their honest delta): final accuracy of
FedAvg vs the robust strategies.

FedProx's proximal term is not in the agent backend yet; here it is applied as a decoupled
proximal step before every optimizer step: w <- w - lr * mu * (w - w_global).

Usage: python bench/learning_quality.py [--rounds 40] [--only fedavg,fedadam] [--part 1|2]
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
from pathlib import Path

import numpy as np

from fedge.agent.backends import create_backend
from fedge.demo.data import dirichlet_split, load_sklearn_dataset
from fedge.orchestrator.strategies import create_strategy
from fedge.protocol.bundle import load_bundle
from fedge.protocol.inference import InferenceRunner

CLEAN = [
    ("fedavg", {}),
    ("fedavgm", {"momentum": 0.5}),
    ("fedavgm", {"momentum": 0.9}),
    ("fedprox", {"proximal_mu": 0.1}),
    ("fedprox", {"proximal_mu": 1.0}),
    ("fedadam", {"eta": 0.01}),
    ("fedadam", {"eta": 0.03}),
    ("fedyogi", {"eta": 0.03}),
    ("fedadagrad", {"eta": 0.03}),
]
ROBUST = [
    ("fedavg", {}),
    ("median", {}),
    ("trimmed_mean", {"trim_fraction": 0.2}),
    ("krum", {"byzantine": 2}),
]


def make_bundle(out: Path) -> Path:
    from fedge.demo.models import digits_mlp
    from fedge.exporter.export import export_bundle

    return export_bundle(
        digits_mlp(),
        input_shape=(64,),
        out_dir=out,
        optimizer="adamw",
        lr=0.01,
        num_classes=10,
        model_name="digits-mlp",
    )


def split(seed: int = 0, devices: int = 10, alpha: float = 0.5):
    x, y = load_sklearn_dataset("digits")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    n_test = len(y) // 5
    test, train = order[:n_test], order[n_test:]
    parts = dirichlet_split(y[train], devices, alpha, seed)
    return [(x[train][p], y[train][p]) for p in parts], (x[test], y[test])


def simulate(
    bundle,
    data,
    test,
    strategy_name,
    options,
    *,
    rounds,
    poisoned=0,
    target=0.95,
    epochs=1,
    batch_size=16,
    stop_at_target=True,
):
    strategy = create_strategy(strategy_name, options)
    mu = options.get("proximal_mu", 0.0) if strategy_name == "fedprox" else 0.0
    lr = float(bundle.manifest.optimizer.lr)
    backend = create_backend("ort-training")
    params = bundle.initial_parameters()
    history = []
    reached = None
    for rnd in range(1, rounds + 1):
        agg = strategy.start_aggregation(params)
        for dev, (x, y) in enumerate(data):
            backend.load(bundle)
            backend.set_parameters(params)
            hook = (lambda g=params: _prox(backend, g, lr, mu)) if mu else (lambda: "")
            seed = int.from_bytes(hashlib.sha256(f"{dev}/{rnd}".encode()).digest()[:4], "big")
            backend.train(x, y, epochs=epochs, batch_size=batch_size, seed=seed, should_stop=hook)
            local = backend.get_parameters()
            delta = {n: (local[n] - params[n]).astype(params[n].dtype) for n in params}
            if dev < poisoned:
                delta = {n: (-10.0 * d).astype(d.dtype) for n, d in delta.items()}
            agg.add(delta, len(y))
        params = agg.result()
        acc = float((InferenceRunner(bundle, params).run(test[0]).argmax(1) == test[1]).mean())
        history.append(acc)
        if reached is None and acc >= target:
            reached = rnd
            if stop_at_target:
                break
    return reached, history


def _prox(backend, global_params, lr, mu) -> str:
    current = backend.get_parameters()
    backend.set_parameters(
        {n: (w - lr * mu * (w - global_params[n])).astype(w.dtype) for n, w in current.items()}
    )
    return ""


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--poison-rounds", type=int, default=30)
    ap.add_argument("--part", choices=["1", "2", "both"], default="both")
    ap.add_argument("--only", default="")
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}"
    )
    seeds = list(range(args.seeds))
    with tempfile.TemporaryDirectory() as tmp:
        bundle = load_bundle(make_bundle(Path(tmp) / "digits"))
        splits = [split(seed) for seed in seeds]
        print(f"seeds {seeds}; seed 0 device sizes {[len(y) for _, y in splits[0][0]]}")
        only = set(filter(None, args.only.split(",")))
        if args.part in ("1", "both"):
            print(f"\nrounds to 95% test accuracy, median over {len(seeds)} splits (min-max)")
            print("| strategy | options | rounds to 95% | accuracy at round 10 (median) | s/run |")
            print("|---|---|---|---|---|")
            for name, opts in CLEAN:
                if only and name not in only:
                    continue
                t = time.perf_counter()
                reached, at10 = [], []
                for data, test in splits:
                    r, hist = simulate(bundle, data, test, name, opts, rounds=args.rounds)
                    reached.append(r or args.rounds + 1)
                    at10.append(hist[9] if len(hist) >= 10 else max(hist))
                med = int(np.median(reached))
                shown = f"{med}" if med <= args.rounds else f"> {args.rounds}"
                print(
                    f"| {name} | {opts or ''} | {shown} ({min(reached)}-{max(reached)}) | "
                    f"{np.median(at10):.4f} | {(time.perf_counter() - t) / len(seeds):.1f} |",
                    flush=True,
                )
        if args.part in ("2", "both"):
            print(
                f"\n2 of 10 devices send -10 x their delta; {args.poison_rounds} rounds, "
                f"median over {len(seeds)} splits"
            )
            print("| strategy | options | final accuracy | rounds to 95% |")
            print("|---|---|---|---|")
            for name, opts in ROBUST:
                if only and name not in only:
                    continue
                finals, reached = [], []
                for data, test in splits:
                    r, hist = simulate(
                        bundle,
                        data,
                        test,
                        name,
                        opts,
                        rounds=args.poison_rounds,
                        poisoned=2,
                        stop_at_target=False,
                    )
                    finals.append(hist[-1])
                    reached.append(r or args.poison_rounds + 1)
                med = int(np.median(reached))
                print(
                    f"| {name} | {opts or ''} | {np.median(finals):.4f} "
                    f"({min(finals):.4f}-{max(finals):.4f}) | "
                    f"{med if med <= args.poison_rounds else '-'} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
