"""The bundle manifest as typed, frozen objects: one parser (``Manifest.from_dict``), one writer
(``Manifest.to_dict``).

Every part of fedge reads the manifest through these objects, never through raw keys. The parser
validates everything and raises BundleError naming the field (``manifest field 'loss.type' ...``).
Format-1 manifests (fedge before the typed manifest) are upgraded by ``manifest_v1`` on the way
in; their content hash stays the one they were written with. Canonical JSON and the content hash
live in ``manifest_json``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from . import manifest_v1
from .errors import BundleError
from .manifest_fields import FieldReader, is_number
from .manifest_json import (
    MANIFEST_NAME,
    canonical_json,
    compute_content_hash,
    decode_manifest_json,
    manifest_bytes,
)
from .manifest_lora import LoraSpec, parse_lora
from .manifest_optimizers import (
    BACKENDS,
    OPTIMIZER_TYPES,
    check_optimizer_files,
    parse_optimizers,
)
from .manifest_specs import (
    FileEntry,
    Hyperparameter,
    LossSpec,
    OptimizerSpec,
    ParameterSpec,
    Patch,
    PortableStep,
    RunningStat,
    StateSlot,
    TensorSpec,
    Verification,
)
from .manifest_task import TaskSpec, check_task
from .tensors import ALLOWED_DTYPES

__all__ = [
    "FILE_NAME_RE",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "SIGNATURE_NAME",
    "FileEntry",
    "Hyperparameter",
    "LoraSpec",
    "LossSpec",
    "Manifest",
    "OptimizerSpec",
    "ParameterSpec",
    "Patch",
    "PortableStep",
    "REQUIRED_FILES",
    "RunningStat",
    "StateSlot",
    "TaskSpec",
    "TensorSpec",
    "Verification",
    "canonical_json",
    "check_format_version",
    "compute_content_hash",
    "manifest_bytes",
    "parse_manifest",
]

FORMAT_VERSION = 2
READABLE_FORMATS = (manifest_v1.FORMAT, FORMAT_VERSION)
SIGNATURE_NAME = "manifest.sig"
# Files every bundle holds (besides manifest.json and the optional manifest.sig).
REQUIRED_FILES = (
    "training_model.onnx",
    "eval_model.onnx",
    "optimizer_model.onnx",
    "checkpoint",
    "inference.onnx",
    "parameters.safetensors",
)
LOSS_TYPES = ("cross_entropy", "mse", "bce_with_logits", "l1", "custom")
SLOT_KINDS = ("parameter", "frozen", "buffer", "optimizer")
# Bundle member names are flat: no folders, nothing hidden, nothing a shell would misread.
FILE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_DTYPES = tuple(sorted(ALLOWED_DTYPES))
_INTEGER_DTYPES = ("int8", "uint8", "int32", "int64")  # those an Embedding can read


@dataclass(frozen=True)
class Manifest:
    """Everything ``manifest.json`` says about a bundle, checked (see ``from_dict``)."""

    model_name: str
    task: TaskSpec
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    label: TensorSpec
    loss: LossSpec
    optimizers: tuple[OptimizerSpec, ...]
    parameters: tuple[ParameterSpec, ...]
    opset: int
    ir_version: int
    versions: Mapping[str, str]
    backends: tuple[str, ...]
    verification: Verification = field(default_factory=Verification)
    patches: tuple[Patch, ...] = ()
    running_stats: tuple[RunningStat, ...] = ()
    portable: PortableStep | None = None
    lora: LoraSpec | None = None  # adapters over frozen Linear weights (manifest_lora.py)
    files: Mapping[str, FileEntry] = field(default_factory=dict)
    content_hash: str = ""
    # The format the file on disk declared (1: upgraded on load; its hash covers the old layout).
    source_format: int = field(default=FORMAT_VERSION, compare=False)

    @property
    def format_version(self) -> int:
        """The format ``to_dict`` writes."""
        return FORMAT_VERSION

    @property
    def input(self) -> TensorSpec:
        """The model's (first) input."""
        return self.inputs[0]

    @property
    def output(self) -> TensorSpec:
        """The model's (first) output: logits or predictions."""
        return self.outputs[0]

    @property
    def optimizer(self) -> OptimizerSpec:
        """The default optimizer: the first the bundle carries (what runs unless a round
        task names another)."""
        return self.optimizers[0]

    @property
    def optimizer_types(self) -> tuple[str, ...]:
        """The optimizers the bundle carries, default first."""
        return tuple(o.type for o in self.optimizers)

    def optimizer_named(self, kind: str | None) -> OptimizerSpec:
        """The optimizer ``kind`` (empty or None: the default); BundleError if not carried."""
        if not kind:
            return self.optimizer
        for spec in self.optimizers:
            if spec.type == kind:
                return spec
        hint = (
            f"re-export it with --optimizers {','.join((*self.optimizer_types, kind))}"
            if kind in OPTIMIZER_TYPES
            else f"fedge knows {', '.join(OPTIMIZER_TYPES)}"
        )
        raise BundleError(
            f"bundle '{self.model_name}' carries {', '.join(self.optimizer_types)}; got "
            f"{kind!r} (choose one it carries, or {hint})"
        )

    def optimizer_file(self, spec: OptimizerSpec, backend: str) -> str:
        """The file holding ``spec`` for ``backend`` (ort-training or ort-portable)."""
        if backend in spec.files:
            return spec.files[backend]
        if spec.files or spec is not self.optimizers[0]:
            raise BundleError(
                f"bundle '{self.model_name}' has no {backend} file for optimizer {spec.type!r}"
            )
        if backend == "ort-training":
            return "optimizer_model.onnx"
        if self.portable is None or not self.portable.available:
            raise BundleError(f"bundle '{self.model_name}' has no portable training step")
        return self.portable.file

    @property
    def trainable_names(self) -> list[str]:
        return [p.name for p in self.parameters if p.trainable]

    @property
    def frozen_names(self) -> list[str]:
        return [p.name for p in self.parameters if not p.trainable]

    @property
    def portable_available(self) -> bool:
        """Whether the bundle carries a usable portable training step."""
        return self.portable is not None and self.portable.available

    def with_files(self, files: Mapping[str, FileEntry], content_hash: str) -> Manifest:
        """A copy with ``files`` and ``content_hash`` filled in (what ``write_manifest`` does)."""
        return replace(self, files=dict(files), content_hash=content_hash)

    def to_dict(self) -> dict[str, Any]:
        """The format-2 JSON object: what ``manifest.json`` holds, and what is hashed."""
        body: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "model_name": self.model_name,
            "task": self.task.to_dict(),
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
            "label": self.label.to_dict(),
            "loss": self.loss.to_dict(),
            "optimizers": [o.to_dict() for o in self.optimizers],
            "parameters": [p.to_dict() for p in self.parameters],
            "running_stats": [r.to_dict() for r in self.running_stats],
            "opset": self.opset,
            "ir_version": self.ir_version,
            "versions": dict(self.versions),
            "backends": list(self.backends),
            "verification": self.verification.to_dict(),
            "patches": [p.to_dict() for p in self.patches],
            "files": {name: e.to_dict() for name, e in sorted(self.files.items())},
            "content_hash": self.content_hash,
        }
        if self.portable is not None:
            body["portable"] = self.portable.to_dict()
        if self.lora is not None:  # absent otherwise: older bundles keep their content hash
            body["lora"] = self.lora.to_dict()
        return body

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, draft: bool = False) -> Manifest:
        """Parse and validate a manifest object; raise BundleError naming the first bad field.

        Format-1 objects are upgraded first. ``draft`` accepts a manifest still without
        ``files`` and ``content_hash`` (what the exporter hands to ``write_manifest``).
        """
        return _parse(data, draft=draft)


