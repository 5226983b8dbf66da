"""Run one example end to end with real processes and real `fedge` commands.

1. data:   ``python examples/NAME/prepare.py --out OUT/data`` (one SQLite file per device,
           a held-out test file, and ``baseline.json``: the number to beat);
2. export: ``fedge export examples/NAME/model.py:build ARGS --out OUT/bundle`` (ARGS from
           ``example.toml``);
3. broker: Mosquitto on a free loopback port, with a password per device and per-device ACLs
           (``fedge.demo.mosquitto``: the files ``fedge broker init`` writes, plain MQTT only);
4. run:    ``fedge orchestrator --config examples/NAME/orchestrator.toml`` and three
           ``fedge agent --config examples/NAME/agent.toml --set id=dev-N ...``, all in OUT
           (the configs' relative paths are relative to it); passwords in FEDGE_MQTT_PASSWORD;
5. report: the final metric against the baseline, bytes per round and wall time, from the
           orchestrator's database (``fedge.demo.run_report``).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedge.demo.mosquitto import LocalMosquitto, make_users
from fedge.demo.run import stop_processes
from fedge.demo.run_report import RunReport, read_run_report
from fedge.protocol.errors import FedgeError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

HERE = Path(__file__).resolve().parent
DEVICES = 3
MAX_ABANDONED = (
    3  # a device that cannot train (see its log) would make the orchestrator retry forever
)
Echo = Callable[[str], None]


@dataclass(frozen=True)
class Example:
    """One folder under examples/ and its ``example.toml``."""

    name: str
    folder: Path
    title: str
    rounds: int
    metric: str  # the metric the summary prints and checks against the baseline
    export_args: list[str]
    agent_overrides: list[list[str]]  # per device: extra --set KEY=VALUE (e.g. the backend)

    @classmethod
    def load(cls, name: str) -> Example:
        folder = HERE / name
        spec_path = folder / "example.toml"
        if not spec_path.is_file():
            known = ", ".join(names()) or "none"
            raise FedgeError(f"no example {name!r} (no {spec_path}); examples: {known}")
        spec = tomllib.loads(spec_path.read_text())
        overrides = spec.get("agents", {}).get("set", [[] for _ in range(DEVICES)])
        return cls(
            name=name,
            folder=folder,
            title=spec["title"],
            rounds=int(spec["rounds"]),
            metric=spec["metric"],
            export_args=list(spec["export"]),
            agent_overrides=[list(o) for o in overrides],
        )


def names() -> list[str]:
    """Every example, in the order of examples/README.md."""
    return [
        "breast_cancer",
        "sensor_cnn",
        "text_transformer",
        "digits_depthwise",
        "diabetes_regression",
    ]


@dataclass
class ExampleResult:
    example: str
    rounds: int
    metric: str
    value: float
    baseline: float
    baseline_what: str
    higher_is_better: bool
    bytes_per_round: float  # median over rounds: all devices' deltas, as received
    model_bytes: int
    federation_seconds: float  # orchestrator start to exit
    total_seconds: float  # data + export + broker + federation
    export_seconds: float
    report: RunReport

    @property
    def beats_baseline(self) -> bool:
        if self.higher_is_better:
            return self.value > self.baseline
        return self.value < self.baseline

    def as_dict(self) -> dict[str, object]:
        out = {k: v for k, v in self.__dict__.items() if k != "report"}
        out["beats_baseline"] = self.beats_baseline
        return out


class _Processes:
    """The example's child processes (by PID), each with its log file in OUT/logs."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.out / "logs" / f"{name}.log", "w")  # noqa: SIM115 - lives with the process
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "fedge", *args],
            cwd=self.out,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
        )

    def tail(self, name: str, lines: int = 30) -> str:
        path = self.out / "logs" / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop_all(self) -> None:
        stop_processes(list(self.procs.values()))


