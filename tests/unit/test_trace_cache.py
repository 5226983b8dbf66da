"""The portable step's export cache: what its key depends on, and that a hit skips the export."""

from __future__ import annotations

import pytest
import torch

from fedge.exporter.portable import step_key, trace, trace_cache

NAMES = ["w", "input", "lr"]
REAL_EXPORT = torch.onnx.export
REAL_MAKE_FX = trace.make_fx


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


def _key(step, args, source: bytes = b"v1") -> str:  # noqa: ANN001
    return step_key.step_key(step, args, (NAMES,), context=trace._trace_context, source=source)


def test_key_ignores_weights_but_not_shapes_constants_code_or_fedge_source() -> None:
    base = _key(_step(1e-8), _args())
    assert _key(_step(1e-8), _args()) == base  # deterministic
    assert _key(_step(1e-8), _args(seed=1)) == base  # new weights, same graph
    assert _key(_step(1e-6), _args()) != base  # a constant baked into the graph
    assert _key(_step(1e-8), _args(rows=4)) != base  # a parameter shape
    assert _key(_step(1e-8), _args(), source=b"v2") != base  # fedge's step builder changed


def _model_step(model: torch.nn.Module):  # noqa: ANN202
    def step(w: torch.Tensor, x: torch.Tensor, lr: torch.Tensor) -> tuple[torch.Tensor, ...]:
        w = w.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = model(x @ w).pow(2).mean()
            (grad,) = torch.autograd.grad(loss, [w])
        return loss.detach(), w.detach() - lr * grad

    return step


class _Act(torch.nn.Module):
    def __init__(self, kind: str, scale: torch.Tensor | None = None) -> None:
        super().__init__()
        self.kind, self.scale = kind, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(x) if self.kind == "relu" else torch.nn.functional.gelu(x)
        return y if self.scale is None else y * self.scale


class _Twice(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # noqa: ANN001, ANN205
        return x * 2

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        return grad * 2


def test_key_follows_the_models_code_wherever_it_lives() -> None:
    relu = _key(_model_step(_Act("relu")), _args())
    assert _key(_model_step(_Act("relu")), _args()) == relu  # a new instance, same code
    assert _key(_model_step(_Act("gelu")), _args()) != relu  # the forward changed
    # a tensor the step reads that is no input is hashed by value
    one = _key(_model_step(_Act("relu", torch.ones(2))), _args())
    assert _key(_model_step(_Act("relu", torch.full((2,), 2.0))), _args()) != one

    class TwiceThrice(_Twice):
        @staticmethod
        def backward(ctx, grad):  # noqa: ANN001, ANN205
            return grad * 3  # a custom backward runs through the dispatcher too

    twice = _key(_model_step(_Lambda(_Twice.apply)), _args())
    assert _key(_model_step(_Lambda(TwiceThrice.apply)), _args()) != twice


class _Lambda(torch.nn.Module):
    def __init__(self, fn) -> None:  # noqa: ANN001
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def test_a_step_that_does_not_run_eagerly_is_exported_uncached(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(trace_cache.ENV, str(tmp_path / "cache"))

    def broken(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise RuntimeError("no eager run")

    assert trace._cache_key(broken, _args(), (NAMES,)) is None


def _export(monkeypatch: pytest.MonkeyPatch, calls: list[int], traces: list[int] | None = None):  # noqa: ANN202
    traces = [] if traces is None else traces

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003
        calls.append(1)
        return REAL_EXPORT(*args, **kwargs)

    def counting_trace(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        traces.append(1)
        return REAL_MAKE_FX(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", counting)
    monkeypatch.setattr(trace, "make_fx", counting_trace)
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
    traces: list[int] = []
    first = _export(monkeypatch, calls, traces)
    second = _export(monkeypatch, calls, traces)
    assert calls == [1] and traces == [1]  # the second export neither traced nor exported
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
