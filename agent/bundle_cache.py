"""Bundles cached on the device by content hash, verified before every use.

With the agent's state database the cache also records each bundle's size and last use and
keeps only the ``keep`` most recently used bundles: older runs' bundles are fetched again if a
run ever comes back, and a device's disk does not fill up with them.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

from fedge.protocol.bundle import Bundle, load_bundle, unpack_bundle
from fedge.protocol.errors import BundleError, FedgeError

from .state import AgentState

log = logging.getLogger(__name__)

KEEP_BUNDLES = 3
# a bundle in use is looked up several times a round: while it stays the most recently used
# one, record its use at most this often (a SQLite commit each; the order is unchanged by it)
REMEMBER_SECONDS = 60.0


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class BundleCache:
    def __init__(
        self,
        root: Path,
        trusted_keys: list[bytes] | None = None,
        *,
        state: AgentState | None = None,
        keep: int = KEEP_BUNDLES,
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1 (the bundle in use), not {keep}")
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._trusted = trusted_keys or None
        self._loaded: dict[str, Bundle] = {}
        self._state = state
        self._keep = keep
        self._newest: tuple[str, float] = ("", float("-inf"))  # last use recorded (monotonic)

    def _load(self, path: Path) -> Bundle:
        return load_bundle(
            path, trusted_public_keys=self._trusted, require_signature=bool(self._trusted)
        )

    def get(self, content_hash: str) -> Bundle | None:
        """The cached bundle, re-verified; None if absent (a corrupt copy is deleted)."""
        path = self.root / content_hash
        if content_hash in self._loaded:
            newest, at = self._newest
            if newest != content_hash or time.monotonic() - at >= REMEMBER_SECONDS:
                self._remember(content_hash, path)  # the last use orders the pruning
            return self._loaded[content_hash]
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
            if self._state is not None:
                self._state.forget_bundle(content_hash)
            return None
        self._loaded[content_hash] = bundle
        self._remember(content_hash, path)
        return bundle

    def _remember(self, content_hash: str, path: Path) -> None:
        """Record the bundle's use for pruning; bookkeeping only, so a failed write (a full
        disk) must not fail the round: it is logged and the bundle is used all the same."""
        if self._state is None:
            return
        self._newest = (content_hash, time.monotonic())
        try:
            self._state.remember_bundle(content_hash, _size(path))
        except (FedgeError, OSError) as exc:
            log.warning("bundle cache: cannot record the use of %s: %s", content_hash[:12], exc)

    def reverify(self, content_hash: str) -> bool:
        """Check the cached copy against its manifest again (after a training failure: the
        files may have been damaged since they were loaded). A corrupt copy is deleted so the
        next round fetches it again; True if the copy is still intact (or absent)."""
        self._loaded.pop(content_hash, None)
        path = self.root / content_hash
        if not path.is_dir():
            return True
        return self.get(content_hash) is not None

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
        self._loaded.pop(content_hash, None)
        stored = self.get(content_hash)
        self._prune(keep=content_hash)
        return stored  # type: ignore[return-value]

    def _prune(self, keep: str) -> None:
        """Delete the least recently used bundles beyond ``self._keep`` (never ``keep``)."""
        if self._state is None:
            return
        for content_hash, nbytes, _used in self._state.cached_bundles()[self._keep :]:
            if content_hash == keep:
                continue
            log.info(
                "bundle cache: removing %s (%d bytes, least recently used)",
                content_hash[:12],
                nbytes,
            )
            shutil.rmtree(self.root / content_hash, ignore_errors=True)
            self._loaded.pop(content_hash, None)
            self._state.forget_bundle(content_hash)
