"""Training throughput and peak RSS: ort-training vs ort-portable vs PyTorch eager.

Same model, same initial weights, same shuffled batches, one thread everywhere. Every run is
its own subprocess (peak RSS = ru_maxrss of that process, which includes importing the
runtime); throughput counts only the training loop. Median of --runs runs.

With --interleaved: one process, ort-training and ort-portable (and ort-portable with one step
per session run, the path before the epoch graph) trained alternately one epoch at a time,
--runs rounds; samples/s over the process's CPU time (the backends run single-threaded in the
calling thread, so CPU time is what a loaded, shared machine distorts least), median per
backend, and the ratio to ort-training. Every backend gets the same thread caps
(``single_thread_session_options``: intra/inter-op 1 thread, no spinning; ort-training's
optimizer session takes its module's options).

MLP = digits_mlp (64-64-10), CNN = conv-pool-conv-fc on 1x8x8, transformer = the zoo's
TinyEncoder (one nn.TransformerEncoderLayer, dim 8, 2 heads) over the 64 digit pixels as tokens.

Usage: .venv/bin/python bench/backends_bench.py [--runs 5] [--epochs 3] [--batch-size 32]
       .venv/bin/python bench/backends_bench.py --interleaved --runs 9 [--optimizer adamw]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BACKENDS = ("pytorch", "ort-training", "ort-portable")
MODELS = {"mlp": (64,), "cnn": (1, 8, 8), "transformer": (64,)}
DTYPES = {"transformer": "int64"}  # token ids: the digit pixel values 0..16


def tiny_encoder():
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from zoo.models import TinyEncoder

    torch.manual_seed(0)
    return TinyEncoder(dropout=0.0, vocab=17, classes=10)


def model_inputs(kind: str, data) -> object:
    """The digits as model ``kind`` reads them (pixels in [0, 1], or token ids 0..16)."""
    if kind == "transformer":
        return (data["x"] * 16.0).round().astype("int64")
    return data["x"].reshape(-1, *MODELS[kind])


def small_cnn():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 2 * 2, 10),
    )


def build_model(kind: str):
    from fedge.demo.models import digits_mlp

    if kind == "transformer":
        return tiny_encoder()
    return digits_mlp() if kind == "mlp" else small_cnn()


def save_digits(path: Path) -> None:
    import numpy as np
    from sklearn.datasets import load_digits

    data = load_digits()
    np.savez(path, x=(data.data / 16.0).astype("float32"), y=data.target.astype("int64"))


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM starts afresh at exec; ru_maxrss may carry the parent's."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args: argparse.Namespace) -> None:
    """One measurement in this process; prints a JSON line."""
    import numpy as np

    with np.load(args.data) as data:  # no scikit-learn in the measured process
        x, y = model_inputs(args.model, data), data["y"]
    if args.backend == "pytorch":
        import torch

        from fedge.agent.backends.base import batches
        from fedge.protocol.bundle import load_bundle

        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
        bundle = load_bundle(args.bundle)
        model = build_model(args.model).train()
        model.load_state_dict(
            {n: torch.from_numpy(v) for n, v in bundle.initial_parameters().items()}
        )
        spec = bundle.manifest.optimizer
        if spec.type == "adamw":
            hyper = spec.hyperparameters
            opt = torch.optim.AdamW(
                model.parameters(),
                lr=spec.lr,
                betas=tuple(hyper["betas"]),
                eps=hyper["eps"],
                weight_decay=hyper["weight_decay"],
            )
        else:
            opt = torch.optim.SGD(model.parameters(), lr=spec.lr)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        rng = np.random.default_rng(0)
        start = time.perf_counter()
        for _ in range(args.epochs):
            for idx in batches(len(y), args.batch_size, rng):
                ti = torch.from_numpy(idx)
                loss = torch.nn.functional.cross_entropy(model(xt[ti]), yt[ti])
                opt.zero_grad()
                loss.backward()
                opt.step()
        seconds = time.perf_counter() - start
    else:
        from fedge.agent.backends import create_backend
        from fedge.protocol.bundle import load_bundle

        bundle = load_bundle(args.bundle)
        backend = create_backend(args.backend, threads=1)
        backend.load(bundle)
        start = time.perf_counter()
        backend.train(x, y, epochs=args.epochs, batch_size=args.batch_size, seed=0)
        seconds = time.perf_counter() - start
    rss_mb = peak_rss_mb()
    torch_loaded = sys.modules.get("torch") is not None
    print(
        json.dumps(
            {
                "samples_per_s": args.epochs * len(y) / seconds,
                "rss_mb": rss_mb,
                "torch_loaded": torch_loaded,
            }
        )
    )


def export_bundles(out: Path, optimizer: str = "sgd") -> dict[str, Path]:
    from fedge.exporter.export import export_bundle

    paths = {}
    for kind, shape in MODELS.items():
        paths[kind] = export_bundle(
            build_model(kind),
            input_shape=shape,
            input_dtype=DTYPES.get(kind, "float32"),
            out_dir=out / kind,
            optimizer=optimizer,
            lr=0.05 if optimizer == "sgd" else 1e-3,
        )
    return paths


def interleaved(args: argparse.Namespace) -> None:
    """Both ONNX Runtime backends in this process, one epoch each in turn (CPU time)."""
    import numpy as np

    from fedge.agent.backends import create_backend
    from fedge.agent.backends.ort_portable import OrtPortableBackend
    from fedge.protocol.bundle import load_bundle

    print(
        f"digits (1797 samples), {args.optimizer}, batch {args.batch_size}, 1 thread, "
        f"interleaved in one process, median of {args.runs} epochs each, samples/s of CPU time"
    )
    print(f"{'model':12} {'backend':23} {'samples/s':>10} {'vs ort-training':>16}")
    with tempfile.TemporaryDirectory(prefix="fedge-bench-") as tmp:
        bundles = export_bundles(Path(tmp), args.optimizer)
        save_digits(Path(tmp) / "digits.npz")
        with np.load(Path(tmp) / "digits.npz") as data:
            arrays = {"x": data["x"], "y": data["y"]}
        for kind in MODELS:
            bundle = load_bundle(bundles[kind])
            x, y = model_inputs(kind, arrays), arrays["y"]
            backends = {
                "ort-training": create_backend("ort-training"),
                "ort-portable": OrtPortableBackend(),
                "ort-portable (per step)": OrtPortableBackend(epoch_steps=0),
            }
            rates: dict[str, list[float]] = {name: [] for name in backends}
            for backend in backends.values():
                backend.load(bundle)
            for run in range(args.runs):
                for name, backend in backends.items():
                    start = time.process_time()
                    backend.train(x, y, epochs=1, batch_size=args.batch_size, seed=run)
                    rates[name].append(len(y) / (time.process_time() - start))
            base = statistics.median(rates["ort-training"])
            load = os.getloadavg()[0]
            for name, values in rates.items():
                rate = statistics.median(values)
                print(f"{kind:12} {name:23} {rate:10.0f} {rate / base:15.2f}x   load {load:.1f}")


def measure(kind: str, backend: str, bundle: Path, args: argparse.Namespace) -> list[dict]:
    runs = []
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for _ in range(args.runs):
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            "--model",
            kind,
            "--backend",
            backend,
            "--bundle",
            str(bundle),
            "--data",
            str(args.data),
            "--epochs",
            str(args.epochs),
            "--batch-size",
            str(args.batch_size),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return runs


def machine() -> str:
    import numpy
    import onnxruntime
    import torch

    return (
        f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}, "
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, numpy {numpy.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--interleaved", action="store_true", help="both ORT backends in one process, alternating"
    )
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=sorted(MODELS), help=argparse.SUPPRESS)
    parser.add_argument("--backend", choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--bundle", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    import logging

    logging.basicConfig(level=logging.ERROR)
    print(f"machine: {machine()}")
    if args.interleaved:
        interleaved(args)
        return
    print(
        f"digits (1797 samples), {args.optimizer}, batch {args.batch_size}, {args.epochs} epochs, "
        f"1 thread, median of {args.runs} runs, each in its own process"
    )
    with tempfile.TemporaryDirectory(prefix="fedge-bench-") as tmp:
        bundles = export_bundles(Path(tmp), args.optimizer)
        args.data = Path(tmp) / "digits.npz"
        save_digits(args.data)
        print(
            f"{'model':5} {'backend':13} {'samples/s':>10} {'vs torch':>9} {'peak RSS MB':>12} "
            f"{'vs torch':>9} {'torch loaded':>13}"
        )
        for kind in MODELS:
            base = None
            medians = {}
            for backend in BACKENDS:
                runs = measure(kind, backend, bundles[kind], args)
                sps = statistics.median(r["samples_per_s"] for r in runs)
                rss = statistics.median(r["rss_mb"] for r in runs)
                base = base or (sps, rss)
                medians[backend] = sps
                print(
                    f"{kind:5} {backend:13} {sps:10.0f} {sps / base[0]:8.2f}x {rss:12.0f} "
                    f"{rss / base[1]:8.2f}x {str(runs[0]['torch_loaded']):>13}"
                )
            ratio = medians["ort-portable"] / medians["ort-training"]
            print(f"{kind:5} ort-portable / ort-training throughput: {ratio:.2f}x")


if __name__ == "__main__":
    main()
