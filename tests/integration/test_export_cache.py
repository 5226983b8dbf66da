"""A warm export cache: the portable step is neither traced nor exported again, and is still checked.

Real exports (torch, onnxscript, ONNX Runtime) of a tiny model with AdamW and SGD (the
default); the cache lives in tmp_path.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from fedge.exporter.export import export_bundle
from fedge.exporter.portable import build, trace, trace_cache
from fedge.protocol.bundle import load_bundle
from fedge.protocol.ort_runtime import import_onnxruntime

pytestmark = pytest.mark.integration


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 5), nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.fixture
def counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Counts make_fx calls and the ONNX Runtime sessions built on portable step files.

    (That the key misses when the model's code changes: tests/unit/test_trace_cache.py.)
    """
    monkeypatch.setenv(trace_cache.ENV, str(tmp_path / "cache"))
    calls: dict[str, list[str]] = {"make_fx": [], "sessions": []}
    real_make_fx = trace.make_fx
    ort = import_onnxruntime(block_torch=False)

    def make_fx(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls["make_fx"].append("x")
        return real_make_fx(*args, **kwargs)

    class Session(ort.InferenceSession):
        def __init__(self, path, *args, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003
            if isinstance(path, str) and Path(path).name.startswith("portable_step"):
                calls["sessions"].append(Path(path).name)
            super().__init__(path, *args, **kwargs)

    monkeypatch.setattr(trace, "make_fx", make_fx)
    monkeypatch.setattr(ort, "InferenceSession", Session)
    return calls


def _export(model: nn.Module, out: Path) -> Path:
    return export_bundle(model, input_shape=(6,), out_dir=out, lr=0.05)


def _step_files(bundle: Path) -> dict[str, bytes]:
    manifest = load_bundle(bundle).manifest
    assert "ort-portable" in manifest.backends, manifest.portable
    names = [o.files["ort-portable"] for o in manifest.optimizers]
    return {n: (bundle / n).read_bytes() for n in names}


def test_a_warm_export_does_not_trace_and_still_checks_each_step(
    tmp_path: Path, counted: dict[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _step_files(_export(_Tiny(), tmp_path / "a"))
    assert len(first) == 2 and counted["make_fx"] == ["x"]
    sessions = list(counted["sessions"])
    assert sorted(sessions) == sorted(first)  # one session per step file, reused by the check

    # new weights, same architecture: nothing traced, the same graphs, each checked again
    parity: list[float] = []
    real_parity = build.step_parity

    def counting_parity(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        numbers = real_parity(*args, **kwargs)
        parity.append(numbers["step_max_abs_diff"])
        return numbers

    monkeypatch.setattr(build, "step_parity", counting_parity)
    second = _step_files(_export(_Tiny(), tmp_path / "b"))
    assert counted["make_fx"] == ["x"]
    assert sorted(counted["sessions"]) == sorted(sessions * 2)
    assert second == first
    assert len(parity) == 2 and all(d <= 1e-4 for d in parity)
