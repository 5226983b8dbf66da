"""`fedge demo` flags: none is parsed and dropped; each reaches the config that uses it."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from fedge.cli import build_parser
from fedge.demo.cli import options_from_args
from fedge.demo.run import DemoOptions, agent_settings, orchestrator_settings

# flags handled by the CLI itself rather than passed to run_demo
CLI_ONLY = {"min_accuracy", "verbose", "quiet", "log_json", "func", "command"}
NON_DEFAULT = [
    "--devices", "2", "--rounds", "4", "--dataset", "wine", "--alpha", "2.5", "--seed", "7",
    "--local-epochs", "3", "--batch-size", "8", "--optimizer", "sgd", "--lr", "0.05",
    "--hidden", "12", "--out", "somewhere", "--broker", "mqtt://10.0.0.1:1884",
    "--protocol", "5",
]  # fmt: skip
SYNC_ONLY = list(NON_DEFAULT)  # synchronous round settings (the async demo configures a buffer)
NON_DEFAULT = [*NON_DEFAULT, "--async"]


def test_every_demo_flag_is_a_demo_option_and_reaches_it():
    args = build_parser().parse_args(["demo", *NON_DEFAULT])
    option_names = {f.name for f in fields(DemoOptions)}
    flags = set(vars(args)) - CLI_ONLY
    assert flags <= option_names, f"parsed but not passed on: {flags - option_names}"
    opts = options_from_args(args)
    default = DemoOptions()
    for name in flags:  # every flag changed its option away from the default
        assert getattr(opts, name) == getattr(args, name) != getattr(default, name), name
    assert (opts.optimizer, opts.hidden, opts.dataset) == ("sgd", 12, "wine")


def test_round_options_and_protocol_reach_the_orchestrator_and_agent_configs():
    opts = options_from_args(build_parser().parse_args(["demo", *SYNC_ONLY]))
    out = Path("/tmp/x")
    orch = orchestrator_settings(
        opts, url="mqtt://h:1", out=out, bundle=out / "b", test=out / "t.db"
    )
    assert orch["rounds"] == {
        "rounds": 4,
        "min_devices": 2,
        "min_reports": 1,
        "deadline_seconds": opts.deadline_seconds,
        "local_epochs": 3,
        "batch_size": 8,
        "seed": 7,
    }
    assert orch["mqtt"]["protocol"] == "5" and orch["mqtt"]["url"] == "mqtt://h:1"  # type: ignore[index]
    agent = agent_settings(opts, agent_id="dev-1", url="mqtt://h:1", out=out, data=out / "d.db")
    assert agent["mqtt"] == {"url": "mqtt://h:1", "protocol": "5", "username": "dev-1"}
    assert agent["data"] == {"path": str(out / "d.db"), "table": "samples"}
