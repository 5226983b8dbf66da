"""Where a round's time goes: the per-round timeline of a real 10-device digits federation.

Real parts: one Mosquitto on loopback, ``fedge orchestrator`` and one ``fedge agent`` process
per device (ort-training backend unless --backend, digits split Dirichlet(0.5), seed 0, the demo's MLP: 4,810
parameters, AdamW lr 0.01, 1 local epoch, batch 16, central evaluation on the held-out split).
Every process writes its timing hooks (``fedge.protocol.timeline``, env ``FEDGE_TIMELINE``) to
its own file; the bench merges them and prints, per step, the median over the steady rounds
(round 3 on: round 1 fetches the bundle, round 2 warms up) of the time since the round's task
was published -- for device steps the last device's time (the round waits for it) and the
median device's.

The agents run at nice 0 (their default, 10, leaves a device's cores to its owner; on a shared
machine it would measure the other jobs). Baseline, measured in the same run after the federation stops (so nothing competes with it):
the same 10 devices' local training in this one process, ``train_locally`` with the same
backend, bundle, rows and round config (session load, training, validation; what an agent
does per round), summed over the devices; median over ``--rounds`` repetitions. The ratio is
the steady round time (task published -> next task published) over that baseline.

Usage: python bench/round_timeline_bench.py [--runs 3] [--rounds 12] [--devices 10]
       [--backend ort-training|ort-portable]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.mosquitto import MosquittoBroker, make_users  # noqa: E402

from fedge.demo.run import stop_processes  # noqa: E402
from fedge.protocol.toml_writer import write_toml  # noqa: E402

# (label, event, whose): "orch" events are the orchestrator's, "dev" events each device's
STEPS = [
    ("task published (open)", "task_open", "orch"),
    ("parameters pushed to the participants", "params_pushed", "orch"),
    ("device has the task", "task_received", "dev"),
    ("device wants the parameters (asks, or awaits the push)", "params_requested", "dev"),
    ("orchestrator serves the parameters (pull)", "params_served", "orchdev"),
    ("device has the parameters", "fetched", "dev"),
    ("training started", "train_start", "dev"),
    ("training ended", "train_end", "dev"),
    ("offer sent", "offer_sent", "dev"),
    ("orchestrator has the offer", "offer_received", "orchdev"),
    ("device serves the delta (pull)", "delta_served", "dev"),
    ("upload complete", "upload_complete", "orchdev"),
    ("update accepted", "accepted", "orchdev"),
    ("round closing", "closing", "orch"),
    ("aggregated", "aggregated", "orch"),
    ("evaluated (central, before the commit)", "evaluated", "orch"),
    ("committed", "committed", "orch"),
    ("next task published", "next_open", "orch"),
    ("previous version's central evaluation stored", "evaluation_stored", "orch"),
]


CPU_SECONDS: list[tuple[float, float]] = []  # per run: CPU s per steady round, agents / orch


def export(out: Path, n_features: int, n_classes: int) -> Path:
    from fedge.demo import models
    from fedge.exporter.export import export_bundle

    return export_bundle(
        models.tabular_mlp(n_features, n_classes, hidden=64),
        input_shape=(n_features,),
        loss="cross_entropy",
        optimizer="adamw",
        lr=0.01,
        num_classes=n_classes,
        out_dir=out,
        model_name="digits-mlp",
    )


def read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_federation(tmp: Path, fed, bundle: Path, args) -> dict[int, dict[str, list[float]]]:
    """One federation of ``args.rounds`` rounds; per round, each event's times since open."""
    ids = [f"dev-{i}" for i in range(args.devices)]
    broker = MosquittoBroker(tmp / "mq", users=make_users(args.devices), persistence=False)
    broker.start()
    procs: list[subprocess.Popen] = []
    files: dict[str, Path] = {}

    def start(name: str, command: str, cfg: dict) -> None:
        path = write_toml(tmp / f"{name}.toml", cfg)
        files[name] = tmp / f"{name}.timeline.jsonl"
        env = dict(os.environ, PYTHONUNBUFFERED="1", FEDGE_TIMELINE=str(files[name]))
        log = open(tmp / f"{name}.log", "w")  # noqa: SIM115 - lives as long as the process
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "fedge", command, "--config", str(path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        )

    user = "fedge-orchestrator"
    samples: list[tuple[float, float, float]] = []  # (time, agents' CPU s, orchestrator's)
    try:
        for i, aid in enumerate(ids):
            start(
                aid,
                "agent",
                {
                    "id": aid,
                    "federation": broker.federation,
                    "state_dir": str(tmp / "state" / aid),
                    "backend": args.backend,
                    # like the baseline (this process): the agents' default nice 10 would
                    # measure how the other jobs on a shared machine starve them
                    "nice": 0,
                    "mqtt": {
                        "url": broker.url,
                        "username": aid,
                        "password": broker.users[aid],
                        "protocol": "5",
                    },
                    "data": {"path": str(fed.device_paths[i]), "table": "samples"},
                },
            )
        start(
            "orchestrator",
            "orchestrator",
            {
                "federation": broker.federation,
                "bundle": str(bundle),
                "database": str(tmp / "o.db"),
                "client_id": user,
                "mqtt": {
                    "url": broker.url,
                    "username": user,
                    "password": broker.users[user],
                    "protocol": "5",
                },
                "rounds": {
                    "rounds": args.rounds,
                    "min_devices": args.devices,
                    "min_reports": args.devices,
                    "deadline_seconds": 60,
                    "local_epochs": 1,
                    "batch_size": 16,
                    "seed": 0,
                },
                "evaluation": {"enabled": True, "data": {"path": str(fed.test_path)}},
            },
        )
        import psutil

        watched = [psutil.Process(p.pid) for p in procs]
        deadline = time.monotonic() + args.timeout
        while procs[-1].poll() is None and time.monotonic() < deadline:
            cpu = []
            for w in watched:
                try:
                    t = w.cpu_times()
                    cpu.append(t.user + t.system)
                except psutil.Error:
                    cpu.append(float("nan"))
            samples.append((time.time(), sum(cpu[:-1]), cpu[-1]))
            time.sleep(0.1)
        if procs[-1].poll() is None:
            print(f"orchestrator still running after {args.timeout:.0f} s: stopping it")
    finally:
        stop_processes(procs)
        broker.stop()
    orch = read_events(files["orchestrator"])
    opens = {e["round"]: e["t"] for e in orch if e["event"] == "task_open"}
    steady = [r for r in sorted(opens) if r >= 3]
    if len(steady) >= 2:  # CPU spent between the first and the last steady round's opening
        t0, t1 = opens[steady[0]], opens[steady[-1]]
        first = next((s for s in samples if s[0] >= t0), None)
        last = next((s for s in reversed(samples) if s[0] <= t1), None)
        if first and last and last[0] > first[0]:
            n = (last[0] - first[0]) / ((t1 - t0) / (len(steady) - 1))  # rounds in between
            CPU_SECONDS.append(((last[1] - first[1]) / n, (last[2] - first[2]) / n))
    out: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r, t0 in opens.items():
        out[r]["task_open"].append(0.0)
        if r + 1 in opens:
            out[r]["next_open"].append(opens[r + 1] - t0)

    def add(event: dict, key: str) -> None:
        r = event.get("round")
        if r is None:  # events without a round: the open round at that time
            r = max((k for k, t in opens.items() if t <= event["t"]), default=None)
        if r in opens:
            out[r][key].append(event["t"] - opens[r])

    wanted = {s[1] for s in STEPS} - {"task_open", "next_open"}
    for e in orch:
        if e["event"] in wanted:
            add(e, e["event"])
    for aid in ids:
        for e in read_events(files[aid]):
            if e["event"] in wanted:
                add(e, e["event"])
    return out


