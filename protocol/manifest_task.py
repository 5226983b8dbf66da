"""What a bundle's model predicts: the manifest's ``task`` (kind and width), derived and checked.

| kind       | loss                      | output per sample | label per sample          |
|------------|---------------------------|-------------------|---------------------------|
| multiclass | cross_entropy             | num_classes logits| int64 class id            |
| binary     | bce_with_logits           | one logit         | 0/1 (float)               |
| multilabel | bce_with_logits           | num_labels logits | num_labels 0/1 (float)    |
| regression | mse, l1                   | num_targets values| num_targets values        |

A custom loss declares multiclass (with ``num_classes``) or regression.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import BundleError

if TYPE_CHECKING:
    from .manifest_fields import FieldReader
    from .manifest_specs import TensorSpec

TASK_KINDS = ("multiclass", "binary", "multilabel", "regression")
_LOSSES_FOR = {
    "multiclass": ("cross_entropy", "custom"),
    "binary": ("bce_with_logits", "custom"),
    "multilabel": ("bce_with_logits", "custom"),
    "regression": ("mse", "l1", "custom"),
}
_COUNT_KEY = {"multiclass": "num_classes", "multilabel": "num_labels", "regression": "num_targets"}


@dataclass(frozen=True)
class TaskSpec:
    """The task kind and, where it has one, its width (classes, labels or targets)."""

    kind: str
    num_classes: int | None = None
    num_labels: int | None = None
    num_targets: int | None = None

    @property
    def width(self) -> int:
        """Model outputs per sample (one logit for binary)."""
        if self.kind == "binary":
            return 1
        count = {"multiclass": self.num_classes, "multilabel": self.num_labels}.get(
            self.kind, self.num_targets
        )
        return int(count or 1)

    @property
    def is_classification(self) -> bool:
        """Every kind but regression."""
        return self.kind != "regression"

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": self.kind}
        if self.kind in _COUNT_KEY:
            body[_COUNT_KEY[self.kind]] = self.width
        return body

    @classmethod
    def from_reader(cls, r: FieldReader) -> TaskSpec:
        """Parse the manifest's ``task`` object."""
        kind = r.name("kind", choices=TASK_KINDS)
        if kind == "binary":
            spec = cls("binary")
        elif kind == "multiclass":
            spec = cls(kind, num_classes=r.integer("num_classes", minimum=2))
        elif kind == "multilabel":
            spec = cls(kind, num_labels=r.integer("num_labels", minimum=2))
        else:
            spec = cls(kind, num_targets=r.integer("num_targets", minimum=1))
        r.done()
        return spec

    @classmethod
    def derive(
        cls, loss: str, output_shape: Sequence[int], *, num_classes: int | None = None
    ) -> TaskSpec:
        """The exporter's rule: the task from the loss and one sample's output shape.

        cross_entropy -> multiclass (num_classes = output width); bce_with_logits -> binary for
        one logit, multilabel for more; mse/l1 -> regression; custom -> multiclass when
        ``num_classes`` is given, else regression.
        """
        width = int(output_shape[-1]) if len(output_shape) else 1
        values = math.prod(int(d) for d in output_shape)
        if loss == "cross_entropy":
            if width < 2:
                raise BundleError(f"cross_entropy needs at least 2 logits per sample, got {width}")
            return cls("multiclass", num_classes=width)
        if loss == "bce_with_logits":
            return cls("binary") if values == 1 else cls("multilabel", num_labels=width)
        if loss == "custom" and num_classes is not None:
            if num_classes < 2:
                raise BundleError(f"num_classes must be at least 2, got {num_classes}")
            return cls("multiclass", num_classes=num_classes)
        return cls("regression", num_targets=max(values, 1))


def check_task(task: TaskSpec, loss: str, output: TensorSpec, label: TensorSpec) -> None:
    """Refuse a task that contradicts the loss, the output width or the label."""
    if loss not in _LOSSES_FOR[task.kind]:
        raise BundleError(
            f"manifest field 'task.kind' is {task.kind!r} but loss {loss!r} trains "
            f"{[k for k, losses in _LOSSES_FOR.items() if loss in losses]}"
        )
    if loss == "custom":  # the caller's loss block decides what the output means
        return
    sample = output.sample_shape
    width = sample[-1] if sample else 1
    if task.kind == "regression" and math.prod(sample) != task.width:
        raise BundleError(
            f"manifest field 'task.num_targets' is {task.width} but output '{output.name}' has "
            f"{math.prod(sample)} values per sample"
        )
    if task.kind in ("multiclass", "multilabel") and width != task.width:
        raise BundleError(
            f"manifest field 'task' says {task.width} {_COUNT_KEY[task.kind][4:]} but output "
            f"'{output.name}' has {width} values per sample"
        )
    if task.kind == "binary" and math.prod(sample) != 1:
        raise BundleError(
            f"a binary task has one logit per sample; output '{output.name}' has shape {list(sample)}"
        )
    if task.kind == "multiclass" and label.dtype != "int64":
        raise BundleError(f"multiclass labels must be int64 class ids, not {label.dtype}")
