"""The agent's retained status: what the registry, `fedge status` and the Last Will say."""

from __future__ import annotations

from functools import cache

from fedge.protocol.messages import Status
from fedge.protocol.topics import Topics, validate_name

from .config import AgentConfig


@cache
def fedge_version() -> str:
    """The installed fedge version ("dev" from a source tree without metadata)."""
    try:
        from importlib.metadata import version

        return version("fedge")
    except Exception:  # noqa: BLE001 - any metadata problem: still report something
        return "dev"


def offline_status(config: AgentConfig, backend_name: str) -> tuple[str, bytes]:
    """(topic, payload) of the retained ``offline`` status: the Last Will and the last word."""
    validate_name(config.id)
    status = Status(agent=config.id, state="offline", backend=backend_name, version=fedge_version())
    return Topics(config.federation).agent_status(config.id), status.encode()


def status_message(
    agent_id: str,
    state: str,
    *,
    backend: str,
    eligible: bool,
    reason: str,
    num_samples: int,
    now: float,
) -> Status:
    """A live status; an idle device that may not train says ``ineligible``."""
    if not eligible and state in ("online", "idle"):
        state = "ineligible"
    return Status(
        agent=agent_id,
        state=state,
        backend=backend,
        eligible=eligible,
        reason=reason[:500],
        num_samples=num_samples,
        version=fedge_version(),
        ts=now,
    )
