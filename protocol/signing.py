"""Ed25519 signatures for bundles: key files, signing, verification.

A bundle's signature is Ed25519 over the exact bytes of its ``manifest.json`` and is stored raw
(64 bytes) in ``manifest.sig``. The manifest carries the sha256 of every other file, so one
signature covers the whole bundle.

Private keys are PKCS#8 PEM files (``<name>.key``, mode 0600); public keys are
SubjectPublicKeyInfo PEM files (``<name>.pub``). Raw 32-byte public keys are accepted too.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import ConfigError, SignatureError
from .manifest import MANIFEST_NAME, SIGNATURE_NAME

log = logging.getLogger(__name__)

PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"

PathLike = str | os.PathLike[str]
PublicKeyLike = Ed25519PublicKey | bytes | PathLike
PrivateKeyLike = Ed25519PrivateKey | bytes | PathLike


def generate_keypair() -> tuple[bytes, bytes]:
    """Return a new Ed25519 key pair as ``(private_pem, public_pem)``."""
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return private_pem, _public_pem(key.public_key())


def write_keypair(directory: PathLike, name: str = "signing") -> tuple[Path, Path]:
    """Write ``<name>.key`` (mode 0600) and ``<name>.pub`` into ``directory``; never overwrite."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    private_path = folder / f"{name}{PRIVATE_SUFFIX}"
    public_path = folder / f"{name}{PUBLIC_SUFFIX}"
    for path in (private_path, public_path):
        if path.exists():
            raise SignatureError(f"{path} already exists; choose another --name or directory")
    private_pem, public_pem = generate_keypair()
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem)
    public_path.write_bytes(public_pem)
    log.info("wrote key pair %s / %s", private_path, public_path)
    return private_path, public_path


def load_private_key(source: PrivateKeyLike) -> Ed25519PrivateKey:
    """Load an Ed25519 private key from a PEM file path, PEM bytes, or pass a key object through."""
    if isinstance(source, Ed25519PrivateKey):
        return source
    data = source if isinstance(source, bytes) else _read(Path(source), "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"expected an Ed25519 private key, got {type(key).__name__}")
    return key


def load_public_key(source: PublicKeyLike) -> Ed25519PublicKey:
    """Load an Ed25519 public key from a path, PEM bytes, raw 32 bytes, or a key object."""
    if isinstance(source, Ed25519PublicKey):
        return source
    if isinstance(source, bytes):
        data = source
    else:
        data = _read(Path(source), "public key")
    if len(data) == 32 and not data.startswith(b"-----"):
        return Ed25519PublicKey.from_public_bytes(data)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"expected an Ed25519 public key, got {type(key).__name__}")
    return key


def load_trusted_keys(paths: Sequence[PathLike]) -> list[bytes]:
    """Read the configured ``trusted_keys`` files: one Ed25519 public key (PEM or raw) each.

    Raises ConfigError naming the file and the fix when one is missing, unreadable or not an
    Ed25519 public key, so a device or orchestrator refuses to start with a half-set trust list.
    """
    keys: list[bytes] = []
    for entry in paths:
        path = Path(entry)
        if not path.is_file():
            raise ConfigError(
                f"trusted key file {path} does not exist: copy the model author's public key "
                "there or remove it from trusted_keys"
            )
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"trusted key file {path} cannot be read: {exc.strerror or exc}"
            ) from None
        try:
            load_public_key(data)
        except SignatureError as exc:
            raise ConfigError(
                f"trusted key file {path} is not an Ed25519 public key ({exc}): copy the model "
                "author's .pub file there"
            ) from None
        keys.append(data)
    return keys


def public_key_of(private_key: PrivateKeyLike) -> bytes:
    """PEM bytes of the public half of ``private_key``."""
    return _public_pem(load_private_key(private_key).public_key())


def fingerprint(public_key: PublicKeyLike) -> str:
    """Short, stable identifier of a public key: first 16 hex digits of sha256(raw key)."""
    raw = load_public_key(public_key).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(private_key: PrivateKeyLike, data: bytes) -> bytes:
    """Ed25519 signature (64 bytes) of ``data``."""
    return load_private_key(private_key).sign(data)


def verify(public_keys: Iterable[PublicKeyLike], data: bytes, signature: bytes) -> str:
    """Check ``signature`` over ``data``; return the fingerprint of the trusted key that matches.

    Raises SignatureError when no key is given or none of them verifies the signature.
    """
    keys = [load_public_key(k) for k in public_keys]
    if not keys:
        raise SignatureError("no trusted public keys given to verify the signature against")
    if len(signature) != 64:
        raise SignatureError(f"signature must be 64 bytes (Ed25519), got {len(signature)}")
    for key in keys:
        try:
            key.verify(signature, data)
        except InvalidSignature:
            continue
        return fingerprint(key)
    shown = ", ".join(fingerprint(k) for k in keys)
    raise SignatureError(f"signature does not verify against any trusted key ({shown})")


def sign_bundle(bundle_dir: PathLike, private_key: PrivateKeyLike) -> Path:
    """Sign ``bundle_dir/manifest.json`` and write the raw signature to ``manifest.sig``."""
    folder = Path(bundle_dir)
    manifest_bytes = _read(folder / MANIFEST_NAME, "manifest")
    signature_path = folder / SIGNATURE_NAME
    signature_path.write_bytes(sign(private_key, manifest_bytes))
    log.info("signed %s", folder / MANIFEST_NAME)
    return signature_path


def _public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SignatureError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
