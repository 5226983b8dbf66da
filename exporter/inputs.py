"""The model's inputs: one (``--input-shape``/``--input-dtype``, named ``input``) or several.

A model with several inputs (token ids and an attention mask: ``forward(self, tokens, mask)``)
is exported with one ``--input NAME:DTYPE:SHAPE`` per ``forward`` argument, in order; each
becomes a graph input of that name (the manifest's ``inputs``, in order) that the agent's
``[data.inputs.NAME]`` maps to its columns or BLOB.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedge.protocol.manifest import TensorSpec

from . import preflight
from .errors import ExportError

INPUT_NAME = "input"  # the one input's name when the model takes one
# graph names the training graphs use for something else (labels, the portable step's extras)
RESERVED = ("labels", "target", "lr", "dropout_seed", "logits", "prediction", "loss")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


@dataclass(frozen=True)
class InputArg:
    """One model input as the caller declares it: name, dtype, one sample's shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]


def parse_input(text: str) -> InputArg:
    """``tokens:int64:16`` or ``image:float32:3,32,32`` (the shape without the batch axis)."""
    parts = text.split(":")
    if len(parts) != 3 or not all(p.strip() for p in parts):
        raise ExportError(
            f"--input {text!r} must look like NAME:DTYPE:SHAPE, e.g. tokens:int64:16 or "
            "mask:float32:16"
        )
    name, dtype, shape_text = (p.strip() for p in parts)
    try:
        shape = tuple(int(d) for d in re.split(r"[,x\s]+", shape_text) if d)
    except ValueError:
        raise ExportError(
            f"--input {text!r}: shape {shape_text!r} must be integers like 16 or 3,32,32"
        ) from None
    if not shape or any(d <= 0 for d in shape):
        raise ExportError(f"--input {text!r}: shape {shape_text!r} needs positive dimensions")
    return InputArg(name, dtype, shape)


def input_specs(
    input_shape: Sequence[int] | None,
    input_dtype: str,
    inputs: Sequence[InputArg | tuple[str, str, Sequence[int]]] | None,
) -> tuple[TensorSpec, ...]:
    """The manifest's ``inputs``: ``input`` from ``input_shape``, or one spec per ``inputs``."""
    if inputs and input_shape is not None:
        raise ExportError("give either --input-shape (one input) or --input (each input), not both")
    if not inputs:
        if input_shape is None:
            raise ExportError(
                "the model's input is missing: give --input-shape (e.g. 64), or one "
                "--input NAME:DTYPE:SHAPE per forward() argument"
            )
        preflight.torch_dtype(input_dtype)
        return (TensorSpec(INPUT_NAME, input_dtype, (None, *map(int, input_shape))),)
    seen: set[str] = set()
    specs = []
    for given in inputs:  # InputArg, or a plain (name, dtype, shape) tuple
        if isinstance(given, InputArg):
            arg = given
        else:
            name, dtype, shape = given
            arg = InputArg(name, dtype, tuple(int(d) for d in shape))
        if not _NAME.fullmatch(arg.name):
            raise ExportError(
                f"input name {arg.name!r} must be a letter or _ then letters, digits or _ "
                "(at most 64): it names a graph input and a [data.inputs.NAME] table"
            )
        if arg.name in RESERVED:
            raise ExportError(
                f"input name {arg.name!r} is taken by the training graph; choose another "
                f"(reserved: {', '.join(RESERVED)})"
            )
        if arg.name in seen:
            raise ExportError(f"input {arg.name!r} is given twice")
        seen.add(arg.name)
        preflight.torch_dtype(arg.dtype)
        specs.append(TensorSpec(arg.name, arg.dtype, (None, *map(int, arg.shape))))
    return tuple(specs)


def sample_examples(
    specs: Sequence[TensorSpec], *, batch: int, generator: torch.Generator
) -> tuple[torch.Tensor, ...]:
    """One reproducible batch per input, drawn in order from ``generator``."""
    return tuple(
        preflight.sample_inputs(s.sample_shape, s.dtype, batch=batch, generator=generator)
        for s in specs
    )
