import os

import pytest

from fedge.protocol.chunks import blob_ref, chunk_bytes, decode_frame, encode_frame
from fedge.protocol.errors import TransferError
from fedge.protocol.transfer import PullTransfer

CHUNK = 1000


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _serve(data, indices):
    ref = blob_ref(data, CHUNK)
    return [decode_frame(encode_frame(ref, i, chunk_bytes(data, i, CHUNK))) for i in indices]


def test_window_limits_outstanding_requests_and_object_reassembles():
    data = os.urandom(10 * CHUNK + 123)
    ref = blob_ref(data, CHUNK)
    requests = []
    t = PullTransfer(ref, requests.append, window=3, chunk_size=CHUNK)
    t.start()
    assert requests == [[0, 1, 2]]
    pending = list(requests.pop())
    while not t.done:
        i = pending.pop(0)
        (chunk,) = _serve(data, [i])
        t.on_chunk(chunk)
        for r in requests:
            pending.extend(r)
        requests.clear()
        assert len(pending) <= 3
    assert t.result == data


def test_duplicates_and_foreign_chunks_are_harmless():
    data = os.urandom(3 * CHUNK)
    t = PullTransfer(blob_ref(data, CHUNK), lambda idx: None, window=8, chunk_size=CHUNK)
    t.start()
    other = _serve(os.urandom(3 * CHUNK), [0])[0]
    assert not t.on_chunk(other)
    chunks = _serve(data, [0, 0, 1, 1, 2])
    done = [t.on_chunk(c) for c in chunks]
    assert done[-1] and t.result == data


def test_stall_re_requests_missing_chunks_then_fails_after_retries():
    data = os.urandom(4 * CHUNK)
    clock = FakeClock()
    requests = []
    t = PullTransfer(
        blob_ref(data, CHUNK),
        requests.append,
        window=2,
        stall_seconds=5,
        max_stalls=2,
        chunk_size=CHUNK,
        clock=clock,
    )
    t.start()
    t.on_chunk(_serve(data, [0])[0])
    requests.clear()
    clock.now = 6
    t.tick()
    assert requests and 0 not in requests[0]  # resumes: does not ask for what it holds
    clock.now = 12
    t.tick()
    clock.now = 18
    t.tick()
    assert t.failed and not t.done


def test_corrupt_frame_detected():
    data = os.urandom(CHUNK)
    frame = bytearray(encode_frame(blob_ref(data, CHUNK), 0, data))
    frame[-1] ^= 0xFF
    with pytest.raises(TransferError, match="corrupt"):
        decode_frame(bytes(frame))
    with pytest.raises(TransferError, match="magic"):
        decode_frame(b"hello")


def test_size_and_count_mismatch_refused():
    ref = blob_ref(os.urandom(2500), CHUNK)
    with pytest.raises(TransferError, match="limit"):
        PullTransfer(ref, lambda i: None, max_bytes=1000, chunk_size=CHUNK)
    bad = type(ref)(ref.sha256, ref.size, 7)
    with pytest.raises(TransferError, match="should be 3 chunks"):
        PullTransfer(bad, lambda i: None, chunk_size=CHUNK)
