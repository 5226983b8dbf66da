"""deploy/README.md says how to stop every way of running a fleet, and what a stopped agent keeps."""

from __future__ import annotations

import re
from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _section(title: str) -> str:
    text = (DEPLOY / "README.md").read_text()
    match = re.search(rf"^## {title}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"deploy/README.md has no '## {title}' section"
    return match.group(1)


def test_stopping_covers_systemd_compose_the_demo_and_plain_processes() -> None:
    text = _section("Stopping")
    for needle in ("systemctl stop", "docker compose stop", "fedge demo", "kill", "SIGTERM"):
        assert needle in text, needle
    units = set(re.findall(r"systemctl stop ([\w-]+)", text))
    ours = {u for u in units if u.startswith("fedge-")}
    assert ours == {"fedge-agent", "fedge-orchestrator"}
    for unit in ours:  # the units it names are the ones we ship
        assert (DEPLOY / "systemd" / f"{unit}.service").is_file(), unit


def test_stopping_says_what_a_stopped_agent_keeps() -> None:
    text = _section("Stopping")
    for kept in ("outbox", "journal", "interrupted", "bundle cache", "offline"):
        assert kept in text, kept
