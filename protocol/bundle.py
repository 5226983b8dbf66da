"""Training bundles: load and verify, write manifests, pack to and unpack from ``.fedge`` archives.

A bundle is a flat directory (or a deterministic zip of one, extension ``.fedge``) holding
``manifest.json``, the files it lists with their sha256 (see ``manifest.REQUIRED_FILES``) and
optionally ``manifest.sig`` (Ed25519 over the manifest's bytes). ``load_bundle`` checks, in
order: manifest present and JSON, format version, signature, schema, content hash, then each
file's presence, size and sha256. The first problem found is raised as a BundleError.

This module imports neither torch nor onnx: agents and the orchestrator use it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import stat
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import signing
from .errors import BundleError, CodecError, SignatureError
from .manifest import (
    FILE_NAME_RE,
    MANIFEST_NAME,
    REQUIRED_FILES,
    SIGNATURE_NAME,
    FileEntry,
    Manifest,
    ParameterSpec,
    check_format_version,
    parse_manifest,
)
from .manifest_json import compute_content_hash, decode_manifest_json, manifest_bytes
from .tensors import decode_tensors

__all__ = ["Bundle", "ParameterSpec", "load_bundle", "pack_bundle", "unpack_bundle"]

log = logging.getLogger(__name__)

ARCHIVE_SUFFIX = ".fedge"
PARAMETERS_FILE = "parameters.safetensors"
# Refuse archive members (and manifests) larger than this unless told otherwise.
DEFAULT_MAX_MEMBER_BYTES = 1 << 30
MAX_MANIFEST_BYTES = 4 << 20
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_ZIP_MODE = (stat.S_IFREG | 0o644) << 16
_HASH_CHUNK = 1 << 20


@dataclass
class Bundle:
    """A bundle on disk whose manifest, hashes and (optionally) signature have been checked."""

    root: Path
    manifest: Manifest
    signature_status: str = "unsigned"  # unsigned | unverified | verified:<key fingerprint>
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def content_hash(self) -> str:
        """The model's identity: sha256 over the canonical manifest."""
        return self.manifest.content_hash

    @property
    def model_name(self) -> str:
        """Human name the exporter gave the model."""
        return self.manifest.model_name

    def file(self, name: str) -> Path:
        """Path of a file the manifest lists (or the manifest itself); unknown names raise."""
        if name != MANIFEST_NAME and name not in self.manifest.files:
            raise BundleError(f"bundle has no file '{name}'; it has: {sorted(self.manifest.files)}")
        return self.root / name

    @property
    def parameter_specs(self) -> list[ParameterSpec]:
        """Every parameter in the checkpoint, trainable and frozen, in manifest order."""
        return list(self.manifest.parameters)

    @property
    def trainable_names(self) -> list[str]:
        """Names of the parameters training updates (and deltas carry)."""
        return self.manifest.trainable_names

    @property
    def frozen_names(self) -> list[str]:
        """Names of the parameters training leaves unchanged."""
        return self.manifest.frozen_names

    def initial_parameters(self) -> dict[str, np.ndarray]:
        """Initial value of every parameter, checked against the manifest's names/shapes/dtypes."""
        try:
            tensors = decode_tensors(self.file(PARAMETERS_FILE).read_bytes())
        except CodecError as exc:
            raise BundleError(f"{PARAMETERS_FILE}: {exc}") from exc
        specs = self.parameter_specs
        expected = {s.name for s in specs}
        if set(tensors) != expected:
            missing = sorted(expected - set(tensors))
            extra = sorted(set(tensors) - expected)
            raise BundleError(
                f"{PARAMETERS_FILE} does not match the manifest: "
                f"missing {missing}, unexpected {extra}"
            )
        for spec in specs:
            arr = tensors[spec.name]
            if tuple(arr.shape) != spec.shape or arr.dtype.name != spec.dtype:
                raise BundleError(
                    f"{PARAMETERS_FILE}: '{spec.name}' is {arr.dtype.name}{list(arr.shape)}, "
                    f"manifest says {spec.dtype}{list(spec.shape)}"
                )
        return {s.name: tensors[s.name] for s in specs}


