"""Training backends and the choice among them."""

from __future__ import annotations

import importlib.util

from fedge.protocol.errors import ConfigError

from .base import EvalResult, TrainingBackend, TrainResult

__all__ = ["EvalResult", "TrainResult", "TrainingBackend", "create_backend", "available_backends"]


def available_backends() -> list[str]:
    """Backends this installation can run, best first."""
    from fedge.protocol.ort_runtime import import_training_api

    names = []
    if import_training_api() is not None:
        names.append("ort-training")
    if importlib.util.find_spec("onnxruntime") is not None:
        names.append("ort-portable")  # plain onnxruntime (the training wheel includes it)
    return names


def create_backend(name: str, *, threads: int = 1) -> TrainingBackend:
    """Instantiate ``name`` (or the best installed one for ``auto``)."""
    if name == "auto":
        found = available_backends()
        if not found:
            raise ConfigError(
                "no training backend is installed: install 'fedge[agent]' "
                "(onnxruntime-training-cpu where it has wheels, onnxruntime elsewhere)"
            )
        name = found[0]
    if name == "ort-training":
        from .ort_training import OrtTrainingBackend

        return OrtTrainingBackend(threads=threads)
    if name == "ort-portable":
        from .ort_portable import OrtPortableBackend

        return OrtPortableBackend(threads=threads)
    raise ConfigError(f"unknown backend {name!r}; choose auto, ort-training or ort-portable")
