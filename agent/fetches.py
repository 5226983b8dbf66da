"""The objects the agent pulls from the orchestrator (bundle, global parameters).

Each object is a ``PullTransfer`` until complete, then its bytes are held until the round is
done with them. The daemon says which objects are still wanted (``keep_only``); everything
else stops being re-requested.

Small objects may come unasked: the orchestrator pushes a round's parameters to each
participant right behind the task (``RoundTask.params_pushed``). A pushed object that arrives
before its task is held (verified, at most ``MAX_HELD_PUSHES``); one the task says is pushed is
waited for ``PUSH_GRACE_SECONDS`` before it is asked for as usual.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable

from fedge.protocol import timeline
from fedge.protocol.chunks import Chunk
from fedge.protocol.fields import MAX_INLINE_BYTES
from fedge.protocol.messages import BlobRef
from fedge.protocol.transfer import PullTransfer

log = logging.getLogger(__name__)

Request = Callable[[str, list[int]], None]  # (sha256, chunk indices) -> send a FetchRequest

PUSH_GRACE_SECONDS = 2.0  # wait this long for a pushed object before asking for it
MAX_HELD_PUSHES = 2  # pushed objects held before their task arrives (the newest ones)


class Fetches:
    """Downloads in flight (``transfers``) and completed objects (``blobs``), by sha256."""

    def __init__(self, request: Request, *, clock: Callable[[], float]) -> None:
        self._request = request
        self._clock = clock
        self.transfers: dict[str, PullTransfer] = {}
        self.blobs: dict[str, bytes] = {}
        self.pushed: OrderedDict[str, bytes] = OrderedDict()  # arrived before they were wanted
        self._ask_at: dict[str, float] = {}  # pushed transfers not started yet -> when to ask

    @property
    def busy(self) -> bool:
        return bool(self.transfers)

    def has(self, sha256: str) -> bool:
        return sha256 in self.blobs

    def get(self, ref: BlobRef, *, pushed: bool = False) -> bytes | None:
        """The object's bytes if downloaded; otherwise start (or continue) its download.
        ``pushed``: the sender pushes it unasked; ask only if it has not come in a moment."""
        if ref.sha256 in self.blobs:
            return self.blobs[ref.sha256]
        held = self.pushed.pop(ref.sha256, None)
        if held is not None and len(held) == ref.size:  # its sha256 was checked on receipt
            self.blobs[ref.sha256] = held
            timeline.mark("fetched", sha=ref.sha256[:12], pushed=True)
            return held
        if ref.sha256 not in self.transfers:
            if ref.size == 0:
                self.blobs[ref.sha256] = b""
                return b""

            def request(indices: list[int], sha: str = ref.sha256) -> None:
                self._request(sha, indices)

            transfer = PullTransfer(ref, request, clock=self._clock)
            self.transfers[ref.sha256] = transfer
            if pushed:
                self._ask_at[ref.sha256] = self._clock() + PUSH_GRACE_SECONDS
            else:
                transfer.start()
        return None

    def on_chunk(self, chunk: Chunk) -> None:
        """Take a received chunk: part of a download, or a small object pushed unasked (held
        if it verifies, for the task that will want it); anything else is dropped."""
        sha = chunk.sha256
        if sha in self._ask_at:  # the task said it is pushed: not asked for yet
            data = self._verified_push(chunk)
            if data is not None:
                self.blobs[sha] = data
                self.transfers.pop(sha, None)
                del self._ask_at[sha]
                timeline.mark("fetched", sha=sha[:12], pushed=True)
            return  # a bad push: asked for as usual once the grace period ends
        transfer = self.transfers.get(sha)
        if transfer is None:
            self._hold_push(chunk)
        elif transfer.on_chunk(chunk):
            self.blobs[sha] = transfer.result  # type: ignore[assignment]
            del self.transfers[sha]
            timeline.mark("fetched", sha=sha[:12])

    def _verified_push(self, chunk: Chunk) -> bytes | None:
        """A pushed object's bytes if it is one small, whole object matching its sha256."""
        if chunk.count != 1 or chunk.size > MAX_INLINE_BYTES or chunk.index != 0:
            return None
        if len(chunk.data) != chunk.size or hashlib.sha256(chunk.data).hexdigest() != chunk.sha256:
            log.warning("pushed object %s fails its sha256; dropped", chunk.sha256[:12])
            return None
        return chunk.data

    def _hold_push(self, chunk: Chunk) -> None:
        if chunk.sha256 in self.blobs:
            return  # a late duplicate
        data = self._verified_push(chunk)
        if data is None:
            return
        self.pushed[chunk.sha256] = data
        self.pushed.move_to_end(chunk.sha256)
        while len(self.pushed) > MAX_HELD_PUSHES:
            self.pushed.popitem(last=False)

    def tick(self) -> None:
        """Ask for pushed objects that did not come; re-request stalled downloads; drop
        failed ones (the next ``get`` starts afresh)."""
        now = self._clock()
        for sha, due in list(self._ask_at.items()):
            if now >= due:
                del self._ask_at[sha]
                if sha in self.transfers:
                    log.info("pushed object %s did not come; asking for it", sha[:12])
                    self.transfers[sha].start()
        for sha, transfer in list(self.transfers.items()):
            if sha in self._ask_at:
                continue  # waiting for the push, not stalled
            transfer.tick()
            if transfer.failed:
                log.warning("download of %s failed: %s; will retry", sha[:12], transfer.failed)
                del self.transfers[sha]

    def keep_only(self, sha256s: set[str]) -> None:
        """Stop downloading and drop every object not named in ``sha256s``."""
        self.transfers = {k: v for k, v in self.transfers.items() if k in sha256s}
        self.blobs = {k: v for k, v in self.blobs.items() if k in sha256s}
        self._ask_at = {k: v for k, v in self._ask_at.items() if k in self.transfers}

    def discard(self, sha256: str) -> None:
        self.transfers.pop(sha256, None)
        self.blobs.pop(sha256, None)
        self._ask_at.pop(sha256, None)

    def drop_completed(self) -> None:
        """Forget every downloaded object (a round is done with its parameters)."""
        self.blobs.clear()
