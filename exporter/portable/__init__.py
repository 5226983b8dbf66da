"""The portable training step: forward, backward and optimizer update as one plain ONNX graph.

Runs under plain ``onnxruntime`` (no training wheel), so devices such as a Raspberry Pi can
train. See docs/portable-backend.md.
"""

from .build import BACKEND, PortableUnsupported, add_portable_step
from .layout import BUFFERS_FILE, STEP_FILE

__all__ = ["BACKEND", "BUFFERS_FILE", "STEP_FILE", "PortableUnsupported", "add_portable_step"]
