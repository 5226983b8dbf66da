"""The objects the agent pulls from the orchestrator (bundle, global parameters).

Each object is a ``PullTransfer`` until complete, then its bytes are held until the round is
done with them. The daemon says which objects are still wanted (``keep_only``); everything
else stops being re-requested.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fedge.protocol import timeline
from fedge.protocol.chunks import Chunk
from fedge.protocol.messages import BlobRef
from fedge.protocol.transfer import PullTransfer

log = logging.getLogger(__name__)

Request = Callable[[str, list[int]], None]  # (sha256, chunk indices) -> send a FetchRequest


class Fetches:
    """Downloads in flight (``transfers``) and completed objects (``blobs``), by sha256."""

    def __init__(self, request: Request, *, clock: Callable[[], float]) -> None:
        self._request = request
        self._clock = clock
        self.transfers: dict[str, PullTransfer] = {}
        self.blobs: dict[str, bytes] = {}

    @property
    def busy(self) -> bool:
        return bool(self.transfers)

    def has(self, sha256: str) -> bool:
        return sha256 in self.blobs

    def get(self, ref: BlobRef) -> bytes | None:
        """The object's bytes if downloaded; otherwise start (or continue) its download."""
        if ref.sha256 in self.blobs:
            return self.blobs[ref.sha256]
        if ref.sha256 not in self.transfers:
            if ref.size == 0:
                self.blobs[ref.sha256] = b""
                return b""

            def request(indices: list[int], sha: str = ref.sha256) -> None:
                self._request(sha, indices)

            transfer = PullTransfer(ref, request, clock=self._clock)
            self.transfers[ref.sha256] = transfer
            transfer.start()
        return None

    def on_chunk(self, chunk: Chunk) -> None:
        """Take a received chunk (chunks of objects not being fetched are dropped)."""
        transfer = self.transfers.get(chunk.sha256)
        if transfer is not None and transfer.on_chunk(chunk):
            self.blobs[chunk.sha256] = transfer.result  # type: ignore[assignment]
            del self.transfers[chunk.sha256]
            timeline.mark("fetched", sha=chunk.sha256[:12])

    def tick(self) -> None:
        """Re-request stalled downloads; drop failed ones (the next ``get`` starts afresh)."""
        for sha, transfer in list(self.transfers.items()):
            transfer.tick()
            if transfer.failed:
                log.warning("download of %s failed: %s; will retry", sha[:12], transfer.failed)
                del self.transfers[sha]

    def keep_only(self, sha256s: set[str]) -> None:
        """Stop downloading and drop every object not named in ``sha256s``."""
        self.transfers = {k: v for k, v in self.transfers.items() if k in sha256s}
        self.blobs = {k: v for k, v in self.blobs.items() if k in sha256s}

    def discard(self, sha256: str) -> None:
        self.transfers.pop(sha256, None)
        self.blobs.pop(sha256, None)

    def drop_completed(self) -> None:
        """Forget every downloaded object (a round is done with its parameters)."""
        self.blobs.clear()
