"""On-disk cache of exported portable steps, keyed by what the step computes (``step_key.py``).

Tracing and exporting the step costs seconds to tens of seconds; the result depends only on the
ATen operators the step runs at the trace's shapes, the constants it reads, fedge's step builder,
the export settings and the library versions. Weights and the learning rate are graph inputs,
so re-exporting a model after training, or with another learning rate, hits the cache.

Location: ``$FEDGE_EXPORT_CACHE`` (a directory; ``off`` disables), else
``$XDG_CACHE_HOME/fedge/portable-steps`` (``~/.cache/...``). Entries are ONNX files named by the
key's sha256, written atomically; a broken entry is ignored and overwritten. The exporter still
loads and verifies a cached step like a fresh one.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import onnx

log = logging.getLogger(__name__)

ENV = "FEDGE_EXPORT_CACHE"


def cache_dir() -> Path | None:
    """The cache directory, or None when caching is off."""
    configured = os.environ.get(ENV, "").strip()
    if configured.lower() in ("off", "0", "false", "no"):
        return None
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fedge" / "portable-steps"


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
