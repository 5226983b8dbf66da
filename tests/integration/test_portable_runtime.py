"""The ``ort-portable`` backend on whatever ONNX Runtime is installed, without torch.

Marked ``portable_runtime``: scripts/test-current-ort.sh runs these in a venv with the newest
plain ``onnxruntime`` (no training wheel, no torch) on bundles and reference results built by
the main venv (``FEDGE_PORTABLE_FIXTURES``, see tests/support/portable_fixtures.py). In the main
venv they build their own fixtures and compare the runtime against itself.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import portable_fixtures as pf

from fedge.agent.backends import create_backend
from fedge.agent.backends.ort_portable import OrtPortableBackend
from fedge.protocol.bundle import load_bundle

pytestmark = [pytest.mark.integration, pytest.mark.portable_runtime]

TOLERANCE = 1e-4  # the two-backend agreement bound; kernels may differ between ORT versions


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("FEDGE_PORTABLE_FIXTURES")
    if given:
        root = Path(given)
        if not (root / pf.INDEX).exists():
            pytest.fail(f"FEDGE_PORTABLE_FIXTURES={given} holds no {pf.INDEX}: build it first")
        return root
    if importlib.util.find_spec("torch") is None:
        pytest.skip("no torch to export bundles and FEDGE_PORTABLE_FIXTURES is not set")
    return pf.build(tmp_path_factory.mktemp("portable-fixtures"))


def _max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert set(a) == set(b), sorted(set(a) ^ set(b))
    return max(float(np.abs(a[n].astype(np.float64) - b[n]).max()) for n in a)


def _backend(fixtures: Path, name: str):  # noqa: ANN202
    bundle = load_bundle(fixtures / name)
    backend = create_backend("ort-portable")
    backend.load(bundle)
    return bundle, backend


@pytest.mark.parametrize("name", sorted(pf.MODELS))
@pytest.mark.parametrize("label", ["plain", "proximal"])
def test_trains_to_the_reference_parameters(fixtures: Path, name: str, label: str) -> None:
    bundle, backend = _backend(fixtures, name)
    x, y = pf.data(pf.MODELS[name][0])
    mu = pf.PROXIMAL_MU if label == "proximal" else 0.0
    result = backend.train(x, y, **pf.TRAIN, proximal_mu=mu, anchor=bundle.initial_parameters())
    got = backend.get_parameters()
    expected = pf.expected_parameters(fixtures, name, label)
    assert _max_diff(got, expected) < TOLERANCE
    reference = json.loads((fixtures / pf.INDEX).read_text())["models"][name]
    assert abs(result.loss - reference[f"{label}_loss"]) < TOLERANCE
    assert abs(backend.evaluate(x, y).loss - reference[f"{label}_eval_loss"]) < TOLERANCE
    assert _max_diff(got, bundle.initial_parameters()) > 1e-3  # it did train


def test_dropout_training_is_reproducible_from_the_round_seed(fixtures: Path) -> None:
    bundle, _ = _backend(fixtures, "mlp_dropout")
    assert bundle.manifest.portable is not None
    assert bundle.manifest.portable.seed_name == "dropout_seed"
    x, y = pf.data(pf.MODELS["mlp_dropout"][0])
    runs = {}
    for label, seed in (("a", 5), ("again", 5), ("other", 6)):
        _, backend = _backend(fixtures, "mlp_dropout")
        backend.train(x, y, epochs=1, batch_size=24, seed=seed)
        runs[label] = backend.get_parameters()
    assert _max_diff(runs["a"], runs["again"]) == 0.0  # same seed: same masks, same batches
    assert _max_diff(runs["a"], runs["other"]) > 1e-3


@pytest.mark.parametrize("name", ["mlp_dropout", "cnn_bn"])
def test_epoch_graph_equals_one_step_per_run(fixtures: Path, name: str) -> None:
    """The step in an ONNX Loop (16 batches per run) on this runtime: the same parameters as
    one step per run, dropout masks (one seed per step) and running statistics included."""
    bundle = load_bundle(fixtures / name)
    x, y = pf.data(pf.MODELS[name][0])
    got = []
    for steps in (16, 0):
        backend = OrtPortableBackend(epoch_steps=steps)
        backend.load(bundle)
        result = backend.train(x, y, epochs=2, batch_size=8, seed=4)  # 25 full batches
        assert (backend._bound()._epoch is not None) == (steps > 0)  # built on this runtime
        got.append((backend.get_parameters(), result.loss))
    assert _max_diff(got[0][0], got[1][0]) == 0.0
    assert got[0][1] == got[1][1]


def test_parameters_handed_out_are_copies(fixtures: Path) -> None:
    """The step writes into bound buffers: what get_parameters() returned must not move."""
    bundle, backend = _backend(fixtures, "cnn_bn")
    x, y = pf.data(pf.MODELS["cnn_bn"][0])
    backend.train(x, y, epochs=1, batch_size=32, seed=0)
    first = backend.get_parameters()
    kept = {n: v.copy() for n, v in first.items()}
    before = backend.evaluate(x, y)
    backend.train(x, y, epochs=1, batch_size=32, seed=1)
    assert _max_diff(first, kept) == 0.0
    assert backend.evaluate(x, y).loss != before.loss  # evaluation follows the new weights
    backend.set_parameters(first)  # ... and a restored state evaluates as before
    assert abs(backend.evaluate(x, y).loss - before.loss) < 1e-9
    assert _max_diff(backend.get_parameters(), first) == 0.0


PROCESS_CHECK = """
import json, sys
from fedge.agent.backends import available_backends, create_backend
from fedge.protocol.bundle import load_bundle
backend = create_backend("ort-portable")  # imports onnxruntime without torch
import onnxruntime
backend.load(load_bundle(sys.argv[1]))
print(json.dumps({
    "runtime": backend.runtime, "version": onnxruntime.__version__,
    "available": available_backends(),
    "imported": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx")
                       and sys.modules[m] is not None),
}))
"""


def test_process_reports_its_runtime_and_imports_neither_torch_nor_onnx(fixtures: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROCESS_CHECK, str(fixtures / "mlp")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["imported"] == [], report
    assert report["runtime"].startswith(f"onnxruntime {report['version']}"), report
    assert "ort-portable" in report["available"]


def test_doctor_names_the_runtime() -> None:
    import onnxruntime

    from fedge.provision.doctor import check_backend

    check = check_backend()
    assert f"onnxruntime {onnxruntime.__version__}" in check.detail, check
