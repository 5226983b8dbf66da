"""Chunk frames: how a large object (bundle, parameters, delta) crosses MQTT in pieces.

A frame is ``b"FDGC" | u16 header length | JSON header | chunk bytes``. The header names the
object (its sha256), the chunk number, the chunk count, the object size and the chunk's own
sha256, so a corrupt chunk is dropped and asked for again instead of spoiling the object.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass

from .errors import TransferError
from .messages import BlobRef

CHUNK_SIZE = 512 * 1024  # DESIGN: 512 KiB chunks; the broker's max_packet_size leaves headroom
MAGIC = b"FDGC"
MAX_OBJECT_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class Chunk:
    sha256: str  # of the whole object
    index: int
    count: int
    size: int  # of the whole object
    data: bytes


def blob_ref(data: bytes, chunk_size: int = CHUNK_SIZE) -> BlobRef:
    """The BlobRef announcing ``data``."""
    return BlobRef(hashlib.sha256(data).hexdigest(), len(data), math.ceil(len(data) / chunk_size))


def chunk_bytes(data: bytes, index: int, chunk_size: int = CHUNK_SIZE) -> bytes:
    return data[index * chunk_size : (index + 1) * chunk_size]


def encode_frame(ref: BlobRef, index: int, data: bytes) -> bytes:
    """One frame carrying chunk ``index`` of the object ``ref``."""
    if not 0 <= index < ref.chunks:
        raise TransferError(f"chunk {index} outside 0..{ref.chunks - 1}")
    header = json.dumps(
        {
            "obj": ref.sha256,
            "i": index,
            "n": ref.chunks,
            "size": ref.size,
            "sha": hashlib.sha256(data).hexdigest(),
        },
        separators=(",", ":"),
    ).encode()
    return MAGIC + struct.pack(">H", len(header)) + header + data


def decode_frame(frame: bytes) -> Chunk:
    """Parse and check one frame; raise TransferError saying what is wrong."""
    if len(frame) < 6 or frame[:4] != MAGIC:
        raise TransferError("not a chunk frame (bad magic)")
    (hlen,) = struct.unpack(">H", frame[4:6])
    if 6 + hlen > len(frame):
        raise TransferError("chunk frame header is truncated")
    try:
        header = json.loads(frame[6 : 6 + hlen])
        obj, index, count, size, sha = (
            header["obj"],
            header["i"],
            header["n"],
            header["size"],
            header["sha"],
        )
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise TransferError(f"chunk frame header is malformed: {exc}") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (index, count, size)):
        raise TransferError("chunk frame header numbers are not integers")
    if not isinstance(obj, str) or not isinstance(sha, str):
        raise TransferError("chunk frame header hashes are not strings")
    ref = BlobRef(obj, size, count)
    try:
        ref.validate()
    except Exception as exc:
        raise TransferError(f"chunk frame names a bad object: {exc}") from None
    if not 0 <= index < count:
        raise TransferError(f"chunk index {index} outside 0..{count - 1}")
    data = frame[6 + hlen :]
    if hashlib.sha256(data).hexdigest() != sha:
        raise TransferError(f"chunk {index} of {obj[:12]} is corrupt (sha256 mismatch)")
    return Chunk(obj, index, count, size, bytes(data))
