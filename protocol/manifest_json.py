"""The manifest's bytes: canonical JSON, the content hash, and decoding ``manifest.json``.

``manifest.json`` is written with sorted keys, 2-space indent and no timestamps, so one bundle
always has the same bytes. ``content_hash`` is the sha256 of the canonical JSON (sorted keys, no
whitespace) of the manifest without ``content_hash``: it covers every file's sha256 and every spec,
and is the model's identity everywhere else (registry, wire, agents' caches).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .errors import BundleError
from .tensors import sha256_hex

MANIFEST_NAME = "manifest.json"


def canonical_json(obj: Any) -> bytes:
    """Compact, sorted-key, ASCII JSON: the byte form that hashes are computed over."""
    try:
        text = json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        )
    except ValueError as exc:
        raise BundleError(f"manifest holds a value JSON cannot represent: {exc}") from exc
    return text.encode("ascii")


def manifest_bytes(body: Mapping[str, Any]) -> bytes:
    """The exact bytes of ``manifest.json``: sorted keys, 2-space indent, trailing newline."""
    try:
        text = json.dumps(body, sort_keys=True, indent=2, ensure_ascii=True, allow_nan=False)
    except ValueError as exc:
        raise BundleError(f"manifest holds a value JSON cannot represent: {exc}") from exc
    return (text + "\n").encode("ascii")


def compute_content_hash(body: Mapping[str, Any]) -> str:
    """sha256 over the canonical JSON of ``body`` without its ``content_hash`` key."""
    return sha256_hex(canonical_json({k: v for k, v in body.items() if k != "content_hash"}))


def decode_manifest_json(data: bytes) -> dict[str, Any]:
    """Manifest bytes -> a JSON object (no schema check); malformed JSON raises BundleError."""
    try:
        decoded = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BundleError(f"{MANIFEST_NAME} is not valid JSON: {exc}") from exc
    if not isinstance(decoded, dict):
        raise BundleError(f"{MANIFEST_NAME} must hold a JSON object, got {type(decoded).__name__}")
    return decoded
