"""Agent metrics for node_exporter's textfile collector, read from a real agent state database."""

from __future__ import annotations

import configparser
import subprocess
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from support.prometheus import find_tool

from fedge.agent.state import AgentState
from fedge.agent.textfile_metrics import TextfileError, main, render, write

ROOT = Path(__file__).resolve().parents[2]


def _values(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_rounds_aborts_and_training_time_from_the_journal(tmp_path: Path) -> None:
    state = AgentState(tmp_path / "agent.db")
    state.set_journal("run", 1, "acked")
    state.set_journal("run", 2, "aborted", "training failed: RuntimeError: out of memory")
    state.set_journal("run", 3, "aborted", "not eligible: on battery at 10% < 20%")
    state.set_journal("run", 4, "aborted", "device 'ward-7' saw something odd")
    state.set_journal("run", 5, "training")
    state.add_training_seconds("2026-12-01", 12.5)
    state.add_training_seconds("2026-12-02", 7.5)
    text = render(tmp_path / "agent.db")
    state.close()
    v = _values(text)
    assert v[("fedge_agent_training_seconds_total", ())] == 20.0
    assert v[("fedge_agent_rounds", (("status", "aborted"),))] == 3
    assert v[("fedge_agent_rounds", (("status", "acked"),))] == 1
    assert v[("fedge_agent_aborts", (("reason", "training_failed"),))] == 1
    assert v[("fedge_agent_aborts", (("reason", "not_eligible"),))] == 1
    assert v[("fedge_agent_aborts", (("reason", "other"),))] == 1
    assert v[("fedge_agent_outbox_updates", ())] == 0
    assert v[("fedge_agent_last_round_timestamp_seconds", ())] > 0
    assert "ward-7" not in text  # free text never becomes a label
    check = subprocess.run(
        [find_tool("promtool"), "check", "metrics"],
        input=text.encode(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert check.returncode == 0, (check.stdout + check.stderr).decode()


def test_write_replaces_the_file_atomically_and_cli_errors_are_one_line(
    tmp_path: Path, capsys
) -> None:
    AgentState(tmp_path / "agent.db").close()
    out = tmp_path / "fedge_agent.prom"
    out.write_text("stale\n")
    write(tmp_path / "agent.db", out)
    assert out.read_text().startswith("# HELP fedge_agent_training_seconds_total")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert main(["--state-dir", str(tmp_path / "nowhere"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: no agent state at") and err.count("\n") == 1
    assert not (tmp_path / "nowhere").exists()
    try:
        render(tmp_path / "nowhere" / "agent.db")
    except TextfileError as exc:
        assert "--state-dir" in str(exc)
    else:
        raise AssertionError("a missing state database must raise")


def test_systemd_units_run_the_module_on_a_timer() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(ROOT / "deploy" / "systemd" / "fedge-agent-metrics.service")
    s = unit["Service"]
    assert "-m fedge.agent.textfile_metrics --state-dir /var/lib/fedge" in s["ExecStart"]
    assert s["User"] == "fedge" and s["ReadOnlyPaths"] == "/var/lib/fedge"
    out = s["ExecStart"].split("--out ")[1]
    assert out.startswith(s["ReadWritePaths"] + "/") and out.endswith(".prom")
    timer = configparser.ConfigParser(strict=False, interpolation=None)
    timer.optionxform = str
    timer.read(ROOT / "deploy" / "systemd" / "fedge-agent-metrics.timer")
    assert timer["Timer"]["OnUnitActiveSec"] == "1min"
