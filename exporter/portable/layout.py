"""The portable step's contract: which tensors go in, which come out, in what order.

Graph inputs, in order: every state slot (trainable parameters, frozen parameters, buffers such
as BatchNorm running statistics, optimizer state), then the batch input, the labels and the
learning rate, ``weight_decay`` (float32 scalar, AdamW steps only), and ``dropout_seed`` (int64 scalar) when the model trains with dropout
(``seeded_dropout.py``). Graph outputs: ``loss``, then the new value of every slot that changes, named
``new/<slot>``. Parameter and buffer slots carry their PyTorch names (the same as in the
manifest and on the wire); optimizer slots are ``adamw/exp_avg/<param>``,
``adamw/exp_avg_sq/<param>`` and ``adamw/step``. The manifest's ``portable`` section records
this layout, so the agent's backend needs nothing but the manifest and plain onnxruntime.

A bundle carrying several optimizers has one step graph per optimizer (``step_file``); the
manifest's ``state`` is the union of their slots, and each graph reads the slots that are not
optimizer state plus its own (named ``<optimizer>/...``): ``slots_for``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

STEP_FILE = "portable_step.onnx"
BUFFERS_FILE = "portable_buffers.safetensors"
LR_NAME = "lr"
WD_NAME = "weight_decay"
SEED_NAME = "dropout_seed"  # = fedge.protocol.portable_seed.SEED_NAME
LOSS_NAME = "loss"
NEW_PREFIX = "new/"


@dataclass(frozen=True)
class Slot:
    """One piece of training state the step reads (and maybe rewrites)."""

    name: str
    kind: str  # parameter | frozen | buffer | optimizer
    shape: tuple[int, ...]
    dtype: str

    @property
    def output(self) -> str | None:
        """Name of the graph output with the slot's new value (frozen slots have none)."""
        return None if self.kind == "frozen" else NEW_PREFIX + self.name

    def to_manifest(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "output": self.output,
        }


@dataclass(frozen=True)
class StepLayout:
    """Slots plus the names of the batch inputs."""

    slots: tuple[Slot, ...]
    model_inputs: tuple[str, ...]  # the model's inputs, in forward() order (a str: one)
    label_name: str
    seeded: bool = False  # a dropout_seed input after lr
    decayed: bool = False  # a weight_decay input after lr (AdamW)

    def __post_init__(self) -> None:
        if isinstance(self.model_inputs, str):
            object.__setattr__(self, "model_inputs", (self.model_inputs,))

    @property
    def input_name(self) -> str:
        """The model's first input."""
        return self.model_inputs[0]

    @property
    def input_names(self) -> list[str]:
        names = [s.name for s in self.slots] + [*self.model_inputs, self.label_name, LR_NAME]
        names += [WD_NAME] if self.decayed else []
        return names + [SEED_NAME] if self.seeded else names

    @property
    def output_names(self) -> list[str]:
        return [LOSS_NAME] + [s.output for s in self.slots if s.output]

    def names(self, kind: str) -> list[str]:
        return [s.name for s in self.slots if s.kind == kind]


def build_layout(
    *,
    parameters: dict[str, tuple[tuple[int, ...], str]],
    trainable: list[str],
    buffers: dict[str, tuple[tuple[int, ...], str]],
    optimizer: str,
    input_name: str | tuple[str, ...],
    label_name: str,
    seeded: bool = False,
) -> StepLayout:
    """Slots for ``parameters`` (name -> (shape, dtype)), ``buffers`` and the optimizer."""
    slots = [Slot(n, "parameter", *parameters[n]) for n in trainable]
    slots += [Slot(n, "frozen", *spec) for n, spec in parameters.items() if n not in trainable]
    slots += [Slot(n, "buffer", *spec) for n, spec in buffers.items()]
    if optimizer == "adamw":
        for moment in ("exp_avg", "exp_avg_sq"):
            slots += [Slot(f"adamw/{moment}/{n}", "optimizer", *parameters[n]) for n in trainable]
        slots.append(Slot("adamw/step", "optimizer", (), "float32"))
    names = (input_name,) if isinstance(input_name, str) else tuple(input_name)
    return StepLayout(tuple(slots), names, label_name, seeded, optimizer == "adamw")


def step_file(optimizer: str, index: int) -> str:
    """The step graph of a bundle's ``index``-th optimizer (the default keeps the old name)."""
    return STEP_FILE if index == 0 else f"portable_step_{optimizer}.onnx"


def union_slots(layouts: list[StepLayout]) -> tuple[Slot, ...]:
    """Every slot of every layout once, in first-seen order (the manifest's ``state``)."""
    seen: dict[str, Slot] = {}
    for layout in layouts:
        for slot in layout.slots:
            seen.setdefault(slot.name, slot)
    return tuple(seen.values())


def slots_for(names_kinds: list[tuple[str, str]], optimizer: str) -> list[str]:
    """Of (name, kind) pairs, the names the step of ``optimizer`` reads."""
    return [n for n, k in names_kinds if k != "optimizer" or n.startswith(f"{optimizer}/")]
