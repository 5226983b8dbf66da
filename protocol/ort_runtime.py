"""Import ONNX Runtime without dragging in torch.

The training wheel's C extension imports ``onnxruntime.training`` (whose ``__init__`` imports
torch for amp/optim) while ``onnxruntime`` itself loads. That costs ~290 MB RSS where torch is
installed and fails where it is not. Registering a bare ``onnxruntime.training`` package (its
``__path__`` pointing at the real folder) and marking torch unimportable before the first import
keeps the agent at ~60-70 MB and torch-free. Plain ``onnxruntime`` (no training folder) is
unaffected.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from typing import Any

_TRAINING = "onnxruntime.training"


def _install_bare_training_package() -> None:
    if "onnxruntime" in sys.modules:  # too late to intercept; whatever is loaded stays
        return
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or spec.origin is None:
        return
    folder = os.path.join(os.path.dirname(spec.origin), "training")
    if not os.path.isdir(folder) or _TRAINING in sys.modules:
        return
    bare = types.ModuleType(_TRAINING)
    bare.__path__ = [folder]  # submodules (api, ...) still import from the real folder
    sys.modules[_TRAINING] = bare
    # The C extension tries `onnxruntime.training.amp` (torch); make that fail fast and cheap.
    sys.modules.setdefault("torch", None)  # type: ignore[arg-type]


def import_onnxruntime(*, block_torch: bool = True) -> Any:
    """Return the ``onnxruntime`` module, loaded without torch when ``block_torch``."""
    if block_torch:
        _install_bare_training_package()
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # ORT logs at INFO by default: warnings+ only
    return onnxruntime


def import_training_api(*, block_torch: bool = True) -> Any | None:
    """Return ``onnxruntime.training.api``, or None when only plain onnxruntime is installed."""
    import_onnxruntime(block_torch=block_torch)
    try:
        from onnxruntime.training import api
    except ImportError:
        return None
    return api


def runtime_version() -> str:
    """Which ONNX Runtime this process runs, e.g. ``onnxruntime 1.32.0`` (imports it, no torch)."""
    from importlib import metadata

    version = getattr(import_onnxruntime(), "__version__", "unknown")
    for dist in ("onnxruntime-training-cpu", "onnxruntime-training"):
        try:
            metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        return f"onnxruntime {version} ({dist})"
    return f"onnxruntime {version}"


def single_thread_session_options(ort: Any, threads: int = 1) -> Any:
    """SessionOptions capped to ``threads`` with spinning off (each session has its own pool)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so
