"""On-disk cache of exported portable steps, keyed by the traced graph.

``torch.onnx.export`` of the traced step costs seconds to tens of seconds; its result depends
only on the traced ``GraphModule`` (its code, the constants it reads, its inputs' shapes and
dtypes), the export settings and the library versions. Weights and the learning rate are graph
inputs, so re-exporting a model after training, or with another learning rate, hits the cache.

Location: ``$FEDGE_EXPORT_CACHE`` (a directory; ``off`` disables), else
``$XDG_CACHE_HOME/fedge/portable-steps`` (``~/.cache/...``). Entries are ONNX files named by the
key's sha256, written atomically; a broken entry is ignored and overwritten. The exporter still
loads and verifies a cached step like a fresh one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
import torch

log = logging.getLogger(__name__)

ENV = "FEDGE_EXPORT_CACHE"
FORMAT = "1"  # bump when the key's meaning changes


def cache_dir() -> Path | None:
    """The cache directory, or None when caching is off."""
    configured = os.environ.get(ENV, "").strip()
    if configured.lower() in ("off", "0", "false", "no"):
        return None
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fedge" / "portable-steps"


def graph_key(
    gm: torch.fx.GraphModule,
    args: Sequence[torch.Tensor],
    settings: Sequence[Any],
    *,
    exporter_source: bytes,
) -> str:
    """sha256 over everything the ONNX export of ``gm`` depends on."""
    import onnxscript

    h = hashlib.sha256()

    def part(value: object) -> None:
        data = value if isinstance(value, bytes) else repr(value).encode()
        h.update(len(data).to_bytes(8, "little") + data)

    part((FORMAT, torch.__version__, onnx.__version__, onnxscript.__version__))
    part(exporter_source)
    part(tuple(settings))
    part([(tuple(a.shape), str(a.dtype)) for a in args])
    part(gm.code)
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            part((node.name, repr(node.meta.get("val"))))
        elif node.op == "get_attr":  # constants the graph reads (e.g. lifted tensors)
            value = getattr(gm, str(node.target))
            if isinstance(value, torch.Tensor):
                tensor = value.detach().cpu().contiguous()
                part((node.target, tuple(tensor.shape), str(tensor.dtype)))
                part(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
            else:
                part((node.target, repr(value)))
    return h.hexdigest()


def load(key: str) -> onnx.ModelProto | None:
    folder = cache_dir()
    if folder is None:
        return None
    path = folder / f"{key}.onnx"
    if not path.is_file():
        return None
    try:
        proto = onnx.load(str(path))
        if not proto.graph.node:
            raise ValueError("no graph")
    except Exception as exc:  # a truncated or foreign file: export again and overwrite it
        log.warning("ignoring unreadable cache entry %s: %s", path, exc)
        return None
    log.info("portable step from the export cache (%s)", path)
    return proto


def store(key: str, proto: onnx.ModelProto) -> None:
    folder = cache_dir()
    if folder is None:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(proto.SerializeToString())
        os.replace(tmp, folder / f"{key}.onnx")
    except OSError as exc:  # a read-only home must not fail the export
        log.warning("cannot write the export cache in %s: %s (set %s=off)", folder, exc, ENV)