def run_example(
    example: Example,
    out: Path,
    *,
    rounds: int | None = None,
    timeout: float = 300.0,
    echo: Echo = print,
) -> ExampleResult:
    """Run ``example`` in ``out`` (replaced) and return its numbers."""
    rounds = rounds or example.rounds
    started = time.monotonic()
    if out.exists():
        shutil.rmtree(out)
    (out / "logs").mkdir(parents=True)
    rel = example.folder.relative_to(HERE.parent)

    echo(f"[1/4] data: python {rel}/prepare.py --out {out / 'data'}")
    _run_step(
        [sys.executable, str(example.folder / "prepare.py"), "--out", str(out / "data")],
        out,
        echo,
    )
    baseline = json.loads((out / "data" / "baseline.json").read_text())

    args = [f"{example.folder / 'model.py'}:build", *example.export_args, "--out", "bundle"]
    echo(f"[2/4] export: fedge export {rel}/model.py:build {shlex.join(args[1:])}")
    t0 = time.monotonic()
    _run_step([sys.executable, "-m", "fedge", "export", *args], out, echo)
    export_seconds = time.monotonic() - t0

    orch_config = example.folder / "orchestrator.toml"
    federation = tomllib.loads(orch_config.read_text()).get("federation", "demo")
    broker = LocalMosquitto(out / "mosquitto", users=make_users(DEVICES), federation=federation)
    procs = _Processes(out)
    try:
        broker.start()
        echo(
            f"[3/4] broker: mosquitto on {broker.url} (passwords, per-device ACL; {out}/mosquitto)"
        )
        common = ["--set", f"mqtt.url={broker.url}"]
        orch = ["orchestrator", "--config", str(orch_config), *common]
        orch += ["--set", f"rounds.rounds={rounds}"]
        echo(f"[4/4] federation: {DEVICES} agents + orchestrator, {rounds} rounds, in {out}")
        echo(
            f"      fedge orchestrator --config {rel}/orchestrator.toml --set mqtt.url=... "
            f"--set rounds.rounds={rounds}"
        )
        fed_started = time.monotonic()
        procs.start("orchestrator", orch, env=_password(broker, broker.orchestrator_user))
        for i in range(DEVICES):
            agent_id = f"dev-{i}"
            sets = [
                f"id={agent_id}",
                f"mqtt.username={agent_id}",
                f"data.path=data/{agent_id}.db",
                f"state_dir=state/{agent_id}",
                *(example.agent_overrides[i] if i < len(example.agent_overrides) else []),
            ]
            shown = " ".join(f"--set {s}" for s in sets)
            echo(f"      fedge agent --config {rel}/agent.toml --set mqtt.url=... {shown}")
            cmd = ["agent", "--config", str(example.folder / "agent.toml"), *common]
            for s in sets:
                cmd += ["--set", s]
            procs.start(agent_id, cmd, env=_password(broker, agent_id))
        _follow(procs, out / "orchestrator.db", example.metric, rounds, timeout, echo)
        federation_seconds = time.monotonic() - fed_started
    finally:
        procs.stop_all()
        broker.stop()

    report = read_run_report(out / "orchestrator.db")
    if report.state != "finished" or len(report.rounds) != rounds:
        raise FedgeError(
            f"the run is {report.state} after {len(report.rounds)} of {rounds} rounds; "
            f"see {out / 'logs'}"
        )
    return ExampleResult(
        example=example.name,
        rounds=rounds,
        metric=example.metric,
        value=float(report.final[example.metric]),
        baseline=float(baseline["value"]),
        baseline_what=str(baseline["what"]),
        higher_is_better=bool(baseline["higher_is_better"]),
        bytes_per_round=report.bytes_per_round,
        model_bytes=report.model_bytes,
        federation_seconds=federation_seconds,
        total_seconds=time.monotonic() - started,
        export_seconds=export_seconds,
        report=report,
    )


def _password(broker: LocalMosquitto, user: str) -> dict[str, str]:
    return {"FEDGE_MQTT_PASSWORD": broker.users[user]}


def _run_step(cmd: list[str], cwd: Path, echo: Echo) -> None:
    """Run one preparation command; show its output indented; stop the example if it fails."""
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    for line in (done.stdout + done.stderr).splitlines():
        echo(f"      {line}")
    if done.returncode != 0:
        raise FedgeError(f"{shlex.join(cmd)} exited with code {done.returncode}")


def _follow(
    procs: _Processes, database: Path, metric: str, rounds: int, timeout: float, echo: Echo
) -> None:
    """Print each committed round as the orchestrator writes it; return when it exits."""
    deadline = time.monotonic() + timeout
    shown = 0
    last = time.monotonic()
    orch = procs.procs["orchestrator"]
    while True:
        exited = orch.poll() is not None
        report = _report(database)
        for r in (report.rounds if report else [])[shown:]:
            now = time.monotonic()
            value = r.metrics.get(metric, float("nan"))
            echo(
                f"  round {r.model_version + 1:2d}/{rounds} | {r.reports}/{len(r.participants)} "
                f"devices | {r.bytes_in:8,d} B up | train loss "
                f"{r.metrics.get('train_loss', float('nan')):.4f} | {metric} {value:.4f} | "
                f"{now - last:4.1f} s"
            )
            last = now
            shown += 1
        if exited:
            break
        if report and report.abandoned >= MAX_ABANDONED:
            logs = "\n".join(f"--- {n} ---\n{procs.tail(n, 8)}" for n in procs.procs)
            raise FedgeError(
                f"{report.abandoned} rounds abandoned (not every device reported)\n{logs}"
            )
        if time.monotonic() > deadline:
            raise FedgeError(
                f"no result within {timeout:.0f} s\n--- orchestrator ---\n{procs.tail('orchestrator')}"
            )
        time.sleep(0.2)
    if orch.returncode != 0:
        logs = "\n".join(f"--- {n} ---\n{procs.tail(n)}" for n in procs.procs)
        raise FedgeError(f"the orchestrator exited with code {orch.returncode}\n{logs}")


def _report(database: Path) -> RunReport | None:
    if not database.exists():
        return None
    try:
        return read_run_report(database)
    except (FedgeError, sqlite3.Error):
        return None  # no run yet, or the orchestrator is still creating its schema
