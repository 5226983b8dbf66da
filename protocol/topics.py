"""MQTT topic layout of one federation: ``fedge/v1/<federation>/...``.

Each agent writes only under ``agent/<its id>/`` (the broker ACL's ``%u`` patterns enforce it);
the orchestrator writes ``round/``, ``orchestrator/`` and the agents' ``cmd``/``down``/``invite``
topics.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import MessageError

ROOT = "fedge/v1"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def validate_name(name: str, what: str = "agent id") -> str:
    """Return ``name`` if it is safe as one topic level (no ``/``, ``+``, ``#``), else raise."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise MessageError(
            f"invalid {what} {name!r}: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class Topics:
    """Topic names for one federation."""

    federation: str = "demo"

    def __post_init__(self) -> None:
        validate_name(self.federation, "federation name")

    @property
    def prefix(self) -> str:
        return f"{ROOT}/{self.federation}"

    # orchestrator -> everyone
    @property
    def round_current(self) -> str:
        return f"{self.prefix}/round/current"

    @property
    def round_params(self) -> str:
        """Retained chunk frame of the open round's parameters, once for every device, when a
        round has many participants (``rounds.shared_params_from``) instead of one per device."""
        return f"{self.prefix}/round/params"

    @property
    def round_async(self) -> str:
        """Retained announcement of a buffered asynchronous run (fedge.protocol.async_messages)."""
        return f"{self.prefix}/round/async"

    @property
    def orchestrator_status(self) -> str:
        return f"{self.prefix}/orchestrator/status"

    @property
    def orchestrator_events(self) -> str:
        return f"{self.prefix}/orchestrator/events"

    # per agent
    def agent_status(self, agent_id: str) -> str:
        return f"{self.prefix}/agent/{agent_id}/status"

    def agent_cmd(self, agent_id: str) -> str:
        return f"{self.prefix}/agent/{agent_id}/cmd"

    def agent_down(self, agent_id: str) -> str:
        return f"{self.prefix}/agent/{agent_id}/down"

    def agent_invite(self, agent_id: str) -> str:
        """Retained ``Invitation`` to the open round (fedge.protocol.invitations); the ACL
        lets only this agent read it."""
        return f"{self.prefix}/agent/{agent_id}/invite"

    def agent_up_msg(self, agent_id: str) -> str:
        return f"{self.prefix}/agent/{agent_id}/up/msg"

    def agent_up_chunk(self, agent_id: str) -> str:
        return f"{self.prefix}/agent/{agent_id}/up/chunk"

    # subscriptions of the orchestrator
    @property
    def all_agent_status(self) -> str:
        return f"{self.prefix}/agent/+/status"

    @property
    def all_agent_up(self) -> str:
        return f"{self.prefix}/agent/+/up/#"

    def parse_agent_topic(self, topic: str) -> tuple[str, str]:
        """Split ``<prefix>/agent/<id>/<rest>`` into (id, rest); raise MessageError otherwise."""
        head = f"{self.prefix}/agent/"
        if not topic.startswith(head):
            raise MessageError(f"topic {topic!r} is not an agent topic of {self.prefix}")
        agent_id, _, rest = topic[len(head) :].partition("/")
        validate_name(agent_id)
        if not rest:
            raise MessageError(f"topic {topic!r} has no kind after the agent id")
        return agent_id, rest
