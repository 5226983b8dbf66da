"""The round's parameters sent unasked with the task (``RoundTask.params_pushed``).

Small parameters travel right behind the task, so a participant trains without a request round
trip: one chunk frame per participant on its own down topic (the same frames and sha256 checks
as a pull; a device that misses them asks as before), or, from ``rounds.shared_params_from``
participants, one retained frame on ``round/params`` that the broker fans out (1,000 devices:
one publish of the orchestrator's instead of 1,000 copies).
"""

from __future__ import annotations

from collections.abc import Iterable

from fedge.protocol.blob_server import BlobServer
from fedge.protocol.chunks import encode_frame
from fedge.protocol.messages import BlobRef, FetchRequest, new_msg_id
from fedge.protocol.topics import Topics
from fedge.protocol.transport import Transport


def push_params(
    params: BlobRef,
    data: bytes,
    participants: Iterable[str],
    *,
    transport: Transport,
    topics: Topics,
    blobs: BlobServer,
    shared_from: int,
    shared_before: bool,
) -> bool:
    """Send the parameters ``data`` (described by ``params``) to ``participants``; return
    whether they are now shared on ``round/params`` (what the next call's ``shared_before``
    is). The bytes sent are counted in ``blobs.bytes_sent``."""
    ids = list(participants)
    if shared_from and len(ids) >= shared_from:
        frame = encode_frame(params, 0, data)
        transport.publish(topics.round_params, frame, retain=True)
        blobs.bytes_sent += len(frame)
        return True
    if shared_before:  # an older version's shared frame: devices need not get it
        transport.publish(topics.round_params, b"", retain=True)
    indices = list(range(params.chunks))
    for agent_id in ids:  # the task names no one (invitations)
        push = FetchRequest(new_msg_id(), agent_id, params.sha256, indices)
        blobs.serve(push, topics.agent_down(agent_id))
    return False
