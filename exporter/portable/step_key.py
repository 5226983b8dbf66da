"""The export cache's key, from one eager run of the training step: no trace needed.

``make_fx`` (seconds to tens of seconds) and the ONNX export are pure functions of what the
step computes at the trace's shapes: the ATen operators it calls, in order, with their scalar
arguments (a LayerNorm's eps, AdamW's betas), which tensor feeds which, the constant tensors it
reads, and the input shapes and dtypes. All of that is seen by running the step once, eagerly,
under a ``TorchDispatchMode`` that records every call, the backward's included (a custom
``autograd.Function``'s backward runs through the dispatcher too). A change in the model's code
that changes what it computes changes the record wherever that code lives; a change that
computes the same thing (a comment, a renamed local) keeps the key, and rightly: the traced
graph would be the same.

What the record cannot see is how fedge turns the operators into a graph (decompositions,
rewrites, the exporter's settings) and the library versions: those are hashed in beside it
(every source file of ``exporter/portable``, torch / onnx / onnxscript versions).

Weights, the learning rate and the seed are graph inputs: their values are not in the key, so
a re-export after training, or with another learning rate, hits. A tensor the step reads that is
not an input (a non-buffer tensor attribute, a constant made outside the step) is hashed by value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import onnx
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

FORMAT = "2"  # bump when the key's meaning changes
_PLAIN = (int, float, bool, str, type(None), torch.dtype, torch.device, torch.layout)


def fedge_source() -> bytes:
    """Every source file of ``exporter/portable`` (the step builder, decompositions, rewrites)."""
    folder = Path(__file__).parent
    return b"".join(
        p.name.encode() + b"\0" + p.read_bytes() + b"\0" for p in sorted(folder.glob("*.py"))
    )


def step_key(
    step: Callable[..., Any],
    args: Sequence[torch.Tensor],
    settings: Sequence[Any],
    *,
    context: Callable[[], AbstractContextManager[Any]],
    source: bytes | None = None,
) -> str:
    """sha256 over everything the exported ``step`` depends on; runs ``step`` once, eagerly.

    ``context``: the same backend flags the trace runs under (they choose the operators).
    Raises what the step raises when it cannot run eagerly.
    """
    import onnxscript

    h = hashlib.sha256()

    def part(value: object) -> None:
        data = value if isinstance(value, bytes) else repr(value).encode()
        h.update(len(data).to_bytes(8, "little") + data)

    part((FORMAT, torch.__version__, onnx.__version__, onnxscript.__version__))
    part(fedge_source() if source is None else source)
    part(tuple(settings))
    part([(tuple(a.shape), str(a.dtype)) for a in args])
    inputs = [a.detach().clone() for a in args]  # the step must not see (or change) the caller's
    recorder = _Recorder(inputs, part)
    with context(), recorder:
        outputs = step(*inputs)
    part(("outputs", [recorder.token(t) for t in pytree.tree_leaves(outputs)]))
    return h.hexdigest()


class _Recorder(TorchDispatchMode):
    """Feeds every ATen call (operator, argument tokens, structure) to ``part``.

    A tensor's token is where it came from: input i, output of call k, or its value (a
    constant). Produced tensors are kept alive so an id is never reused within the run.
    """

    def __init__(self, inputs: Sequence[torch.Tensor], part: Callable[[object], None]) -> None:
        super().__init__()
        self._part = part
        self._where: dict[int, tuple[Any, ...]] = {id(t): ("in", i) for i, t in enumerate(inputs)}
        self._alive: list[Any] = list(inputs)
        self._calls = 0

    def token(self, value: object) -> object:
        if isinstance(value, torch.Tensor):
            where = self._where.get(id(value))
            if where is not None:
                return where
            data = value.detach().cpu().contiguous()
            self._part((tuple(data.shape), str(data.dtype), str(data.layout)))
            self._part(data.reshape(-1).view(torch.uint8).numpy().tobytes())
            return ("const", tuple(data.shape), str(data.dtype))
        if isinstance(value, _PLAIN):
            return value
        if isinstance(value, torch.memory_format | torch.Generator):
            return type(value).__name__ + ("" if isinstance(value, torch.Generator) else str(value))
        return repr(value)  # an unusual argument: an address in it only costs a cache miss

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        leaves, spec = pytree.tree_flatten((args, kwargs))
        self._part((str(func), str(spec), [self.token(v) for v in leaves]))
        out = func(*args, **kwargs)
        k = self._calls
        self._calls += 1
        for j, t in enumerate(pytree.tree_leaves(out)):
            if isinstance(t, torch.Tensor):
                self._where[id(t)] = ("call", k, j)
                self._alive.append(t)
        return out