def baseline_seconds(fed, bundle_path: Path, rounds: int, backend_name: str) -> list[float]:
    """Per repetition: the 10 devices' local training in this process, summed."""
    from fedge.agent.backends import create_backend
    from fedge.agent.local_training import train_locally
    from fedge.protocol.bundle import load_bundle
    from fedge.protocol.data_contract import read_for_bundle
    from fedge.protocol.messages import TrainConfig
    from fedge.protocol.sqlite_samples import DataSource

    bundle = load_bundle(bundle_path)
    params = bundle.initial_parameters()
    backend = create_backend(backend_name, threads=1)
    config = TrainConfig(local_epochs=1, batch_size=16, seed=0)
    data = [read_for_bundle(DataSource(path=str(p)), bundle.manifest) for p in fed.device_paths]
    sums = []
    for r in range(rounds):
        t0 = time.perf_counter()
        for i, samples in enumerate(data):
            train_locally(
                backend,
                bundle,
                samples,
                params,
                config,
                seed_key=f"dev-{i}/0/{r}",
                validation_fraction=0.1,
                should_stop=lambda: "",
                count_seconds=lambda s: None,
            )
        sums.append(time.perf_counter() - t0)
    return sums


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="example: python bench/round_timeline_bench.py --runs 3 --backend ort-portable",
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--devices", type=int, default=10)
    ap.add_argument(
        "--backend",
        default="ort-training",
        choices=["ort-training", "ort-portable"],
        help="the agents' backend, and the in-process baseline's (default: ort-training)",
    )
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--workdir", help="keep the logs and databases here (default: a temp dir)")
    args = ap.parse_args()
    import onnxruntime
    import paho.mqtt

    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cores, Python "
        f"{sys.version.split()[0]}, onnxruntime {onnxruntime.__version__}, paho-mqtt "
        f"{paho.mqtt.__version__}, load avg {os.getloadavg()[0]:.2f}"
    )
    from fedge.demo.data import make_federation

    per_step: dict[str, list[float]] = defaultdict(list)  # step -> per (run, round) values
    round_times: list[float] = []
    base: list[float] = []
    run_medians: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(args.workdir or t)
        tmp.mkdir(parents=True, exist_ok=True)
        fed = make_federation(tmp / "data", dataset="digits", n_devices=args.devices, seed=0)
        bundle = export(tmp / "bundle", fed.n_features, fed.n_classes)
        for run in range(args.runs):
            rdir = tmp / f"run{run}"
            rdir.mkdir()
            timeline = run_federation(rdir, fed, bundle, args)
            run_rounds = []
            for r, steps in sorted(timeline.items()):
                if r < 3:
                    continue
                for key, vals in steps.items():
                    per_step[key + ":last"].append(max(vals))
                    per_step[key + ":median"].append(statistics.median(vals))
                if steps.get("next_open"):
                    run_rounds.append(steps["next_open"][0])
            run_base = baseline_seconds(fed, bundle, args.rounds, args.backend)
            base.extend(run_base)
            round_times.extend(run_rounds)
            if run_rounds:
                rt, bt = statistics.median(run_rounds), statistics.median(run_base)
                run_medians.append((rt, bt))
                print(
                    f"run {run + 1}: steady round {rt * 1000:.0f} ms, in-process training "
                    f"{bt * 1000:.0f} ms, ratio {rt / bt:.2f}"
                )
    print(
        f"\n{args.devices} devices, {args.runs} runs x {args.rounds} rounds; median over the "
        f"steady rounds (3..{args.rounds - 1}) of ms since the round's task was published:"
    )
    print(f"{'step':56s} {'last device':>12s} {'median device':>14s}")
    for label, key, whose in STEPS:
        last = per_step.get(key + ":last")
        if not last:
            print(f"{label:56s} {'-':>12s} {'-':>14s}")
            continue
        med = statistics.median(per_step[key + ":median"]) * 1000
        mid = f"{med:14.1f}" if whose != "orch" else f"{'':14s}"
        print(f"{label:56s} {statistics.median(last) * 1000:12.1f} {mid}")
    if round_times and base:
        rt, bt = statistics.median(round_times), statistics.median(base)
        goal = max(0.060, 2 * bt)
        print(
            f"\nsteady round time {rt * 1000:.0f} ms (min {min(round_times) * 1000:.0f}, max "
            f"{max(round_times) * 1000:.0f}); in-process ORT training of the same "
            f"{args.devices} devices {bt * 1000:.0f} ms; ratio {rt / bt:.2f}; goal "
            f"<= {goal * 1000:.0f} ms: {'met' if rt <= goal else 'not met'}"
        )
        if CPU_SECONDS:
            agents_cpu = statistics.median(a for a, _o in CPU_SECONDS)
            orch_cpu = statistics.median(o for _a, o in CPU_SECONDS)
            print(
                f"CPU per steady round: all {args.devices} agents {agents_cpu * 1000:.0f} ms, "
                f"orchestrator {orch_cpu * 1000:.0f} ms (in-process training {bt * 1000:.0f} ms)"
            )
        print(
            "per run (round, training, ratio): "
            + "; ".join(f"{r * 1000:.0f}/{b * 1000:.0f}/{r / b:.2f}" for r, b in run_medians)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
