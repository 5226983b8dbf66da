"""Tensor codec: named numpy arrays <-> safetensors bytes, plus content hashes.

Safetensors carries only dtype, shape and raw bytes, so decoding untrusted data cannot run code
(no pickle anywhere on the wire).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

from .errors import CodecError

# Parameters and deltas are float tensors; labels/ids may be integers. Anything else is refused.
ALLOWED_DTYPES = frozenset(
    {"float16", "float32", "float64", "int8", "uint8", "int32", "int64", "bool"}
)

_ALLOWED = frozenset(np.dtype(name) for name in ALLOWED_DTYPES)

Tensors = dict[str, np.ndarray]
SCALARS_KEY = "fedge.scalars"


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of ``data``: the identity of every blob on the wire."""
    return hashlib.sha256(data).hexdigest()


def encode_tensors(tensors: Tensors, metadata: dict[str, str] | None = None) -> bytes:
    """Serialize named arrays to safetensors bytes (deterministic: keys sorted by the format)."""
    prepared: Tensors = {}
    scalars = sorted(name for name, array in tensors.items() if np.ndim(array) == 0)
    meta = dict(metadata or {})
    if scalars:  # safetensors stores 0-d arrays as shape [1]: remember which were scalars
        meta[SCALARS_KEY] = json.dumps(scalars)
    for name, array in tensors.items():
        arr = np.ascontiguousarray(array)
        if arr.dtype.name not in ALLOWED_DTYPES:
            raise CodecError(
                f"tensor '{name}' has dtype {arr.dtype.name}; allowed: {sorted(ALLOWED_DTYPES)}"
            )
        prepared[name] = arr
    try:
        return _st_save(prepared, metadata=meta or None)
    except (SafetensorError, ValueError, TypeError) as exc:
        raise CodecError(f"could not encode tensors: {exc}") from exc


def decode_tensors(data: bytes, *, header: dict[str, Any] | None = None) -> Tensors:
    """Parse safetensors bytes into writable arrays; malformed input raises CodecError.

    ``header``: this payload's ``safetensors_header`` when the caller has parsed it already
    (the orchestrator decodes every delta it receives: parsing the JSON once saves a pass)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError(f"expected bytes, got {type(data).__name__}")
    raw = data if isinstance(data, bytes) else bytes(data)
    try:
        loaded = _st_load(raw)
    except (SafetensorError, ValueError, TypeError, OverflowError) as exc:
        raise CodecError(f"not a valid safetensors payload ({len(data)} bytes): {exc}") from exc
    scalars = _scalar_names(raw, header)
    out: Tensors = {}
    for name, arr in loaded.items():
        # dtype objects compare in C; ``.name`` is computed in Python each time (~1 us)
        if arr.dtype not in _ALLOWED and arr.dtype.name not in ALLOWED_DTYPES:
            raise CodecError(
                f"tensor '{name}' has dtype {arr.dtype.name}; allowed: {sorted(ALLOWED_DTYPES)}"
            )
        out[name] = np.array(arr, copy=True)
        if name in scalars and out[name].size == 1:
            out[name] = out[name].reshape(())
    return out


def safetensors_header(data: bytes) -> dict[str, Any]:
    """The JSON header of a safetensors payload, or ``{}`` when it is missing or malformed.

    Only the header is read (8-byte little-endian length, then JSON), never the tensors; a
    length past the end of ``data`` counts as malformed.
    """
    if len(data) < 8:
        return {}
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        return {}
    try:
        header = json.loads(data[8 : 8 + n])
    except (ValueError, UnicodeDecodeError):
        return {}
    return header if isinstance(header, dict) else {}


def header_metadata(data: bytes, header: dict[str, Any] | None = None) -> dict[str, str]:
    """The ``__metadata__`` string map of a safetensors payload (``{}`` when absent);
    ``header``: its ``safetensors_header``, if already parsed."""
    meta = (safetensors_header(data) if header is None else header).get("__metadata__")
    if not isinstance(meta, dict):
        return {}
    return {k: v for k, v in meta.items() if isinstance(k, str) and isinstance(v, str)}


def _scalar_names(data: bytes, header: dict[str, Any] | None = None) -> set[str]:
    """Names recorded as 0-d in the header metadata (read without parsing tensors again)."""
    try:
        names = json.loads(header_metadata(data, header).get(SCALARS_KEY, "[]"))
    except ValueError:
        return set()
    return {x for x in names if isinstance(x, str)} if isinstance(names, list) else set()


def l2_norm(tensors: Mapping[str, np.ndarray]) -> float:
    """The L2 norm of all tensors together, as one flat vector (computed in float64)."""
    return math.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in tensors.values()))


def check_finite(tensors: Tensors) -> None:
    """Raise CodecError naming the first tensor that holds NaN or infinity."""
    for name, arr in tensors.items():
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            raise CodecError(f"tensor '{name}' holds {bad} non-finite values (NaN or inf)")
