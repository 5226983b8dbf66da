"""One blob server for both sides: duplicates and out-of-range indices cost nothing."""

from fedge.protocol.blob_server import BlobServer
from fedge.protocol.chunks import CHUNK_SIZE, decode_frame
from fedge.protocol.messages import FetchRequest, new_msg_id

SHA_UNKNOWN = "0" * 64


def _request(sha: str, indices: list[int]) -> FetchRequest:
    return FetchRequest(msg_id=new_msg_id(), agent="dev-1", sha256=sha, indices=indices)


def test_duplicate_and_out_of_range_indices_are_served_once() -> None:
    sent: list[tuple[str, bytes]] = []
    server = BlobServer(lambda topic, frame: sent.append((topic, frame)))
    blob = bytes(range(256)) * (CHUNK_SIZE // 256) * 2 + b"tail"  # 3 chunks
    ref = server.offer(blob)
    assert ref.chunks == 3
    frames = server.serve(_request(ref.sha256, [0] * 256), "down")
    assert frames == 1 and len(sent) == 1
    frames = server.serve(_request(ref.sha256, [2, 1, 2, 99, 1]), "down")
    assert frames == 2
    assert [decode_frame(f).index for _, f in sent] == [0, 2, 1]
    assert server.bytes_sent == sum(len(f) for _, f in sent)


def test_unknown_objects_and_lookup() -> None:
    sent: list[tuple[str, bytes]] = []
    store = {"x": b""}
    server = BlobServer(lambda t, f: sent.append((t, f)), lookup=lambda sha: store.get(sha))
    assert server.serve(_request(SHA_UNKNOWN, [0]), "down") == 0
    blob = b"delta bytes"
    from fedge.protocol.chunks import blob_ref

    store[blob_ref(blob).sha256] = blob
    assert server.serve(_request(blob_ref(blob).sha256, [0]), "up") == 1
    assert server.holds(blob_ref(blob).sha256)
    server.keep_only(set())
    assert not server.holds(blob_ref(blob).sha256)


def test_a_frame_is_encoded_once_for_every_receiver(monkeypatch) -> None:
    """The round's parameters are pushed to each participant: the same frames, encoded once."""
    import fedge.protocol.blob_server as blob_server

    encoded: list[int] = []
    real = blob_server.encode_frame
    monkeypatch.setattr(
        blob_server, "encode_frame", lambda ref, i, data: encoded.append(i) or real(ref, i, data)
    )
    sent: list[tuple[str, bytes]] = []
    server = BlobServer(lambda topic, frame: sent.append((topic, frame)))
    blob = bytes(range(256)) * (CHUNK_SIZE // 256) + b"tail"  # 2 chunks
    ref = server.offer(blob)
    for device in range(100):
        assert server.serve(_request(ref.sha256, [0, 1]), f"dev-{device}/down") == 2
    assert encoded == [0, 1]
    assert len(sent) == 200 and len({f for _, f in sent}) == 2
    assert b"".join(decode_frame(f).data for _, f in sent[:2]) == blob
    # a withdrawn object's frames go with it: served again only once offered again
    server.withdraw(ref.sha256)
    assert server.serve(_request(ref.sha256, [0]), "dev-0/down") == 0
    server.offer(blob)
    server.serve(_request(ref.sha256, [0]), "dev-0/down")
    assert encoded == [0, 1, 0]
