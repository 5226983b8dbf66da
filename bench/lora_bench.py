"""LoRA vs full fine-tuning of a small transformer classifier: bytes per round and accuracy.

A text classifier (Embedding 64x64, one nn.TransformerEncoderLayer with dropout 0, mean pool,
Linear head) is pretrained in PyTorch on task A (seeded synthetic token ids; the class is the
most frequent token group id % 4), then fine-tuned by a federation on task B (the class is the
second most frequent group): what a device fleet does with a shipped base model.

Two bundles of the same pretrained model: full fine-tuning (every parameter trains) and
``--lora 4 --lora-targets 'encoder.*' --trainable 'head.*'``. Each runs ``--rounds`` FedAvg
rounds over ``--devices`` devices in this process, on each backend (ort-training, ort-portable):
every device trains one epoch on its rows with the real backend, its delta goes through the
agent's ``travelling_delta`` and the wire codec (``encode_tensors``: the bytes counted), and
the orchestrator's own ``validate_delta`` and FedAvg strategy aggregate it. Accuracy is the
global model's on a held-out test set of task B, with the backend's own evaluation.

Usage: .venv/bin/python bench/lora_bench.py [--rounds 40] [--devices 4] [--runs 5]
(bytes and accuracy are deterministic; --runs only sets how many timings the median is of)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VOCAB, SEQ, DIM, CLASSES = 64, 16, 64, 4
LRS = [0.002, 0.01]
EXPORT_LR = 1e-5


def token_data(n: int, seed: int, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and their class: the most (task ``a``) or second most (``b``) frequent group."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, VOCAB, size=(n, SEQ), dtype=np.int64)
    group = x % CLASSES
    counts = np.stack([(group == c).sum(axis=1) for c in range(CLASSES)], axis=1)
    # stable sort: ties go to the smaller group id, so the label is a function of the content
    order = np.argsort(-counts, axis=1, kind="stable")
    return x, order[:, 0 if task == "a" else 1].astype(np.int64)


def build_model():  # noqa: ANN201 - torch is imported here only
    import torch
    from torch import nn

    class TextClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(VOCAB, DIM)
            self.encoder = nn.TransformerEncoderLayer(
                DIM, nhead=4, dim_feedforward=2 * DIM, dropout=0.0, batch_first=True
            )
            self.head = nn.Linear(DIM, CLASSES)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.encoder(self.embed(x)).mean(dim=1))

    torch.manual_seed(0)
    return TextClassifier()


def pretrain(model, steps: int = 400):  # noqa: ANN001, ANN201
    """Task A in PyTorch (the 'base model' a vendor ships)."""
    import torch

    x, y = token_data(4096, seed=100, task="a")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = np.random.default_rng(0)
    for _ in range(steps):
        idx = gen.integers(0, len(y), 64)
        loss = torch.nn.functional.cross_entropy(
            model(torch.from_numpy(x[idx])), torch.from_numpy(y[idx])
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    xt, yt = token_data(1024, seed=101, task="a")
    with torch.no_grad():
        acc = (model(torch.from_numpy(xt)).argmax(1).numpy() == yt).mean()
    return model, float(acc)


def export(model, out: Path, lora: bool) -> Path:  # noqa: ANN001
    from fedge.exporter.export import export_bundle
    from fedge.exporter.lora import LoraOptions

    options: dict = (
        {"trainable": ["head.*"], "lora": LoraOptions(4, ("encoder.*",))} if lora else {}
    )
    return export_bundle(
        model,
        input_shape=(SEQ,),
        input_dtype="int64",
        out_dir=out,
        # The rounds train at --lr (as a round config's learning_rate does). The export's AdamW step
        # check runs at the bundle's rate: its batch has token ids 0 and 1 only, so many
        # attention-weight gradients are rounding noise, which AdamW turns into steps of size lr.
        lr=EXPORT_LR,
        model_name="text-lora" if lora else "text-full",
        **options,
    )


def federate(bundle_dir: Path, backend_name: str, rounds: int, devices: int, lr: float) -> dict:
    """FedAvg rounds in this process with the real backend, codec, validation and strategy."""
    from fedge.agent.backends import create_backend
    from fedge.orchestrator.strategies import create_strategy
    from fedge.orchestrator.validation import validate_delta
    from fedge.protocol.bundle import load_bundle
    from fedge.protocol.parameter_travel import static_names, travelling_delta
    from fedge.protocol.tensors import encode_tensors

    bundle = load_bundle(bundle_dir)
    manifest = bundle.manifest
    omittable = static_names(manifest)
    shards = [token_data(256, seed=10 + d, task="b") for d in range(devices)]
    x_test, y_test = token_data(1024, seed=99, task="b")
    backends = [create_backend(backend_name) for _ in range(devices)]
    for b in backends:
        b.load(bundle, learning_rate=lr)
    strategy = create_strategy("fedavg", {})
    global_params = bundle.initial_parameters()
    accuracy = [_accuracy(backends[0], global_params, x_test, y_test)]
    upload_bytes, seconds = [], []
    for r in range(rounds):
        agg = strategy.start_aggregation(global_params)
        sent = 0
        started = time.perf_counter()
        for d, (backend, (x, y)) in enumerate(zip(backends, shards, strict=True)):
            backend.set_parameters(global_params)
            backend.train(x, y, epochs=1, batch_size=32, seed=1000 * r + d)
            trained = backend.get_parameters()
            delta = {n: trained[n] - global_params[n] for n in global_params}
            blob = encode_tensors(travelling_delta(manifest, delta))
            sent += len(blob)
            agg.add(validate_delta(blob, global_params, omittable=omittable), len(y))
        seconds.append(time.perf_counter() - started)
        new = agg.result()
        assert new is not None
        global_params = new
        upload_bytes.append(sent / devices)
        accuracy.append(_accuracy(backends[0], global_params, x_test, y_test))
    return {
        "bytes_per_device_round": statistics.median(upload_bytes),
        "download_bytes": len(encode_tensors(global_params)),
        "accuracy": accuracy,
        "seconds_per_round": statistics.median(seconds),
        "trainable": sum(int(np.prod(p.shape)) for p in manifest.parameters if p.trainable),
        "total": sum(int(np.prod(p.shape)) for p in manifest.parameters),
    }


def _accuracy(backend, params, x, y) -> float:  # noqa: ANN001
    backend.set_parameters(params)
    result = backend.evaluate(x, y)
    return float(result.accuracy or 0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument(
        "--lr", type=float, nargs="+", default=LRS, help="AdamW rates to run each mode at"
    )
    parser.add_argument("--runs", type=int, default=1, help="repeat the federations (timings)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import copy

    import onnxruntime
    import torch

    torch.set_num_threads(1)
    base, pre_acc = pretrain(build_model())
    print(
        f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, torch "
        f"{torch.__version__}, onnxruntime {onnxruntime.__version__}"
    )
    print(f"base model: pretrained on task A, test accuracy {pre_acc:.3f}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedge-lora-bench-") as tmp:
        bundles = {}
        for mode in ("full", "lora"):
            started = time.perf_counter()
            bundles[mode] = export(copy.deepcopy(base), Path(tmp) / mode, mode == "lora")
            print(f"export {mode}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
        for backend in ("ort-training", "ort-portable"):
            for lr in args.lr:
                for mode in ("full", "lora"):
                    runs = [
                        federate(bundles[mode], backend, args.rounds, args.devices, lr)
                        for _ in range(args.runs)
                    ]
                    result = runs[0]
                    result["seconds_per_round"] = statistics.median(
                        r["seconds_per_round"] for r in runs
                    )
                    rows.append((backend, lr, mode, result))
    full = {(b, lr): r for b, lr, m, r in rows if m == "full"}
    marks = sorted({0, 1, 5, 10, 20, args.rounds} & set(range(args.rounds + 1)))
    print(
        f"\n{args.devices} devices x 256 rows, {args.rounds} FedAvg rounds, 1 epoch/round, "
        "batch 32, AdamW; accuracy on 1,024 held-out task-B rows"
    )
    print(
        "| backend | fine-tuning | lr | trainable / total values | delta bytes per device-round "
        f"| vs full | accuracy after round {' / '.join(map(str, marks))} | s per round |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for backend, lr, mode, r in rows:
        ratio = r["bytes_per_device_round"] / full[backend, lr]["bytes_per_device_round"]
        label = "LoRA r4 (encoder.*) + head" if mode == "lora" else "full"
        print(
            f"| {backend} | {label} | {lr:g} | {r['trainable']:,} / {r['total']:,} | "
            f"{r['bytes_per_device_round']:,.0f} | {ratio:.3f}x | "
            + " / ".join(f"{r['accuracy'][i]:.3f}" for i in marks)
            + f" | {r['seconds_per_round']:.2f} |"
        )
    print(
        f"\n(download of the global model per device-round: {rows[0][3]['download_bytes']:,} "
        "bytes in both modes: full parameters)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
