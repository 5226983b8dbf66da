"""Optional delta compression: int8 quantization and top-k sparsification, as safetensors.

A compressed delta is still one safetensors object; its header metadata says how to expand it:

- ``int8``: every float tensor becomes int8 ``q`` with one float32 scale per tensor
  (``x ~= q * scale``, ``scale = max|x| / 127``): about 4x smaller for float32, error per entry
  at most ``scale / 2``.
- ``topk``: per tensor, only the ``ceil(fraction * size)`` entries largest in magnitude are sent
  (flat int32 indices + values). What is left out is kept by the agent as a residual and added
  to the next round's delta (error feedback), so nothing is lost, only delayed.

``decode_delta`` accepts plain, int8 and top-k payloads alike and validates everything it reads
(indices in range, sizes bounded): the bytes come from an untrusted device.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from .errors import CodecError
from .tensors import Tensors, decode_tensors, encode_tensors, header_metadata, safetensors_header

META_KEY = "fedge.compression"
METHODS = ("", "int8", "topk")
_FLOATS = ("float16", "float32", "float64")


def _meta(data: bytes, header: dict[str, Any] | None = None) -> dict[str, Any]:
    text = header_metadata(data, header).get(META_KEY)
    if not text:
        return {}
    try:
        meta = json.loads(text)
    except ValueError:
        raise CodecError("compressed delta has unreadable metadata") from None
    if not isinstance(meta, dict):
        raise CodecError("compressed delta metadata must be an object")
    return meta


def topk_select(x: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices (sorted) and values of the ``ceil(fraction * size)`` largest-magnitude entries."""
    flat = x.reshape(-1)
    k = min(flat.size, max(1, math.ceil(fraction * flat.size))) if flat.size else 0
    if k == flat.size:
        idx = np.arange(flat.size)
    else:
        idx = np.sort(np.argpartition(np.abs(flat), flat.size - k)[flat.size - k :])
    return idx.astype(np.int32), flat[idx]


def encode_delta(
    delta: Tensors,
    method: str = "",
    fraction: float = 0.0,
    *,
    residual: Tensors | None = None,
) -> tuple[bytes, Tensors]:
    """Encode ``delta`` with ``method``; return (bytes, new residual for error feedback).

    For ``topk`` the residual (what was not sent, plus the incoming ``residual``) must be passed
    back in the next round; for the other methods the returned residual is empty.
    """
    if method not in METHODS:
        raise CodecError(f"unknown compression {method!r}; one of {list(METHODS)}")
    if method == "":
        return encode_tensors(delta), {}
    tensors: Tensors = {}
    entries: dict[str, dict[str, Any]] = {}
    new_residual: Tensors = {}
    for i, (name, value) in enumerate(sorted(delta.items())):
        arr = np.asarray(value)
        if arr.dtype.name not in _FLOATS:
            raise CodecError(f"tensor '{name}' has dtype {arr.dtype.name}; only floats compress")
        entry = {"name": name, "shape": list(arr.shape), "dtype": arr.dtype.name}
        if method == "int8":
            peak = float(np.max(np.abs(arr))) if arr.size else 0.0
            scale = peak / 127.0 if peak > 0 else 1.0
            tensors[f"{i}"] = np.clip(np.rint(arr / scale), -127, 127).astype(np.int8)
            entry["scale"] = scale
        else:
            if not 0 < fraction <= 1:
                raise CodecError(f"topk fraction must be in (0, 1], got {fraction}")
            acc = arr.astype(np.float32)
            if residual and name in residual and residual[name].shape == arr.shape:
                acc = acc + residual[name]
            idx, vals = topk_select(acc, fraction)
            tensors[f"{i}.idx"] = idx
            tensors[f"{i}.val"] = vals.astype(np.float32)
            rest = acc.reshape(-1).copy()
            rest[idx] = 0.0
            new_residual[name] = rest.reshape(arr.shape)
        entries[str(i)] = entry
    meta = {"method": method, "tensors": entries}
    return encode_tensors(tensors, {META_KEY: json.dumps(meta)}), new_residual


def decode_delta(data: bytes, *, max_elements: int = 1 << 28) -> Tensors:
    """Named dense arrays from a plain, int8 or top-k payload; CodecError if malformed.

    ``max_elements`` bounds the expanded size (a few sparse bytes must not allocate gigabytes).
    """
    header = safetensors_header(bytes(data[: 1 << 20])) if len(data) >= 8 else {}
    meta = _meta(b"", header) if header else {}
    raw = decode_tensors(data, header=header if header else None)
    if not meta:
        return raw
    method = meta.get("method")
    entries = meta.get("tensors")
    if method not in ("int8", "topk") or not isinstance(entries, dict):
        raise CodecError(f"unknown compression {method!r} in delta metadata")
    out: Tensors = {}
    total = 0
    for key, entry in entries.items():
        try:
            name, shape, dtype = entry["name"], [int(d) for d in entry["shape"]], entry["dtype"]
        except (KeyError, TypeError, ValueError):
            raise CodecError(f"compressed tensor {key!r} has malformed metadata") from None
        if not isinstance(name, str) or dtype not in _FLOATS or any(d < 0 for d in shape):
            raise CodecError(f"compressed tensor {key!r}: bad name, dtype or shape")
        if name in out:
            raise CodecError(f"compressed delta names '{name}' twice")
        size = int(np.prod(shape, dtype=np.int64)) if shape else 1
        total += size
        if total > max_elements:
            raise CodecError(f"compressed delta expands past {max_elements} elements")
        if method == "int8":
            q = raw.get(key)
            scale = entry.get("scale")
            if q is None or q.dtype != np.int8 or q.size != size:
                raise CodecError(f"int8 tensor for '{name}' is missing or has the wrong size")
            if not isinstance(scale, (int, float)) or not math.isfinite(scale):
                raise CodecError(f"int8 tensor for '{name}' has no finite scale")
            out[name] = (q.astype(np.float64) * scale).astype(dtype).reshape(shape)
        else:
            idx, vals = raw.get(f"{key}.idx"), raw.get(f"{key}.val")
            if idx is None or vals is None or idx.ndim != 1 or idx.shape != vals.shape:
                raise CodecError(f"top-k tensor for '{name}' is missing its indices or values")
            if idx.dtype.kind not in "iu" or (idx.size and (idx.min() < 0 or idx.max() >= size)):
                raise CodecError(f"top-k indices for '{name}' are out of range")
            dense = np.zeros(size, dtype=dtype)
            dense[idx] = vals
            out[name] = dense.reshape(shape)
    return out


def compression_of(data: bytes) -> str:
    """The method a payload was encoded with ("" for a plain one)."""
    return str(_meta(bytes(data[: 1 << 20])).get("method", ""))
