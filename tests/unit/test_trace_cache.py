"""The portable step's export cache: what its key depends on, and that a hit skips the export."""

from __future__ import annotations

import pytest
import torch

from fedge.exporter.portable import trace, trace_cache
from fedge.exporter.portable.decompositions import decomposition_table

NAMES = ["w", "input", "lr"]
REAL_EXPORT = torch.onnx.export


def _step(eps: float):
    def step(w: torch.Tensor, x: torch.Tensor, lr: torch.Tensor) -> tuple[torch.Tensor, ...]:
        w = w.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = (x @ w).pow(2).mean()
            (grad,) = torch.autograd.grad(loss, [w])
        return loss.detach(), w.detach() - lr * grad / (grad.abs() + eps)

    return step


def _args(rows: int = 3, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(rows, 2, generator=gen),
        torch.randn(8, rows, generator=gen),
        torch.tensor(0.1),
    ]


def _key(step, args) -> str:  # noqa: ANN001
    fakes = trace._fake_inputs(args, [False, True, False])
    gm = torch.fx.experimental.proxy_tensor.make_fx(
        step, tracing_mode="fake", decomposition_table=decomposition_table()
    )(*fakes)
    return trace_cache.graph_key(gm, args, (NAMES,), exporter_source=b"v1")


def test_key_ignores_weights_but_not_shapes_constants_or_exporter() -> None:
    base = _key(_step(1e-8), _args())
    assert _key(_step(1e-8), _args(seed=1)) == base  # new weights, same graph
    assert _key(_step(1e-6), _args()) != base  # a constant baked into the graph
    assert _key(_step(1e-8), _args(rows=4)) != base  # a parameter shape
    fakes = trace._fake_inputs(_args(), [False, True, False])
    gm = torch.fx.experimental.proxy_tensor.make_fx(_step(1e-8), tracing_mode="fake")(*fakes)
    other = trace_cache.graph_key(gm, _args(), (NAMES,), exporter_source=b"v2")
    assert other != trace_cache.graph_key(gm, _args(), (NAMES,), exporter_source=b"v1")


def _export(monkeypatch: pytest.MonkeyPatch, calls: list[int]):  # noqa: ANN202
    def counting(*args, **kwargs):  # noqa: ANN002, ANN003
        calls.append(1)
        return REAL_EXPORT(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", counting)
    return trace.export_step(
        _step(1e-8),
        _args(),
        input_names=NAMES,
        output_names=["loss", "new/w"],
        batch_inputs=("input",),
    )


def test_a_second_export_of_the_same_graph_comes_from_the_cache(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(trace_cache.ENV, str(tmp_path / "cache"))
    calls: list[int] = []
    first = _export(monkeypatch, calls)
    second = _export(monkeypatch, calls)
    assert calls == [1]
    assert second.SerializeToString() == first.SerializeToString()
    assert len(list((tmp_path / "cache").glob("*.onnx"))) == 1
    # the batch axis stayed dynamic through the fake-tensor trace
    batch = first.graph.input[1].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value


def test_a_broken_entry_is_exported_again_and_off_writes_nothing(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv(trace_cache.ENV, str(cache))
    calls: list[int] = []
    _export(monkeypatch, calls)
    (entry,) = cache.glob("*.onnx")
    entry.write_bytes(b"not onnx")
    _export(monkeypatch, calls)
    assert calls == [1, 1] and entry.stat().st_size > 100
    monkeypatch.setenv(trace_cache.ENV, "off")
    entry.unlink()
    _export(monkeypatch, calls)
    assert calls == [1, 1, 1] and not list(cache.glob("*.onnx"))
