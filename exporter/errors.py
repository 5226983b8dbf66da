"""The exporter's exception: one class, raised with a message a model author can act on."""

from __future__ import annotations

from fedge.protocol.errors import FedgeError


class ExportError(FedgeError):
    """A model cannot be exported to a training bundle, or the exported bundle fails its checks."""
