"""Find the user's model: ``package.module:factory`` or ``path/to/file.py:factory``."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any

from .errors import ExportError

log = logging.getLogger(__name__)


def load_model(spec: str) -> Any:
    """Import ``spec`` and return the ``torch.nn.Module`` it names (calling a factory)."""
    from torch import nn

    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ExportError(
            f"model {spec!r} must look like package.module:factory or path/to/file.py:factory"
        )
    module = _import_file(Path(target)) if target.endswith(".py") else _import_module(target)
    try:
        obj = getattr(module, attr)
    except AttributeError:
        public = sorted(n for n in vars(module) if not n.startswith("_"))
        raise ExportError(f"{target} has no attribute {attr!r}; it has: {public}") from None
    if not isinstance(obj, nn.Module):
        if not callable(obj):
            raise ExportError(f"{spec} is neither a torch.nn.Module nor a factory function")
        try:
            obj = obj()
        except Exception as exc:  # user code: report, do not crash with a traceback
            raise ExportError(f"calling {spec}() failed ({type(exc).__name__}): {exc}") from exc
    if not isinstance(obj, nn.Module):
        raise ExportError(f"{spec}() returned {type(obj).__name__}, not a torch.nn.Module")
    return obj


def load_object(spec: str, what: str) -> Any:
    """Import ``package.module:name`` or ``path/to/file.py:name`` and return that attribute."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ExportError(f"{what} {spec!r} must look like package.module:name or file.py:name")
    module = _import_file(Path(target)) if target.endswith(".py") else _import_module(target)
    try:
        return getattr(module, attr)
    except AttributeError:
        public = sorted(n for n in vars(module) if not n.startswith("_"))
        raise ExportError(f"{target} has no attribute {attr!r}; it has: {public}") from None


def load_loss(spec: str) -> Any:
    """A built-in loss name as is, or a custom onnxblock loss: ``module:Class`` (instantiated)."""
    if ":" not in spec:
        return spec
    obj = load_object(spec, "custom loss")
    if isinstance(obj, type):
        try:
            obj = obj()
        except Exception as exc:  # user code
            raise ExportError(f"creating the loss {spec}() failed: {exc}") from exc
    return obj


def _import_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ExportError(f"cannot import {name}: {exc}") from exc


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise ExportError(f"no such file: {path}")
    name = f"_fedge_user_model_{abs(hash(path.resolve()))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ExportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # user code
        del sys.modules[name]
        raise ExportError(f"importing {path} failed ({type(exc).__name__}): {exc}") from exc
    return module
