"""The bundle manifest: canonical JSON, content hash, and schema validation.

``manifest.json`` is written with sorted keys, 2-space indent and no timestamps, so one bundle
always has the same bytes. ``content_hash`` is the sha256 of the canonical JSON (sorted keys, no
whitespace) of the manifest without ``content_hash``: it covers every file's sha256 and every spec,
and is the model's identity everywhere else (registry, wire, agents' caches).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .errors import BundleError
from .tensors import ALLOWED_DTYPES, sha256_hex

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
# Files every format-1 bundle holds (besides manifest.json and the optional manifest.sig).
REQUIRED_FILES = (
    "training_model.onnx",
    "eval_model.onnx",
    "optimizer_model.onnx",
    "checkpoint",
    "inference.onnx",
    "parameters.safetensors",
)
LOSS_TYPES = ("cross_entropy", "mse", "bce_with_logits", "l1", "custom")
OPTIMIZER_TYPES = ("sgd", "adamw")
TASKS = ("classification", "regression")
# Bundle member names are flat: no folders, nothing hidden, nothing a shell would misread.
FILE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def canonical_json(obj: Any) -> bytes:
    """Compact, sorted-key, ASCII JSON: the byte form that hashes are computed over."""
    try:
        text = json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        )
    except ValueError as exc:
        raise BundleError(f"manifest holds a value JSON cannot represent: {exc}") from exc
    return text.encode("ascii")


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The exact bytes of ``manifest.json``: sorted keys, 2-space indent, trailing newline."""
    try:
        text = json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=True, allow_nan=False)
    except ValueError as exc:
        raise BundleError(f"manifest holds a value JSON cannot represent: {exc}") from exc
    return (text + "\n").encode("ascii")


def compute_content_hash(manifest: dict[str, Any]) -> str:
    """sha256 over the canonical JSON of ``manifest`` without its ``content_hash`` key."""
    body = {k: v for k, v in manifest.items() if k != "content_hash"}
    return sha256_hex(canonical_json(body))


def parse_manifest(data: bytes) -> dict[str, Any]:
    """Parse manifest bytes into a dict (no schema check); malformed JSON raises BundleError."""
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{MANIFEST_NAME} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise BundleError(f"{MANIFEST_NAME} must hold a JSON object, got {type(manifest).__name__}")
    return manifest


def check_format_version(manifest: dict[str, Any]) -> None:
    """Raise BundleError unless the manifest declares a format version this code reads."""
    version = manifest.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise BundleError(
            f"unknown bundle format version {version!r}; this fedge reads version {FORMAT_VERSION}"
        )


def validate_manifest(manifest: dict[str, Any]) -> None:
    """Check the manifest's schema; raise BundleError naming the first field that is wrong."""
    check_format_version(manifest)
    _want(manifest, "model_name", str)
    _want(manifest, "content_hash", str)
    if not _HEX64.match(manifest["content_hash"]):
        raise BundleError("manifest field 'content_hash' must be 64 lowercase hex digits")
    for key in ("inputs", "outputs"):
        specs = _want(manifest, key, list)
        if not specs:
            raise BundleError(f"manifest field '{key}' must list at least one tensor")
        for i, spec in enumerate(specs):
            _check_tensor_spec(spec, f"{key}[{i}]")
    _check_tensor_spec(_want(manifest, "label", dict), "label")
    loss = _want(manifest, "loss", dict)
    _choice(loss.get("type"), LOSS_TYPES, "loss.type")
    optimizer = _want(manifest, "optimizer", dict)
    _choice(optimizer.get("type"), OPTIMIZER_TYPES, "optimizer.type")
    lr = optimizer.get("lr")
    if not _is_number(lr) or lr <= 0:
        raise BundleError(f"manifest field 'optimizer.lr' must be a positive number, got {lr!r}")
    task = _choice(manifest.get("task"), TASKS, "task")
    if task == "classification":
        n = manifest.get("num_classes")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise BundleError(f"classification bundle needs 'num_classes' >= 1, got {n!r}")
    _check_parameters(_want(manifest, "parameters", list))
    for key in ("opset", "ir_version"):
        if not isinstance(_want(manifest, key, int), int) or isinstance(manifest[key], bool):
            raise BundleError(f"manifest field '{key}' must be an integer")
    _want(manifest, "versions", dict)
    backends = _want(manifest, "backends", list)
    if not backends or not all(isinstance(b, str) for b in backends):
        raise BundleError("manifest field 'backends' must list at least one backend name")
    _check_files(_want(manifest, "files", dict))
    if "running_stats" in manifest:
        _check_running_stats(manifest["running_stats"], manifest["parameters"])
    _want(manifest, "verification", dict)
    for i, patch in enumerate(_want(manifest, "patches", list)):
        if not isinstance(patch, dict) or not {"what", "why"} <= patch.keys():
            raise BundleError(f"manifest field 'patches[{i}]' must be an object with what and why")