def load_bundle(
    path: str | os.PathLike[str],
    *,
    trusted_public_keys: Sequence[signing.PublicKeyLike] | None = None,
    require_signature: bool = False,
    extract_to: str | os.PathLike[str] | None = None,
) -> Bundle:
    """Open a bundle directory or ``.fedge`` archive and verify it; raise BundleError if not valid.

    A signature present is checked whenever ``trusted_public_keys`` are given; without keys it
    is reported as ``unverified``. ``require_signature`` refuses unsigned bundles (and needs keys).
    Archives are extracted to ``extract_to`` (default: a new temporary directory).
    """
    source = Path(path)
    if require_signature and not trusted_public_keys:
        raise BundleError("require_signature needs at least one trusted public key")
    if source.is_file():
        dest = Path(extract_to) if extract_to else Path(tempfile.mkdtemp(prefix="fedge-bundle-"))
        root = unpack_bundle(source.read_bytes(), dest)
    elif source.is_dir():
        root = source
    else:
        raise BundleError(
            f"no bundle at {source} (expected a directory or a {ARCHIVE_SUFFIX} file)"
        )

    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(f"bundle {source} has no {MANIFEST_NAME}")
    raw = manifest_path.read_bytes()
    if len(raw) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{MANIFEST_NAME} is {len(raw)} bytes; the limit is {MAX_MANIFEST_BYTES}")
    decoded = decode_manifest_json(raw)
    check_format_version(decoded)
    status = _check_signature(root, raw, trusted_public_keys, require_signature)
    manifest = parse_manifest(decoded)
    # The hash covers the bytes as written (a format-1 manifest keeps its old layout's hash).
    actual_hash = compute_content_hash(decoded)
    if actual_hash != manifest.content_hash:
        raise BundleError(
            f"manifest content_hash is {manifest.content_hash} but its contents hash to "
            f"{actual_hash} (the manifest was edited)"
        )
    for name, entry in sorted(manifest.files.items()):
        _check_file(root / name, name, entry)
    _warn_extra_files(root, manifest)
    if manifest.source_format != manifest.format_version:
        log.info(
            "bundle %s is format %d, read as format %d",
            root,
            manifest.source_format,
            manifest.format_version,
        )
    log.debug("loaded bundle %s (%s, %s)", root, manifest.content_hash[:12], status)
    return Bundle(root=root, manifest=manifest, signature_status=status)


def write_manifest(
    bundle_dir: str | os.PathLike[str], manifest: Manifest | Mapping[str, Any]
) -> Manifest:
    """Fill ``files`` (sha256 and size of every other file) and ``content_hash``, write
    ``manifest.json`` deterministically (``Manifest.to_dict``), and return the complete manifest.

    A mapping is parsed first (as a draft: files and hash may be missing; format 1 is upgraded).
    Any stale ``manifest.sig`` is removed: the old signature cannot match the new manifest.
    """
    root = Path(bundle_dir)
    draft = manifest if isinstance(manifest, Manifest) else Manifest.from_dict(manifest, draft=True)
    files: dict[str, FileEntry] = {}
    for entry in sorted(root.iterdir()):
        if entry.name in (MANIFEST_NAME, SIGNATURE_NAME):
            continue
        if not entry.is_file() or not FILE_NAME_RE.match(entry.name):
            raise BundleError(
                f"bundle directory holds {entry.name!r}, which cannot be a bundle file"
            )
        files[entry.name] = FileEntry(_file_sha256(entry), entry.stat().st_size)
    for name in REQUIRED_FILES:
        if name not in files:
            raise BundleError(f"cannot write manifest: {root / name} is missing")
    body = draft.with_files(files, "").to_dict()
    body["content_hash"] = compute_content_hash(body)
    final = Manifest.from_dict(body)  # the one parser checks what the one writer wrote
    (root / SIGNATURE_NAME).unlink(missing_ok=True)
    (root / MANIFEST_NAME).write_bytes(manifest_bytes(body))
    return final


def pack_bundle(bundle_dir: str | os.PathLike[str]) -> bytes:
    """Zip a bundle directory deterministically: sorted names, 1980-01-01 timestamps, mode 0644.

    Only ``manifest.json``, ``manifest.sig`` and the files the manifest lists are packed, so the
    same directory always packs to the same bytes.
    """
    root = Path(bundle_dir)
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(f"cannot pack {root}: no {MANIFEST_NAME}")
    manifest = parse_manifest(manifest_path.read_bytes())
    names = [MANIFEST_NAME, *sorted(manifest.files)]
    if (root / SIGNATURE_NAME).is_file():
        names.insert(1, SIGNATURE_NAME)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in names:
            path = root / name
            if not path.is_file():
                raise BundleError(f"cannot pack {root}: {name} is missing")
            info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = _ZIP_MODE
            info.create_system = 3  # unix, so external_attr means the same everywhere
            archive.writestr(info, path.read_bytes(), compresslevel=6)
    return buffer.getvalue()


