"""Per-device invitations to a synchronous round, registered into ``MESSAGE_TYPES``.

The retained round task (``round/current``) tells every device which round is open, but not who
is in it: the orchestrator publishes one small ``Invitation`` per invited device, retained, on
that device's own ``agent/<id>/invite`` topic, which the broker ACL lets only that device read.
So a round costs the broker O(devices) bytes instead of O(devices^2) (a list of every
participant sent to every device), no device learns who else takes part, and a restarted
device (or a device that connects late) gets both retained messages again on subscribing.

An invitation names the run and round, so one left over from an earlier round never invites
a device to a later one; the orchestrator does not clear them (one small retained message per
device, overwritten by the next invitation). Who is invited is decided by the orchestrator
alone (``LiveRound.participants``): a device that holds no invitation for the open round is
not a participant, whatever it sends.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, overload

from .fields import AgentId, Round
from .messages import MESSAGE_TYPES, Message, RoundTask, RunId


@dataclass(frozen=True)
class Invitation(Message):
    """Orchestrator -> one device (retained on agent/<id>/invite): take part in this round."""

    TYPE: ClassVar[str] = "invite"
    run_id: RunId
    round: Round
    agent: AgentId


def invites(invitation: Invitation | None, task: RoundTask | None, agent_id: str) -> bool:
    """Whether ``invitation`` invites ``agent_id`` to the round ``task`` announces."""
    return (
        invitation is not None
        and task is not None
        and invitation.agent == agent_id
        and (invitation.run_id, invitation.round) == (task.run_id, task.round)
    )


@overload
def as_seen_by(task: RoundTask, invitation: Invitation | None, agent_id: str) -> RoundTask: ...
@overload
def as_seen_by(task: None, invitation: Invitation | None, agent_id: str) -> None: ...
def as_seen_by(
    task: RoundTask | None, invitation: Invitation | None, agent_id: str
) -> RoundTask | None:
    """The round task as this device sees it: naming it among the participants when it holds
    a matching invitation (the device's decisions test ``agent_id in task.participants``)."""
    if task is None or agent_id in task.participants or not invites(invitation, task, agent_id):
        return task
    return replace(task, participants=[*task.participants, agent_id])


MESSAGE_TYPES.setdefault(Invitation.TYPE, Invitation)
