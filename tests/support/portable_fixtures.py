"""Bundles and reference results for the ``portable_runtime`` tests, built where torch is.

The tests in tests/integration/test_portable_runtime.py run the ``ort-portable`` backend in an
environment with only plain ``onnxruntime`` (scripts/test-current-ort.sh: the newest wheel, no
torch). They need bundles made by the exporter and the parameters the backend reached with the
runtime that exported them (ORT 1.19 here), so a newer runtime is checked against it.

Build: ``PYTHONPATH=tests .venv/bin/python -m support.portable_fixtures OUT_DIR``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from fedge.protocol.tensors import decode_tensors, encode_tensors

# name -> (input shape, optimizer, lr)
# AdamW on the CNN: ties in MaxPool after ReLU give the exporter's parity check gradients of
# ~1e-9 that AdamW turns into full steps (a known limit of that check); SGD there.
# mlp_dropout: seeded dropout masks (the step's dropout_seed input) must be the same on every
# runtime, so a newer onnxruntime reaches the same parameters from the same round seed.
MODELS = {
    "mlp": ((64,), "adamw", 1e-3),
    "cnn_bn": ((1, 8, 8), "sgd", 0.05),
    "mlp_dropout": ((64,), "adamw", 1e-3),
}
TRAIN = {"epochs": 2, "batch_size": 24, "seed": 3}  # 200 samples: the last batch is short
PROXIMAL_MU = 0.5
INDEX = "index.json"


def data(shape: tuple[int, ...], n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic inputs and class labels (10 classes) that need no data set package."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(n, *shape)).astype(np.float32)
    return x, (np.arange(n) % 10).astype(np.int64)


def build_model(name: str):  # noqa: ANN201 - torch only exists at build time
    import torch
    from torch import nn

    torch.manual_seed(0)
    if name == "mlp":
        return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    if name == "mlp_dropout":
        return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 10))
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 2 * 2, 10),
    )


def reference_run(bundle_dir: Path, name: str) -> dict[str, dict[str, np.ndarray] | float]:
    """What ``ort-portable`` reaches from the bundle's initial parameters (plain and FedProx)."""
    from fedge.agent.backends import create_backend
    from fedge.protocol.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    x, y = data(MODELS[name][0])
    out: dict[str, dict[str, np.ndarray] | float] = {}
    for label, mu in (("plain", 0.0), ("proximal", PROXIMAL_MU)):
        backend = create_backend("ort-portable")
        backend.load(bundle)
        anchor = bundle.initial_parameters()
        result = backend.train(x, y, **TRAIN, proximal_mu=mu, anchor=anchor)
        out[label] = backend.get_parameters()
        out[f"{label}_loss"] = result.loss
        out[f"{label}_eval_loss"] = backend.evaluate(x, y).loss
    return out


def build(out: Path) -> Path:
    """Export every model into ``out`` and write the reference results beside the bundles."""
    import onnxruntime

    from fedge.exporter.export import export_bundle

    out.mkdir(parents=True, exist_ok=True)
    index: dict[str, object] = {"onnxruntime": onnxruntime.__version__, "models": {}}
    for name, (shape, optimizer, lr) in MODELS.items():
        bundle_dir = out / name
        if not (bundle_dir / "manifest.json").exists():
            export_bundle(
                build_model(name), input_shape=shape, out_dir=bundle_dir, optimizer=optimizer, lr=lr
            )
        ref = reference_run(bundle_dir, name)
        for label in ("plain", "proximal"):
            (out / f"{name}.{label}.safetensors").write_bytes(encode_tensors(ref[label]))
        index["models"][name] = {k: v for k, v in ref.items() if isinstance(v, float)}
    (out / INDEX).write_text(json.dumps(index, indent=2))
    return out


def expected_parameters(root: Path, name: str, label: str) -> dict[str, np.ndarray]:
    return dict(decode_tensors((root / f"{name}.{label}.safetensors").read_bytes()))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m support.portable_fixtures OUT_DIR")
    print(build(Path(sys.argv[1])))
