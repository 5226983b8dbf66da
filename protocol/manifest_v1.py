"""Format-1 manifests (fedge before the typed manifest) rewritten into the format-2 layout.

What changed in format 2: ``task`` is an object (``kind`` multiclass/binary/multilabel/regression
with its width) instead of ``"classification"``/``"regression"`` plus ``num_classes``; the
single ``optimizer`` object became the list ``optimizers`` with hyperparameters under their own
key; ``loss`` always states its reduction; ``running_stats`` is always present; the portable
section no longer repeats the optimizer. Only the layout is upgraded: the parser then checks the
result like any other manifest. The content hash of a format-1 bundle stays the one it was
written with (it covers the old layout's bytes).
"""

from __future__ import annotations

import math
from typing import Any

from .errors import BundleError

FORMAT = 1
_OLD_TASKS = ("classification", "regression")


def upgrade(old: dict[str, Any]) -> dict[str, Any]:
    """A format-1 manifest object -> the same manifest in the format-2 layout."""
    body = {k: v for k, v in old.items() if k not in ("optimizer", "task", "num_classes")}
    body["format_version"] = 2
    loss = old.get("loss")
    if not isinstance(loss, dict):
        raise BundleError("format-1 manifest field 'loss' must be an object")
    loss_type = loss.get("type")
    if loss_type == "custom":
        body["loss"] = {"type": "custom", "block": loss.get("block", "custom")}
    else:
        body["loss"] = {"type": loss_type, "reduction": loss.get("reduction", "mean")}
    body["task"] = _task(old.get("task"), loss_type, old.get("num_classes"), _output_shape(old))
    body["optimizers"] = [_optimizer(old.get("optimizer"))]
    body.setdefault("running_stats", [])
    portable = old.get("portable")
    if isinstance(portable, dict):
        body["portable"] = {k: v for k, v in portable.items() if k != "optimizer"}
    return body


def _output_shape(old: dict[str, Any]) -> list[int]:
    outputs = old.get("outputs")
    first = outputs[0] if isinstance(outputs, list) and outputs else None
    shape = first.get("shape") if isinstance(first, dict) else None
    dims = shape[1:] if isinstance(shape, list) else None
    if dims is None or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
        raise BundleError(
            "format-1 manifest field 'outputs[0].shape' must be a list of integers after the "
            "batch dimension; without it the task cannot be told (re-export the model)"
        )
    return dims


def _task(task: Any, loss: Any, num_classes: Any, output: list[int]) -> dict[str, Any]:
    """Map format 1's task/loss/num_classes to a format-2 task, or refuse where it cannot."""
    if task not in _OLD_TASKS:
        raise BundleError(
            f"format-1 manifest field 'task' is {task!r}; expected one of {list(_OLD_TASKS)}"
        )
    width = output[-1] if output else 1
    values = math.prod(output)
    if task == "classification":
        if loss == "bce_with_logits":
            return (
                {"kind": "binary"} if values == 1 else {"kind": "multilabel", "num_labels": width}
            )
        if loss in ("cross_entropy", "custom"):
            if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
                raise BundleError(
                    f"format-1 classification bundle needs 'num_classes' >= 2, got {num_classes!r}"
                )
            return {"kind": "multiclass", "num_classes": num_classes}
        raise BundleError(
            f"format-1 manifest says task 'classification' with loss {loss!r}; fedge cannot tell "
            "what it predicts: re-export the model with a current fedge"
        )
    if loss in ("mse", "l1", "custom"):
        return {"kind": "regression", "num_targets": max(values, 1)}
    raise BundleError(
        f"format-1 manifest says task 'regression' with loss {loss!r}; fedge cannot tell what it "
        "predicts: re-export the model with a current fedge"
    )


def _optimizer(old: Any) -> dict[str, Any]:
    if not isinstance(old, dict):
        raise BundleError("format-1 manifest field 'optimizer' must be an object")
    hyper = {k: v for k, v in old.items() if k not in ("type", "lr")}
    return {"type": old.get("type"), "lr": old.get("lr"), "hyperparameters": hyper}
