"""Pull transfers: the receiver asks for chunks, a few at a time, and asks again when stalled.

Both directions use it: agents pull the bundle and the global parameters from the
orchestrator; the orchestrator pulls each delta from the agent that offered it. Keeping a small
window of requested-but-unreceived chunks bounds the broker's queues, and because the receiver
remembers what it already holds, a transfer resumes after a reconnect instead of restarting.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable

from .chunks import CHUNK_SIZE, MAX_OBJECT_BYTES, Chunk
from .errors import TransferError
from .messages import BlobRef

log = logging.getLogger(__name__)


class PullTransfer:
    """Reassembles one object; calls ``request(indices)`` to ask the sender for chunks."""

    def __init__(
        self,
        ref: BlobRef,
        request: Callable[[list[int]], None],
        *,
        window: int = 4,
        stall_seconds: float = 5.0,
        max_stalls: int = 20,
        max_bytes: int = MAX_OBJECT_BYTES,
        chunk_size: int = CHUNK_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        ref.validate()
        if ref.size > max_bytes:
            raise TransferError(f"object {ref.sha256[:12]} is {ref.size} bytes; limit {max_bytes}")
        expected_chunks = -(-ref.size // chunk_size)
        if ref.chunks != expected_chunks:
            raise TransferError(
                f"object {ref.sha256[:12]}: {ref.size} bytes should be {expected_chunks} chunks, "
                f"not {ref.chunks}"
            )
        self.ref = ref
        self._request = request
        self._window = max(1, window)
        self._stall_seconds = stall_seconds
        self._max_stalls = max_stalls
        self._chunk_size = chunk_size
        self._clock = clock
        self._parts: dict[int, bytes] = {}
        self._in_flight: set[int] = set()
        self._last_progress = clock()
        self._stalls = 0
        self.failed: str | None = None
        self.result: bytes | None = b"" if ref.size == 0 else None

    @property
    def done(self) -> bool:
        return self.result is not None

    @property
    def received(self) -> int:
        return len(self._parts)

    def start(self) -> None:
        """Ask for the first window of chunks."""
        self._last_progress = self._clock()
        self._fill_window()

    def _fill_window(self) -> None:
        wanted: list[int] = []
        for i in range(self.ref.chunks):
            if len(self._in_flight) + len(wanted) >= self._window:
                break
            if i not in self._parts and i not in self._in_flight:
                wanted.append(i)
        if wanted:
            self._in_flight.update(wanted)
            self._request(wanted)

    def on_chunk(self, chunk: Chunk) -> bool:
        """Take one received chunk; return True when the object is complete and verified."""
        if self.done or self.failed or chunk.sha256 != self.ref.sha256:
            return self.done
        if chunk.count != self.ref.chunks or chunk.size != self.ref.size:
            log.warning("chunk of %s disagrees with the announced size; dropped", chunk.sha256[:12])
            return False
        expected_len = min(self._chunk_size, self.ref.size - chunk.index * self._chunk_size)
        if len(chunk.data) != expected_len:
            log.warning(
                "chunk %d has %d bytes, expected %d; dropped",
                chunk.index,
                len(chunk.data),
                expected_len,
            )
            return False
        self._in_flight.discard(chunk.index)
        if chunk.index not in self._parts:  # duplicates (QoS 1 redelivery) are harmless
            self._parts[chunk.index] = chunk.data
            self._last_progress = self._clock()
            self._stalls = 0
        if len(self._parts) == self.ref.chunks:
            data = b"".join(self._parts[i] for i in range(self.ref.chunks))
            if hashlib.sha256(data).hexdigest() != self.ref.sha256:
                self._parts.clear()  # every chunk verified yet the whole does not: start over
                self._stall("reassembled object fails its sha256")
                return False
            self.result = data
            self._parts.clear()
            return True
        self._fill_window()
        return False

    def tick(self) -> None:
        """Call periodically: re-requests the window when nothing arrived for a while."""
        if self.done or self.failed:
            return
        if self._clock() - self._last_progress >= self._stall_seconds:
            self._stall("no chunk arrived")

    def _stall(self, why: str) -> None:
        self._stalls += 1
        if self._stalls > self._max_stalls:
            self.failed = f"{why} after {self._max_stalls} retries"
            return
        log.info(
            "transfer %s: %s for %.0f s; asking again (%d/%d chunks held)",
            self.ref.sha256[:12],
            why,
            self._stall_seconds,
            len(self._parts),
            self.ref.chunks,
        )
        self._in_flight.clear()
        self._last_progress = self._clock()
        self._fill_window()
