"""The sending side of a pull transfer, shared by the orchestrator and the agents.

A receiver asks for chunks with a ``FetchRequest``; the server answers each index once per
request, in order, only for indices the object has. Duplicate indices and indices past the
object's end are dropped here, so one request of at most ``FetchRequest``'s index limit can never
make the server publish more than the object's own chunk count (a request with 256 copies of
index 0 costs one frame, not 256).
"""

from __future__ import annotations

from collections.abc import Callable

from .chunks import blob_ref, chunk_bytes, encode_frame
from .messages import BlobRef, FetchRequest

Lookup = Callable[[str], bytes | None]


class BlobServer:
    """Serves chunk frames of the objects it holds (or that ``lookup`` can find)."""

    def __init__(self, publish: Callable[[str, bytes], None], *, lookup: Lookup | None = None):
        self._publish = publish
        self._lookup = lookup
        self._blobs: dict[str, tuple[bytes, BlobRef]] = {}
        # encoded frames by (sha256, index): a frame names no receiver, and the parameters are
        # pushed to every participant of a round (1,000 devices: one encoding, not 1,000)
        self._frames: dict[tuple[str, int], bytes] = {}
        self.bytes_sent = 0  # chunk frame bytes published, for the wire-bytes metrics

    def offer(self, blob: bytes) -> BlobRef:
        """Hold ``blob`` to be served; returns its reference (sha256, size, chunks)."""
        ref = blob_ref(blob)
        self._blobs[ref.sha256] = (blob, ref)
        return ref

    def withdraw(self, sha256: str) -> None:
        """Stop serving an object (a no-op if it is not held)."""
        self._blobs.pop(sha256, None)
        self._frames = {k: v for k, v in self._frames.items() if k[0] != sha256}

    def keep_only(self, sha256s: set[str]) -> None:
        """Drop every held object not named in ``sha256s``."""
        self._blobs = {k: v for k, v in self._blobs.items() if k in sha256s}
        self._frames = {k: v for k, v in self._frames.items() if k[0] in sha256s}

    def holds(self, sha256: str) -> bool:
        return sha256 in self._blobs

    def _find(self, sha256: str) -> tuple[bytes, BlobRef] | None:
        held = self._blobs.get(sha256)
        if held is None and self._lookup is not None:
            blob = self._lookup(sha256)
            if blob is not None:
                held = (blob, blob_ref(blob))
                self._blobs[sha256] = held
        return held

    def serve(self, request: FetchRequest, topic: str) -> int:
        """Publish the requested chunks on ``topic``; returns how many frames went out
        (0 when the object is unknown)."""
        held = self._find(request.sha256)
        if held is None:
            return 0
        blob, ref = held
        sent = 0
        for index in dict.fromkeys(request.indices):  # de-duplicated, first-seen order
            if 0 <= index < ref.chunks:
                frame = self._frames.get((ref.sha256, index))
                if frame is None:
                    frame = encode_frame(ref, index, chunk_bytes(blob, index))
                    if ref.sha256 in self._blobs:  # held, so withdraw/keep_only drop it too
                        self._frames[(ref.sha256, index)] = frame
                self._publish(topic, frame)
                self.bytes_sent += len(frame)
                sent += 1
        return sent
