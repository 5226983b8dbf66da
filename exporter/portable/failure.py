"""Why a model has no portable step: one complete line naming the module, its type, the operator.

Tracing and ONNX export raise long, multi-paragraph errors with terminal colour codes (the
torch.onnx exporter's ``ConversionError`` starts with boilerplate and keeps the useful part, the
failing ``DispatchError``, in its cause chain). ``describe`` turns such an exception into the
reason the manifest records: the stage, the module path and type, the ATen operator and the
innermost message, colour-free and never cut off mid-message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_OPERATOR = re.compile(
    r"OpOverload\(op='(?P<op>[\w.]+)', overload='(?P<overload>\w+)'\)"
    r"|torch\.ops\.(?P<dotted>\w+\.\w+\.\w+)"
)


@dataclass(frozen=True)
class Location:
    """A submodule of the exported model: its path (``''`` is the root) and class name."""

    path: str
    type: str

    def __str__(self) -> str:
        return f"module '{self.path or '<root>'}' ({self.type})"


def plain(text: str) -> str:
    """``text`` without terminal colour codes, on one line."""
    return " ".join(_ANSI.sub("", text).split())


def operator_in(exc: BaseException) -> str | None:
    """The first ATen operator named anywhere in ``exc``'s cause chain (``aten.x.default``)."""
    for link in _chain(exc):
        found = _OPERATOR.search(str(link))
        if found:
            if found.group("dotted"):
                return found.group("dotted")
            return f"{found.group('op')}.{found.group('overload')}"
    return None


def innermost_message(exc: BaseException) -> str:
    """``Type: message`` of the deepest exception in the chain that has a message."""
    for link in reversed(_chain(exc)):
        text = _first_paragraph(str(link))
        if text:
            return f"{type(link).__name__}: {text}"
    return type(exc).__name__


def describe(stage: str, exc: BaseException, location: Location | None) -> str:
    """``<stage> failed in module 'p' (T) at operator aten.x.y: Type: message``."""
    parts = [f"{stage} failed"]
    if location is not None:
        parts.append(f"in {location}")
    operator = operator_in(exc)
    if operator:
        parts.append(f"at operator {operator}")
    return " ".join(parts) + ": " + innermost_message(exc)


def location_of(model: nn.Module, path: str) -> Location:
    """The Location of submodule ``path`` of ``model`` (the root for an unknown path)."""
    try:
        return Location(path, type(model.get_submodule(path)).__name__)
    except AttributeError:
        return Location("", type(model).__name__)


def location_of_slot(model: nn.Module, slot: str) -> Location:
    """The module owning parameter/buffer ``slot`` (``'1.running_var'`` -> module ``'1'``)."""
    owner = slot.split("/")[-1].rpartition(".")[0]  # adamw/exp_avg/<param> -> <param>
    return location_of(model, owner)


class ModuleTracker(TorchDispatchMode):
    """Which submodule's forward is running, and which module first called each operator.

    Forward pre-hooks push a module's path, forward hooks pop it; an exception skips the pop,
    so after one ``innermost`` is the module it escaped from. Entered as a dispatch mode (around
    the forward), it records the module of every ATen operator's first call: a failing backward
    operator ``x_backward`` is then traced back to the module that called ``x``.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self._model = module
        self._stack: list[str] = []
        self._callers: dict[str, str] = {}
        for path, sub in module.named_modules():
            sub.register_forward_pre_hook(self._enter(path))
            sub.register_forward_hook(self._leave)

    def reset(self) -> None:
        self._stack.clear()

    @property
    def innermost(self) -> Location | None:
        return location_of(self._model, self._stack[-1]) if self._stack else None

    def caller_of(self, operator: str | None) -> Location | None:
        """The module whose forward first called ``operator`` (or its forward, for a backward)."""
        if operator is None:
            return None
        namespace, name = (operator.split(".") + [""])[:2]
        for key in (f"{namespace}.{name}", f"{namespace}.{name.removesuffix('_backward')}"):
            if key in self._callers:
                return location_of(self._model, self._callers[key])
        return None

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if self._stack:
            packet = str(func).rsplit(".", 1)[0]  # aten.x.default -> aten.x
            self._callers.setdefault(packet, self._stack[-1])
        return func(*args, **(kwargs or {}))

    def _enter(self, path: str) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            self._stack.append(path)

        return hook

    def _leave(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._stack:
            self._stack.pop()


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in out:
        out.append(link)
        link = link.__cause__ or link.__context__
    return out


def _first_paragraph(text: str) -> str:
    """The message up to its first blank line (tracebacks and advice follow one), whole."""
    return plain(re.split(r"\n\s*\n", text.strip(), maxsplit=1)[0]) if text.strip() else ""


def _relative(path: str) -> str:
    """``L['self'].layers.0`` / ``L__self___layers_0`` style paths as ``layers.0``."""
    path = re.sub(r"^L\['self'\]\.?", "", path)
    return path.removeprefix("self.").removeprefix("self")
