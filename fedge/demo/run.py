"""``fedge demo``: a whole federation on one machine, with real parts.

Embedded broker (or a real one), digits split non-IID into one SQLite file per device, the
exporter's bundle, the orchestrator and one agent per device as separate processes. Progress
comes from the orchestrator's MQTT events, the final numbers and plot from its database.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fedge.protocol.errors import ConfigError, FedgeError
from fedge.protocol.messages import RoundEvent, parse_message
from fedge.protocol.toml_writer import write_toml

if TYPE_CHECKING:
    from fedge.demo.data import DatasetName

log = logging.getLogger(__name__)


@dataclass
class DemoOptions:
    devices: int = 5
    rounds: int = 10
    dataset: DatasetName = "digits"
    alpha: float = 0.5
    seed: int = 0
    local_epochs: int = 5
    batch_size: int = 16
    optimizer: str = "adamw"
    lr: float = 0.01
    hidden: int = 64
    out: str = "demo-out"
    broker: str | None = None  # mqtt://host:port of a real broker; None = embedded amqtt
    protocol: str = "3.1.1"
    deadline_seconds: float = 60.0
    timeout_seconds: float = 600.0
    asynchronous: bool = False  # buffered asynchronous rounds (FedBuff), see docs/async.md


@dataclass
class DemoResult:
    rounds: list[dict] = field(default_factory=list)
    final_accuracy: float = float("nan")
    wall_seconds: float = 0.0
    agent_peak_rss_mb: float = 0.0
    plot_path: str = ""
    database: str = ""


FEDERATION = "demo"


def orchestrator_settings(
    opts: DemoOptions, *, url: str, out: Path, bundle: Path, test: Path
) -> dict[str, object]:
    """The orchestrator's config for the demo: every round option comes from ``opts``."""
    return {
        "federation": FEDERATION,
        "bundle": str(bundle),
        "database": str(out / "orchestrator.db"),
        "mqtt": {"url": url, "protocol": opts.protocol, "username": "fedge-orchestrator"},
        "rounds": {
            "rounds": opts.rounds,
            "min_devices": opts.devices,
            "min_reports": max(1, opts.devices // 2),
            "deadline_seconds": opts.deadline_seconds,
            "local_epochs": opts.local_epochs,
            "batch_size": opts.batch_size,
            "seed": opts.seed,
        },
        "evaluation": {"enabled": True, "data": {"path": str(test), "table": "samples"}},
    }


def agent_settings(
    opts: DemoOptions, *, agent_id: str, url: str, out: Path, data: Path
) -> dict[str, object]:
    """One demo agent's config."""
    return {
        "id": agent_id,
        "federation": FEDERATION,
        "state_dir": str(out / "state" / agent_id),
        "mqtt": {"url": url, "protocol": opts.protocol, "username": agent_id},
        "data": {"path": str(data), "table": "samples"},
    }


class _Processes:
    """Child processes with their log files; stopped by PID at the end."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, args: list[str], log_path: Path) -> None:
        log_file = open(log_path, "w")  # noqa: SIM115 - closed with the process
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "fedge", *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def peak_rss(self, prefix: str, current: float) -> float:
        import psutil

        best = current
        for name, p in self.procs.items():
            if name.startswith(prefix) and p.poll() is None:
                try:
                    best = max(best, psutil.Process(p.pid).memory_info().rss / 2**20)
                except psutil.Error:
                    pass
        return best

    def stop_all(self, timeout: float = 10.0) -> None:
        stop_processes(list(self.procs.values()), timeout)


def stop_processes(procs: list[subprocess.Popen], timeout: float = 10.0) -> None:
    """SIGTERM all (they publish their offline status), then SIGKILL what outlives ``timeout``."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run_demo(opts: DemoOptions, *, echo=print) -> DemoResult:
    """Run the demo end to end; ``echo`` prints the progress lines."""
    from fedge.demo.data import make_federation
    from fedge.demo.embedded_broker import EmbeddedBroker
    from fedge.protocol.mqtt_link import MqttLink, MqttSettings
    from fedge.protocol.topics import Topics

    if opts.protocol != "3.1.1" and not opts.broker:
        raise ConfigError(
            f"--protocol {opts.protocol} needs --broker mqtt://host:port: the embedded demo "
            "broker speaks only MQTT 3.1.1"
        )
    started = time.monotonic()
    out = Path(opts.out).resolve()
    for sub in ("state", "orchestrator.db", "orchestrator.db-wal", "orchestrator.db-shm", "logs"):
        target = out / sub
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    (out / "logs").mkdir(parents=True, exist_ok=True)

    broker = None
    if opts.broker:
        url = opts.broker
    else:
        broker = EmbeddedBroker()
        broker.start()
        url = broker.url
    echo(f"[1/4] broker: {url} ({'embedded amqtt, demo only' if broker else 'external'})")

    procs = _Processes()
    result = DemoResult(database=str(out / "orchestrator.db"))
    watcher = MqttLink(
        MqttSettings(url=url, protocol=opts.protocol),
        client_id=f"fedge-demo-{os.getpid()}",
        persistent=False,
    )
    topics = Topics(FEDERATION)
    watcher.subscribe(topics.orchestrator_events)
    try:
        watcher.start()
        if not watcher.wait_connected(15):
            raise FedgeError(f"cannot connect to the broker at {url}")
        echo(
            f"[2/4] data: {opts.dataset} split over {opts.devices} devices (Dirichlet alpha {opts.alpha}, seed {opts.seed})"
        )
        fed = make_federation(
            out / "data",
            dataset=opts.dataset,
            n_devices=opts.devices,
            alpha=opts.alpha,
            seed=opts.seed,
        )
        for i, hist in enumerate(fed.label_histograms):
            echo(f"      dev-{i}: {int(sum(hist)):4d} rows, labels {list(int(c) for c in hist)}")

        echo("[3/4] export: PyTorch MLP -> ONNX Runtime training bundle")
        bundle_dir = _export_model(opts, fed.n_features, fed.n_classes, out / "bundle", echo)

        orch_cfg = write_toml(
            out / "orchestrator.toml",
            orchestrator_settings(opts, url=url, out=out, bundle=bundle_dir, test=fed.test_path)
            | _async_settings(opts),
        )
        procs.start(
            "orchestrator",
            ["orchestrator", "--config", str(orch_cfg)],
            out / "logs" / "orchestrator.log",
        )
        for i, path in enumerate(fed.device_paths):
            agent_id = f"dev-{i}"
            cfg = write_toml(
                out / f"agent-{agent_id}.toml",
                agent_settings(opts, agent_id=agent_id, url=url, out=out, data=path),
            )
            procs.start(agent_id, ["agent", "--config", str(cfg)], out / "logs" / f"{agent_id}.log")
        echo(
            f"[4/4] federation: orchestrator + {opts.devices} agent processes, {opts.rounds} rounds "
            f"(logs in {out / 'logs'})"
        )
        _follow(opts, watcher, topics, procs, result, echo, started)
    finally:
        watcher.stop()
        procs.stop_all()
        if broker:
            broker.stop()
    result.wall_seconds = time.monotonic() - started
    _summarize(opts, out, result, echo)
    return result


def _export_model(opts: DemoOptions, n_features: int, n_classes: int, out_dir: Path, echo) -> Path:
    from fedge.demo import models
    from fedge.exporter.export import export_bundle

    t0 = time.monotonic()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    # for digits the same weights as `fedge export fedge.demo.models:digits_mlp`
    model = models.tabular_mlp(n_features, n_classes, hidden=opts.hidden)
    path = export_bundle(
        model,
        input_shape=(n_features,),
        loss="cross_entropy",
        optimizer=opts.optimizer,
        lr=opts.lr,
        num_classes=n_classes,
        out_dir=out_dir,
        model_name=f"{opts.dataset}-mlp",
    )
    from fedge.protocol.bundle import load_bundle

    bundle = load_bundle(path)
    ver = bundle.manifest.verification
    parts = []
    if ver.forward_max_abs_diff is not None:
        parts.append(f"forward {ver.forward_max_abs_diff:.1e}")
    if ver.step_max_abs_diff is not None:
        parts.append(f"one training step {ver.step_max_abs_diff:.1e}")
    if ver.portable_step_max_abs_diff is not None:
        parts.append(f"portable step {ver.portable_step_max_abs_diff:.1e}")
    echo(
        f"      bundle {bundle.content_hash[:12]} in {time.monotonic() - t0:.1f} s; "
        f"backends {', '.join(bundle.manifest.backends)}; "
        f"max |ORT - PyTorch|: {', '.join(parts) or 'not verified'}"
    )
    return path


def _follow(opts, watcher, topics, procs, result, echo, started) -> None:
    deadline = time.monotonic() + opts.timeout_seconds
    last_round = time.monotonic()
    committed: dict[int, tuple[RoundEvent, float]] = {}  # version -> its commit, until evaluated
    while time.monotonic() < deadline:
        result.agent_peak_rss_mb = procs.peak_rss("dev-", result.agent_peak_rss_mb)
        orch = procs.procs["orchestrator"]
        item = watcher.get(timeout=0.5)
        if item is None:
            if orch.poll() is not None:
                if orch.returncode != 0:
                    raise FedgeError(
                        f"the orchestrator exited with code {orch.returncode}; see its log"
                    )
                return
            continue
        try:
            ev = parse_message(item[1], RoundEvent)
        except FedgeError:
            continue
        assert isinstance(ev, RoundEvent)
        if ev.kind == "version_committed":  # asynchronous runs
            m = ev.metrics
            echo(
                f"  version {ev.model_version:2d}/{opts.rounds} | {ev.reports} deltas "
                f"(weight {m.get('mean_weight', 1.0):.2f}) | "
                f"test accuracy {m.get('test_accuracy', float('nan')):.4f}"
            )
        elif ev.kind == "round_committed":  # its test metrics follow in version_evaluated
            committed[ev.model_version] = (ev, time.monotonic())
        elif ev.kind == "version_evaluated" and ev.model_version in committed:
            done, at = committed.pop(ev.model_version)
            m = {**done.metrics, **ev.metrics}
            echo(
                f"  round {ev.model_version:2d}/{opts.rounds} | {done.reports}/{done.participants} devices | "
                f"local loss {m.get('train_loss', float('nan')):.4f} | "
                f"test accuracy {m.get('test_accuracy', float('nan')):.4f} | {at - last_round:4.1f} s"
            )
            last_round = at
        elif ev.kind == "round_abandoned":
            echo(
                f"  round attempt {ev.round} abandoned ({ev.reports}/{ev.participants} reports); retrying"
            )
        elif ev.kind == "run_finished":
            orch.wait(30)
            return
    raise FedgeError(f"the demo did not finish within {opts.timeout_seconds:.0f} s; see the logs")


def _summarize(opts: DemoOptions, out: Path, result: DemoResult, echo) -> None:
    from fedge.orchestrator.plotting import plot_rounds
    from fedge.orchestrator.store import Store

    store = Store(out / "orchestrator.db")
    try:
        run_id = store.latest_run_id()
        rounds = store.rounds(run_id) if run_id else []
    finally:
        store.close()
    if opts.asynchronous:
        _summarize_async(opts, out, result, echo)
        return
    committed = [r for r in rounds if r.state == "committed"]
    result.rounds = [
        {"round": r.round, "version": r.model_version + 1, **r.metrics} for r in committed
    ]
    if committed:
        result.final_accuracy = float(committed[-1].metrics.get("test_accuracy", float("nan")))
        result.plot_path = str(
            plot_rounds(
                rounds,
                out / "accuracy.png",
                title=f"fedge demo: {opts.dataset}, "
                f"{opts.devices} devices, non-IID (alpha {opts.alpha})",
            )
        )
    echo("")
    echo(
        f"Done: {len(committed)} rounds in {result.wall_seconds:.1f} s; final test accuracy "
        f"{result.final_accuracy:.4f}; agent peak RSS {result.agent_peak_rss_mb:.0f} MB"
    )
    if result.plot_path:
        echo(f"Plot: {result.plot_path}")
    echo(f"History: fedge history --database {out / 'orchestrator.db'}")


def _async_settings(opts: DemoOptions) -> dict:
    """Orchestrator settings of an asynchronous demo: a version every half-fleet of deltas."""
    if not opts.asynchronous:
        return {}
    k = max(1, opts.devices // 2)
    return {"mode": "async", "buffered": {"buffer_size": k, "max_concurrency": opts.devices}}


def _summarize_async(opts: DemoOptions, out: Path, result: DemoResult, echo) -> None:
    from fedge.orchestrator.buffered_store import BufferedStore
    from fedge.orchestrator.buffered_views import plot_async
    from fedge.orchestrator.store import Store

    store = Store(out / "orchestrator.db")
    try:
        run_id = store.latest_run_id() or ""
        versions = BufferedStore(store).versions(run_id)[1:]
        result.rounds = [{"version": v["version"], **v["metrics"]} for v in versions]
        if versions:
            result.final_accuracy = float(versions[-1]["metrics"].get("test_accuracy", "nan"))
            title = f"fedge demo (async): {opts.dataset}, {opts.devices} devices"
            result.plot_path = str(plot_async(store, run_id, out / "accuracy.png", title=title))
    finally:
        store.close()
    echo("")
    echo(
        f"Done: {len(versions)} versions in {result.wall_seconds:.1f} s; final test accuracy "
        f"{result.final_accuracy:.4f}; agent peak RSS {result.agent_peak_rss_mb:.0f} MB"
    )
    if result.plot_path:
        echo(f"Plot: {result.plot_path}")
    echo(f"Status: fedge status --database {out / 'orchestrator.db'}")
