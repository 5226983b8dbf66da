"""A scripted device for asynchronous (buffered) runs on an ``InMemoryBroker``.

Like :class:`MemoryDevice`, plus: it asks for a slot (``SlotRequest``) and takes the slot's
``RoundTask`` from its cmd topic, as the real agent does.
"""

from __future__ import annotations

from fedge.protocol.async_messages import AsyncAnnounce, SlotRequest
from fedge.protocol.chunks import decode_frame
from fedge.protocol.messages import Ack, FetchRequest, RoundTask, new_msg_id, parse_message
from fedge.protocol.tensors import decode_tensors

from .memory_device import MemoryDevice


class AsyncMemoryDevice(MemoryDevice):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.link.subscribe(self.topics.round_async)
        self.announce: AsyncAnnounce | None = None
        self.slots: list[RoundTask] = []  # every slot task received, in order

    def ask(self) -> None:
        run_id = self.announce.run_id if self.announce else ""
        self.send(SlotRequest(msg_id=new_msg_id(), agent=self.id, run_id=run_id))

    @property
    def slot(self) -> int:
        return self.task.round if self.task else 0

    def pump(self) -> int:
        n = 0
        while (item := self.link.get(timeout=0)) is not None:
            n += 1
            topic, payload = item
            if topic == self.topics.round_async:
                self.announce = parse_message(payload, AsyncAnnounce) if payload else None
            elif topic == self.topics.round_current:
                continue
            elif topic == self.topics.agent_down(self.id):
                self.frames_received += 1
                chunk = decode_frame(payload)
                if self._pull is not None and self._pull.on_chunk(chunk):
                    self.params = decode_tensors(self._pull.result or b"")
                    self._pull = None
                elif self._pull is None and chunk.count == 1 and self._is_pushed_params(chunk):
                    self.params = decode_tensors(chunk.data)  # pushed with the slot's grant
            else:
                msg = parse_message(payload)
                if isinstance(msg, FetchRequest):
                    self.blobs.serve(msg, self.topics.agent_up_chunk(self.id))
                elif isinstance(msg, Ack):
                    self.acks.append(msg)
                elif isinstance(msg, RoundTask):
                    self.task = msg
                    self.slots.append(msg)
        return n
