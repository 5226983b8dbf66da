"""The agent's side of asynchronous runs: the run's announcement, granted slots, slot requests.

The daemon hands it what arrives on ``round/async`` and slot tasks from its cmd topic, and asks
it each tick whether to send a ``SlotRequest`` (the decision is ``slot_request_due`` in
round_machine.py). A granted slot is a ``RoundTask`` naming this device alone; the daemon
trains it like any round, through its journal and outbox.
"""

from __future__ import annotations

import logging

from fedge.protocol.async_messages import AsyncAnnounce, SlotRequest
from fedge.protocol.errors import MessageError
from fedge.protocol.messages import RoundTask, new_msg_id, parse_message

from .round_machine import slot_request_due, task_changed

log = logging.getLogger(__name__)


class AsyncSlots:
    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id
        self.announce: AsyncAnnounce | None = None
        self.holding = False  # the daemon's current task is a slot granted on the cmd topic
        self.last_request: float | None = None  # monotonic time of the last SlotRequest

    def on_announce(self, payload: bytes) -> None:
        msg = parse_message(payload, AsyncAnnounce) if payload else None
        self.announce = msg if isinstance(msg, AsyncAnnounce) else None

    def on_slot(self, current: RoundTask | None, task: RoundTask) -> RoundTask:
        """Check a slot task from the cmd topic; it becomes the daemon's current task."""
        if self.agent_id not in task.participants or task.state != "open":
            raise MessageError("a slot task on the command topic must name this device")
        if task_changed(current, task):
            log.info(
                "slot %d of run %s: train model v%d", task.round, task.run_id, task.model_version
            )
        self.holding = True
        return task

    def request(
        self,
        task: RoundTask | None,
        journal: str,
        *,
        now: float,
        mono_now: float,
        outbox_busy: bool,
        eligible: bool,
        connected: bool,
        stopping: bool,
    ) -> SlotRequest | None:
        """The SlotRequest to send now, if one is due."""
        a = self.announce
        if a is None or not slot_request_due(
            a,
            task,
            agent_id=self.agent_id,
            journal=journal,
            now=now,
            mono_now=mono_now,
            last_request=self.last_request,
            outbox_busy=outbox_busy,
            eligible=eligible,
            connected=connected,
            stopping=stopping,
        ):
            return None
        self.last_request = mono_now
        return SlotRequest(msg_id=new_msg_id(), agent=self.agent_id, run_id=a.run_id)