def parse_manifest(data: bytes | Mapping[str, Any]) -> Manifest:
    """``manifest.json`` bytes (or the decoded object) -> a checked Manifest."""
    return Manifest.from_dict(data if isinstance(data, Mapping) else decode_manifest_json(data))


def check_format_version(data: Mapping[str, Any]) -> int:
    """The format a decoded manifest declares; BundleError unless this code reads it."""
    version = data.get("format_version")
    if isinstance(version, bool) or version not in READABLE_FORMATS:
        raise BundleError(
            f"unknown bundle format version {version!r}; this fedge reads versions "
            f"{list(READABLE_FORMATS)} (a newer bundle needs a newer fedge)"
        )
    return int(version)


def _parse(data: Mapping[str, Any], *, draft: bool) -> Manifest:
    source = check_format_version(data)
    body = manifest_v1.upgrade(dict(data)) if source == manifest_v1.FORMAT else dict(data)
    r = FieldReader(body)
    r.raw("format_version")
    inputs = tuple(
        _tensor(s, f"inputs[{i}]") for i, s in enumerate(r.array("inputs", nonempty=True))
    )
    outputs = tuple(
        _tensor(s, f"outputs[{i}]") for i, s in enumerate(r.array("outputs", nonempty=True))
    )
    label = _tensor(r.raw("label"), "label")
    loss = _loss(r.obj("loss"))
    parameters = _parameters(r.array("parameters", nonempty=True))
    files = {} if draft and not r.has("files") else _files(r.mapping("files"))
    content_hash = "" if draft and not r.has("content_hash") else r.name("content_hash")
    if content_hash and not _HEX64.match(content_hash):
        raise BundleError("manifest field 'content_hash' must be 64 lowercase hex digits")
    if not draft:
        for name in REQUIRED_FILES:
            if name not in files:
                raise BundleError(f"manifest 'files' does not list required file '{name}'")
    manifest = Manifest(
        model_name=r.name("model_name"),
        task=TaskSpec.from_reader(r.obj("task")),
        inputs=inputs,
        outputs=outputs,
        label=label,
        loss=loss,
        optimizers=parse_optimizers(r.array("optimizers", nonempty=True), _hyperparameter),
        parameters=parameters,
        opset=r.integer("opset", minimum=1),
        ir_version=r.integer("ir_version", minimum=1),
        versions=_versions(r.mapping("versions")),
        backends=_backends(r.array("backends", nonempty=True)),
        verification=_verification(r.mapping("verification")),
        patches=tuple(_patch(p, f"patches[{i}]") for i, p in enumerate(r.array("patches"))),
        running_stats=_running_stats(r.array("running_stats"), parameters),
        portable=_portable(r.obj("portable")) if r.has("portable") else None,
        lora=parse_lora(r.obj("lora"), parameters) if r.has("lora") else None,
        files=files,
        content_hash=content_hash,
        source_format=source,
    )
    r.done()
    check_task(manifest.task, loss.type, manifest.output, label)
    _check_portable(manifest, draft=draft)
    if not draft:
        check_optimizer_files(manifest.optimizers, manifest.files)
    if manifest.lora is not None and not draft and manifest.lora.merged_inference not in files:
        raise BundleError(
            f"manifest 'lora' names file {manifest.lora.merged_inference!r}, which 'files' "
            "does not list"
        )
    return manifest


