"""The manifest's parts as frozen dataclasses, each with ``to_dict`` (its format-2 JSON form).

``protocol/manifest.py`` holds ``Manifest`` (which is made of these) and the one parser.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .manifest_fields import is_number

Hyperparameter = float | bool | tuple[float, ...]


@dataclass(frozen=True)
class TensorSpec:
    """A graph input, output or the label: the first dimension is the dynamic batch (None)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]
    # An integer input read by an Embedding: its values must be ids 0 .. ids_below-1 (the
    # table's rows), else ONNX Runtime fails inside Gather. ids_module names the Embedding.
    ids_below: int | None = None
    ids_module: str = ""

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample (without the batch dimension)."""
        return tuple(int(d) for d in self.shape[1:] if d is not None)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.ids_below is not None:  # absent otherwise: older bundles keep their hash
            out["ids"] = {"below": self.ids_below, "module": self.ids_module}
        return out


@dataclass(frozen=True)
class ParameterSpec:
    """One parameter of the model (trainable or frozen) as the checkpoint holds it."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    trainable: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "trainable": self.trainable,
        }


@dataclass(frozen=True)
class LossSpec:
    """The training loss: a built-in (mean reduction) or a custom onnxblock ``block``."""

    type: str
    reduction: str | None = "mean"
    block: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.type == "custom":
            return {"type": "custom", "block": self.block}
        return {"type": self.type, "reduction": self.reduction}


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer the bundle carries: type, learning rate and PyTorch-named hyperparameters."""

    type: str
    lr: float
    hyperparameters: Mapping[str, Hyperparameter] = field(default_factory=dict)
    # backend -> the bundle file holding this optimizer ("ort-training": its optimizer graph,
    # "ort-portable": its training step). Empty in bundles that carry one optimizer and were
    # written before the choice existed: Manifest.optimizer_file supplies the old names.
    files: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        hyper = {k: list(v) if isinstance(v, tuple) else v for k, v in self.hyperparameters.items()}
        out: dict[str, Any] = {"type": self.type, "lr": self.lr, "hyperparameters": hyper}
        if self.files:  # absent otherwise: older bundles keep their content hash
            out["files"] = dict(sorted(self.files.items()))
        return out

    @property
    def weight_decay(self) -> float:
        """The exported weight decay (0 for SGD: ONNX Runtime's SGD graph has none)."""
        value = self.hyperparameters.get("weight_decay", 0.0)
        return float(value) if isinstance(value, (int, float)) else 0.0

    def weight_decay_refusal(self, weight_decay: float) -> str | None:
        """Why this optimizer cannot train with ``weight_decay`` (None: it can). The one rule
        both the orchestrator's start-up check and the agent's round check apply."""
        if self.type == "sgd" and weight_decay > 0:
            return (
                f"weight decay {weight_decay:g} with optimizer sgd: the bundle's SGD (ONNX "
                "Runtime's SGD graph) has neither weight decay nor momentum; use adamw for "
                "weight decay"
            )
        return None


@dataclass(frozen=True)
class FileEntry:
    """sha256 and size of one bundle file."""

    sha256: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size}


@dataclass(frozen=True)
class RunningStat:
    """A BatchNorm running statistic: frozen parameter ``param`` updated from graph ``output``."""

    param: str
    output: str

    def to_dict(self) -> dict[str, Any]:
        return {"param": self.param, "output": self.output}


@dataclass(frozen=True)
class Patch:
    """A change the exporter made to ONNX Runtime's output, and why."""

    what: str
    why: str

    def to_dict(self) -> dict[str, Any]:
        return {"what": self.what, "why": self.why}


@dataclass(frozen=True)
class Verification:
    """The exporter's parity numbers (a report: its keys vary with the model)."""

    values: Mapping[str, Any] = field(default_factory=dict)

    @property
    def skipped(self) -> bool:
        return bool(self.values.get("skipped", False))

    @property
    def forward_max_abs_diff(self) -> float | None:
        return self._number("forward_max_abs_diff")

    @property
    def step_max_abs_diff(self) -> float | None:
        return self._number("step_max_abs_diff")

    @property
    def step_skipped(self) -> str | None:
        reason = self.values.get("step_skipped")
        return str(reason) if reason is not None else None

    @property
    def portable_step_max_abs_diff(self) -> float | None:
        portable = self.values.get("portable")
        return _number(portable.get("step_max_abs_diff")) if isinstance(portable, dict) else None

    def _number(self, key: str) -> float | None:
        return _number(self.values.get(key))

    def to_dict(self) -> dict[str, Any]:
        return dict(self.values)


@dataclass(frozen=True)
class StateSlot:
    """One state tensor of the portable step; ``output`` carries its new value (None: frozen)."""

    name: str
    kind: str  # parameter | frozen | buffer | optimizer
    shape: tuple[int, ...]
    dtype: str
    output: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "output": self.output,
        }


@dataclass(frozen=True)
class PortableStep:
    """The ``ort-portable`` training step (``available`` False: why the bundle has none)."""

    available: bool
    reason: str | None = None
    file: str = ""
    buffers_file: str | None = None
    state: tuple[StateSlot, ...] = ()
    input_names: tuple[str, ...] = ()  # the model's inputs, in the manifest's order
    label_name: str = ""
    lr_name: str = ""
    seed_name: str | None = None  # int64 dropout seed input (models with dropout)
    # float32 scalar input of the AdamW step: the weight decay (older bundles bake it in)
    weight_decay_name: str | None = None
    outputs: tuple[str, ...] = ()
    dynamic_batch: bool = True
    opset: int = 0
    ir_version: int = 0

    @property
    def input_name(self) -> str:
        """The model's (first) input."""
        return self.input_names[0] if self.input_names else ""

    def to_dict(self) -> dict[str, Any]:
        if not self.available:
            return {"available": False, "reason": self.reason}
        # one input keeps format 2's "input" key (and its content hash); several: "model"
        model = (
            {"input": self.input_name}
            if len(self.input_names) <= 1
            else {"model": list(self.input_names)}
        )
        return {
            "available": True,
            "file": self.file,
            "buffers_file": self.buffers_file,
            "state": [s.to_dict() for s in self.state],
            "inputs": {
                **model,
                "label": self.label_name,
                "lr": self.lr_name,
                **({"seed": self.seed_name} if self.seed_name else {}),
                **({"weight_decay": self.weight_decay_name} if self.weight_decay_name else {}),
            },
            "outputs": list(self.outputs),
            "dynamic_batch": self.dynamic_batch,
            "opset": self.opset,
            "ir_version": self.ir_version,
        }


def _number(value: Any) -> float | None:
    return float(value) if is_number(value) else None