def _want(obj: dict[str, Any], key: str, kind: type) -> Any:
    if key not in obj:
        raise BundleError(f"manifest has no '{key}' field")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BundleError(
            f"manifest field '{key}' must be {kind.__name__}, got {type(value).__name__}"
        )
    return value


def _choice(value: Any, allowed: tuple[str, ...], where: str) -> str:
    if value not in allowed:
        raise BundleError(f"manifest field '{where}' is {value!r}; expected one of {list(allowed)}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_shape(shape: Any, where: str, *, allow_dynamic: bool) -> None:
    if not isinstance(shape, list):
        raise BundleError(f"manifest field '{where}.shape' must be a list")
    for dim in shape:
        if dim is None and allow_dynamic:
            continue
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
            raise BundleError(f"manifest field '{where}.shape' has a bad dimension {dim!r}")


def _check_tensor_spec(spec: Any, where: str) -> None:
    if not isinstance(spec, dict):
        raise BundleError(f"manifest field '{where}' must be an object")
    if not isinstance(spec.get("name"), str) or not spec["name"]:
        raise BundleError(f"manifest field '{where}.name' must be a non-empty string")
    _choice(spec.get("dtype"), tuple(sorted(ALLOWED_DTYPES)), f"{where}.dtype")
    _check_shape(spec.get("shape"), where, allow_dynamic=True)


def _check_parameters(params: list[Any]) -> None:
    if not params:
        raise BundleError("manifest field 'parameters' must list at least one parameter")
    seen: set[str] = set()
    for i, spec in enumerate(params):
        where = f"parameters[{i}]"
        _check_tensor_spec(spec, where)
        _check_shape(spec["shape"], where, allow_dynamic=False)
        if not isinstance(spec.get("trainable"), bool):
            raise BundleError(f"manifest field '{where}.trainable' must be true or false")
        if spec["name"] in seen:
            raise BundleError(f"manifest lists parameter '{spec['name']}' twice")
        seen.add(spec["name"])
    if not any(spec["trainable"] for spec in params):
        raise BundleError("manifest marks no parameter as trainable")


def _check_files(files: dict[str, Any]) -> None:
    for name in REQUIRED_FILES:
        if name not in files:
            raise BundleError(f"manifest 'files' does not list required file '{name}'")
    for name, entry in files.items():
        if not FILE_NAME_RE.match(name) or name in (MANIFEST_NAME, SIGNATURE_NAME):
            raise BundleError(f"manifest 'files' lists a forbidden file name {name!r}")
        if not isinstance(entry, dict):
            raise BundleError(f"manifest 'files.{name}' must be an object with sha256 and size")
        if not isinstance(entry.get("sha256"), str) or not _HEX64.match(entry["sha256"]):
            raise BundleError(f"manifest 'files.{name}.sha256' must be 64 lowercase hex digits")
        size = entry.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BundleError(f"manifest 'files.{name}.size' must be a non-negative integer")


def _check_running_stats(stats: Any, params: list[dict[str, Any]]) -> None:
    """BatchNorm statistics: frozen parameters, each updated from one named graph output."""
    frozen = {p["name"] for p in params if not p["trainable"]}
    if not isinstance(stats, list):
        raise BundleError("manifest field 'running_stats' must be a list")
    for i, entry in enumerate(stats):
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("param"), str)
            or not isinstance(entry.get("output"), str)
        ):
            raise BundleError(f"manifest field 'running_stats[{i}]' needs string param and output")
        if entry["param"] not in frozen:
            raise BundleError(
                f"manifest field 'running_stats[{i}].param' {entry['param']!r} is not a frozen "
                "parameter"
            )
