"""Bundles cached on the device by content hash, verified before every use."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from fedge.protocol.bundle import Bundle, load_bundle, unpack_bundle
from fedge.protocol.errors import BundleError

log = logging.getLogger(__name__)


class BundleCache:
    def __init__(self, root: Path, trusted_keys: list[bytes] | None = None) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._trusted = trusted_keys or None
        self._loaded: dict[str, Bundle] = {}

    def _load(self, path: Path) -> Bundle:
        return load_bundle(
            path, trusted_public_keys=self._trusted, require_signature=bool(self._trusted)
        )

    def get(self, content_hash: str) -> Bundle | None:
        """The cached bundle, re-verified; None if absent (a corrupt copy is deleted)."""
        if content_hash in self._loaded:
            return self._loaded[content_hash]
        path = self.root / content_hash
        if not path.is_dir():
            return None
        try:
            bundle = self._load(path)
        except BundleError as exc:
            log.warning(
                "cached bundle %s failed verification (%s); fetching it again",
                content_hash[:12],
                exc,
            )
            shutil.rmtree(path, ignore_errors=True)
            return None
        self._loaded[content_hash] = bundle
        return bundle

    def add(self, archive: bytes, content_hash: str) -> Bundle:
        """Unpack, verify (hashes, signature, expected identity), then move into the cache."""
        tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.root))
        try:
            unpack_bundle(archive, tmp)
            bundle = self._load(tmp)
            if bundle.content_hash != content_hash:
                raise BundleError(
                    f"bundle content hash {bundle.content_hash[:12]} differs from the round's "
                    f"{content_hash[:12]}"
                )
            final = self.root / content_hash
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return self.get(content_hash)  # type: ignore[return-value]
