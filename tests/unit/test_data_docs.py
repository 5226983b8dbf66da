"""Every [data] key the agent accepts is documented, with its real default, in docs/data.md
and in `fedge agent --help` (issue: bring your own model and your own data)."""

from __future__ import annotations

import argparse
import dataclasses
import re
import textwrap
from pathlib import Path

from fedge.agent.config import AgentConfig
from fedge.cli import build_parser
from fedge.protocol.settings import load_settings
from fedge.protocol.sqlite_samples import DataSource
from fedge.protocol.toml_writer import toml_value

DOC = Path(__file__).resolve().parents[2] / "docs" / "data.md"
DATA_KEYS = [f.name for f in dataclasses.fields(DataSource)]
TOP_KEYS = ["validation_fraction"]  # about the [data] rows, but a top-level key of agent.toml


def _defaults() -> dict[str, object]:
    cfg = AgentConfig()
    out: dict[str, object] = {k: getattr(cfg.data, k) for k in DATA_KEYS}
    out.update({k: getattr(cfg, k) for k in TOP_KEYS})
    return out


def _shown(value: object) -> str:
    """A default as docs/data.md writes it (``{}``: no [data.inputs.NAME] tables)."""
    return "{}" if value == {} else toml_value(value)


def _agent_help() -> str:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices["agent"].format_help()


def test_docs_data_md_lists_every_key_with_its_default() -> None:
    rows = dict(re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", DOC.read_text(), re.MULTILINE))
    defaults = _defaults()
    assert set(DATA_KEYS) <= set(DataSource.__dataclass_fields__)
    missing = [k for k in defaults if k not in rows]
    assert not missing, f"docs/data.md has no table row for: {missing}"
    wrong = {k: (rows[k], _shown(v)) for k, v in defaults.items() if rows[k] != _shown(v)}
    assert not wrong, f"docs/data.md defaults differ from the code (doc, code): {wrong}"
    assert "0.1" in rows["validation_fraction"]


def test_agent_help_lists_every_key_and_a_working_example(tmp_path: Path) -> None:
    text = _agent_help()
    listed = set(re.findall(r"^  (\w+) {2,}", text, re.MULTILINE))
    missing = [k for k in _defaults() if k not in listed]
    assert not missing, f"fedge agent --help does not list: {missing}"
    assert "default 0.1" in text and "docs/data.md" in text
    example = text.split("For example, in agent.toml:\n", 1)[1].split("\n\n", 1)[0]
    config = tmp_path / "agent.toml"
    config.write_text(textwrap.dedent(example))
    cfg = load_settings(AgentConfig, config)
    assert cfg.data.table == "readings" and cfg.validation_fraction == 0.1
