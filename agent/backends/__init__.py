"""Training backends and the choice among them."""

from __future__ import annotations

from fedge.protocol.errors import ConfigError

from .base import EvalResult, TrainingBackend, TrainResult

__all__ = ["EvalResult", "TrainResult", "TrainingBackend", "create_backend", "available_backends"]


def available_backends() -> list[str]:
    """Backends this installation can run, best first."""
    from fedge.protocol.ort_runtime import import_training_api

    names = []
    if import_training_api() is not None:
        names.append("ort-training")
    return names


def create_backend(name: str, *, threads: int = 1) -> TrainingBackend:
    """Instantiate ``name`` (or the best installed one for ``auto``)."""
    if name == "auto":
        found = available_backends()
        if not found:
            raise ConfigError(
                "no training backend is installed: install 'fedge[agent]' "
                "(onnxruntime-training-cpu where it has wheels)"
            )
        name = found[0]
    if name == "ort-training":
        from .ort_training import OrtTrainingBackend

        return OrtTrainingBackend(threads=threads)
    raise ConfigError(f"unknown backend {name!r}; choose auto, ort-training or ort-portable")