def _tensor(data: Any, where: str) -> TensorSpec:
    r = FieldReader(data, where)
    name = r.name("name")
    dtype = r.name("dtype", choices=_DTYPES)
    shape = _shape(r.array("shape"), f"{where}.shape", batch=True)
    ids_below, ids_module = None, ""
    if r.has("ids"):
        ids = r.obj("ids")
        ids_below, ids_module = ids.integer("below", minimum=1), ids.name("module")
        ids.done()
        if dtype not in _INTEGER_DTYPES:
            raise BundleError(f"manifest field '{where}.ids' is for integer inputs, not {dtype}")
    r.done()
    return TensorSpec(name, dtype, shape, ids_below, ids_module)


def _shape(dims: list[Any], where: str, *, batch: bool) -> tuple[Any, ...]:
    """Non-negative ints; with ``batch`` the first dimension must be the dynamic batch (null)."""
    if batch and (not dims or dims[0] is not None):
        raise BundleError(f"manifest field '{where}' must start with null (the dynamic batch)")
    for dim in dims[1:] if batch else dims:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
            raise BundleError(f"manifest field '{where}' has a bad dimension {dim!r}")
    return tuple(dims)


def _loss(r: FieldReader) -> LossSpec:
    kind = r.name("type", choices=LOSS_TYPES)
    if kind == "custom":
        spec = LossSpec("custom", reduction=None, block=r.name("block"))
    else:
        spec = LossSpec(kind, reduction=r.name("reduction", choices=("mean",)))
    r.done()
    return spec


def _hyperparameter(value: Any, where: str) -> Hyperparameter:
    if isinstance(value, bool):
        return value
    if is_number(value):
        return float(value) if isinstance(value, float) else int(value)
    if isinstance(value, list) and value and all(is_number(v) for v in value):
        return tuple(float(v) for v in value)
    raise BundleError(f"manifest field '{where}' must be a number, true/false or a list of numbers")


def _parameters(items: list[Any]) -> tuple[ParameterSpec, ...]:
    out: list[ParameterSpec] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        where = f"parameters[{i}]"
        r = FieldReader(item, where)
        spec = ParameterSpec(
            name=r.name("name"),
            shape=_shape(r.array("shape"), f"{where}.shape", batch=False),
            dtype=r.name("dtype", choices=_DTYPES),
            trainable=r.flag("trainable"),
        )
        r.done()
        if spec.name in seen:
            raise BundleError(f"manifest lists parameter '{spec.name}' twice")
        seen.add(spec.name)
        out.append(spec)
    if not any(p.trainable for p in out):
        raise BundleError("manifest marks no parameter as trainable")
    return tuple(out)


