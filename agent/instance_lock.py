"""One agent per state directory, and what `fedge doctor` may learn from a running one.

The agent holds an exclusive ``flock`` on ``STATE_DIR/agent.lock`` (with its PID inside) for
as long as it runs; the kernel drops the lock when the process dies, so a crash never leaves
a stale lock. ``running_pid`` lets `fedge doctor --login` refuse to log in with the
credentials of an agent running on this machine (one connection per device: the login would
take over its session). The agent also writes its link's current problem (TLS, login,
shared credentials) to ``STATE_DIR/link-problem.txt`` for the doctor to show.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import IO

from fedge.protocol.errors import ConfigError

log = logging.getLogger(__name__)

LOCK_NAME = "agent.lock"
PROBLEM_NAME = "link-problem.txt"


class AgentRunningError(ConfigError):
    """Another agent process already uses this state directory."""


class InstanceLock:
    """The exclusive lock of one running agent on its state directory."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / LOCK_NAME
        self._fh: IO[str] | None = open(self.path, "a+")  # noqa: SIM115 - held while running
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._fh.close()
            self._fh = None
            pid = running_pid(state_dir)
            raise AgentRunningError(
                f"another agent (PID {pid or '?'}) is running with state dir {state_dir}; "
                "stop it first (one agent per device and state directory)"
            ) from None
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(f"{os.getpid()}\n")
        self._fh.flush()

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def running_pid(state_dir: str | Path) -> int | None:
    """PID of the agent holding ``state_dir``'s lock, or None if no agent runs there."""
    path = Path(state_dir) / LOCK_NAME
    try:
        fh = open(path)  # noqa: SIM115 - closed below
    except OSError:
        return None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            text = fh.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fh, fcntl.LOCK_UN)
    return None


def write_link_problem(state_dir: Path, problem: str) -> None:
    """Record the link's current problem ("" clears it); a full disk only costs the note."""
    path = state_dir / PROBLEM_NAME
    try:
        if problem:
            path.write_text(problem + "\n")
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:
        log.debug("cannot write %s: %s", path, exc)


def read_link_problem(state_dir: str | Path) -> str:
    try:
        return (Path(state_dir) / PROBLEM_NAME).read_text().strip()
    except OSError:
        return ""