def unpack_bundle(
    data: bytes,
    dest_dir: str | os.PathLike[str],
    *,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
) -> Path:
    """Extract a ``.fedge`` archive into ``dest_dir`` (created if needed) and return it.

    Only flat names are accepted: ``manifest.json``, ``manifest.sig`` and the files the
    manifest lists. Absolute paths, ``..``, folders, duplicates, links and members over
    ``max_member_bytes`` are refused before anything is written. Hashes are checked later by
    ``load_bundle``.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise BundleError(f"not a bundle archive: {exc}") from exc
    with archive:
        infos = archive.infolist()
        seen: set[str] = set()
        for info in infos:
            _check_member(info, seen, max_member_bytes)
        if MANIFEST_NAME not in seen:
            raise BundleError(f"bundle archive has no {MANIFEST_NAME}")
        manifest_info = archive.getinfo(MANIFEST_NAME)
        if manifest_info.file_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{MANIFEST_NAME} is {manifest_info.file_size} bytes; too large")
        manifest = parse_manifest(archive.read(MANIFEST_NAME))
        allowed = {MANIFEST_NAME, SIGNATURE_NAME} | set(manifest.files)
        unexpected = sorted(seen - allowed)
        if unexpected:
            raise BundleError(
                f"bundle archive holds files its manifest does not list: {unexpected}"
            )
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        for info in infos:
            with archive.open(info) as src:
                payload = src.read(max_member_bytes + 1)
            if len(payload) > max_member_bytes:
                raise BundleError(f"archive member {info.filename!r} is larger than declared")
            (dest / info.filename).write_bytes(payload)
    return dest


def _check_member(info: zipfile.ZipInfo, seen: set[str], max_member_bytes: int) -> None:
    name = info.filename
    if name.startswith(("/", "\\")) or ".." in name or "/" in name or "\\" in name or ":" in name:
        raise BundleError(f"bundle archive member {name!r} has a path; only flat names are allowed")
    if not FILE_NAME_RE.match(name) and name not in (MANIFEST_NAME, SIGNATURE_NAME):
        raise BundleError(f"bundle archive member {name!r} is not an allowed file name")
    mode = info.external_attr >> 16
    if info.is_dir() or stat.S_IFMT(mode) not in (0, stat.S_IFREG):  # no links, no folders
        raise BundleError(f"bundle archive member {name!r} is not a regular file")
    if name in seen:
        raise BundleError(f"bundle archive holds {name!r} twice")
    if info.file_size > max_member_bytes:
        raise BundleError(
            f"bundle archive member {name!r} is {info.file_size} bytes; limit {max_member_bytes}"
        )
    seen.add(name)


def _check_signature(
    root: Path,
    raw_manifest: bytes,
    trusted: Sequence[signing.PublicKeyLike] | None,
    required: bool,
) -> str:
    sig_path = root / SIGNATURE_NAME
    if not sig_path.is_file():
        if required:
            raise SignatureError(f"bundle {root} is not signed ({SIGNATURE_NAME} missing)")
        return "unsigned"
    if not trusted:
        return "unverified"
    key_id = signing.verify(trusted, raw_manifest, sig_path.read_bytes())
    return f"verified:{key_id}"


def _check_file(path: Path, name: str, entry: FileEntry) -> None:
    if not path.is_file():
        raise BundleError(f"bundle file '{name}' is missing")
    actual = _file_sha256(path)
    if actual != entry.sha256:
        size = path.stat().st_size
        raise BundleError(
            f"bundle file '{name}' has sha256 {actual} ({size} bytes) but the manifest says "
            f"{entry.sha256} ({entry.size} bytes)"
        )


def _warn_extra_files(root: Path, manifest: Manifest) -> None:
    known = {MANIFEST_NAME, SIGNATURE_NAME} | set(manifest.files)
    extra = sorted(p.name for p in root.iterdir() if p.name not in known)
    if extra:
        log.warning("bundle %s holds files its manifest does not list (ignored): %s", root, extra)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