def _files(data: dict[str, Any]) -> dict[str, FileEntry]:
    out = {}
    for name, entry in data.items():
        if not FILE_NAME_RE.match(name) or name in (MANIFEST_NAME, SIGNATURE_NAME):
            raise BundleError(f"manifest 'files' lists a forbidden file name {name!r}")
        r = FieldReader(entry, f"files.{name}")
        sha = r.name("sha256")
        if not _HEX64.match(sha):
            raise BundleError(f"manifest 'files.{name}.sha256' must be 64 lowercase hex digits")
        out[name] = FileEntry(sha, r.integer("size", minimum=0))
        r.done()
    return out


def _versions(data: dict[str, Any]) -> dict[str, str]:
    for key, value in data.items():
        if not isinstance(value, str):
            raise BundleError(f"manifest field 'versions.{key}' must be a string")
    return dict(data)


def _backends(items: list[Any]) -> tuple[str, ...]:
    for name in items:
        if name not in BACKENDS:
            raise BundleError(f"manifest field 'backends' names {name!r}; known: {list(BACKENDS)}")
    if len(set(items)) != len(items):
        raise BundleError("manifest field 'backends' lists a backend twice")
    return tuple(items)


def _verification(data: dict[str, Any]) -> Verification:
    if "skipped" in data and not isinstance(data["skipped"], bool):
        raise BundleError("manifest field 'verification.skipped' must be true or false")
    canonical_json(data)  # JSON-representable (no NaN), or BundleError
    return Verification(dict(data))


def _patch(data: Any, where: str) -> Patch:
    r = FieldReader(data, where)
    patch = Patch(r.name("what"), r.name("why"))
    r.done()
    return patch


def _running_stats(items: list[Any], params: Sequence[ParameterSpec]) -> tuple[RunningStat, ...]:
    """BatchNorm statistics: frozen parameters, each updated from one named graph output."""
    frozen = {p.name for p in params if not p.trainable}
    out = []
    for i, item in enumerate(items):
        r = FieldReader(item, f"running_stats[{i}]")
        stat = RunningStat(r.name("param"), r.name("output"))
        r.done()
        if stat.param not in frozen:
            raise BundleError(
                f"manifest field 'running_stats[{i}].param' {stat.param!r} is not a frozen "
                "parameter"
            )
        out.append(stat)
    return tuple(out)


def _portable(r: FieldReader) -> PortableStep:
    if not r.flag("available"):
        step = PortableStep(False, reason=r.text("reason") or "no reason given")
        r.done()
        return step
    names = r.obj("inputs")
    step = PortableStep(
        available=True,
        file=r.name("file"),
        buffers_file=r.text("buffers_file"),
        state=tuple(_slot(s, f"portable.state[{i}]") for i, s in enumerate(r.array("state"))),
        input_names=(
            tuple(_strings(names.array("model", nonempty=True), "portable.inputs.model"))
            if names.has("model")
            else (names.name("input"),)
        ),
        label_name=names.name("label"),
        lr_name=names.name("lr"),
        seed_name=names.text("seed"),
        weight_decay_name=names.text("weight_decay"),
        outputs=tuple(_strings(r.array("outputs", nonempty=True), "portable.outputs")),
        dynamic_batch=r.flag("dynamic_batch"),
        opset=r.integer("opset", minimum=1),
        ir_version=r.integer("ir_version", minimum=1),
    )
    names.done()
    r.done()
    return step


def _slot(data: Any, where: str) -> StateSlot:
    r = FieldReader(data, where)
    slot = StateSlot(
        name=r.name("name"),
        kind=r.name("kind", choices=SLOT_KINDS),
        shape=_shape(r.array("shape"), f"{where}.shape", batch=False),
        dtype=r.name("dtype", choices=_DTYPES),
        output=r.text("output"),
    )
    r.done()
    return slot


def _strings(items: list[Any], where: str) -> list[str]:
    if not all(isinstance(s, str) and s for s in items):
        raise BundleError(f"manifest field '{where}' must list non-empty strings")
    return items


def _check_portable(m: Manifest, *, draft: bool) -> None:
    if "ort-portable" in m.backends and not m.portable_available:
        raise BundleError(
            "manifest lists backend 'ort-portable' but has no available portable step"
        )
    if m.portable_available and m.portable is not None:
        want = tuple(s.name for s in m.inputs)
        if m.portable.input_names != want:
            raise BundleError(
                f"manifest 'portable.inputs' names the model inputs {list(m.portable.input_names)}"
                f", but 'inputs' are {list(want)}"
            )
    if m.portable is None or not m.portable.available or draft:
        return
    for name in (m.portable.file, m.portable.buffers_file):
        if name is not None and name not in m.files:
            raise BundleError(
                f"manifest 'portable' names file {name!r}, which 'files' does not list"
            )
