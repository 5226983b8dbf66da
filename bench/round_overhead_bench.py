"""Round overhead with many lightweight agents on one Mosquitto.

Overhead = the last accepted report of round k -> round k+1 published (close, aggregate, commit
to SQLite, select, publish the next task). The orchestrator is a real process
(bench/timed_orchestrator.py: ``fedge orchestrator`` plus timing of its steps, which gives the
breakdown); the agents are scripted paho clients (tests/support/fake_agent.py) that answer each
round with a tiny precomputed delta of the digits MLP. They live in several worker processes of
at most ``--per-worker`` clients each: paho's loop uses select(), which cannot watch file
descriptors above 1023, and each client holds three (socket + wake-up pair), so one process
tops out near 330 clients. Each worker connects its clients in parallel.
Loopback only; stops by itself (``--timeout``). Median over the round changes (>= 5).

Scale columns (docs/benchmarks.md, "10,000 devices on one Mosquitto"): each round's open ->
close (every device answering at once), the fan-out (round opened -> the last device holds
both the task and its own invitation), the orchestrator's CPU seconds and peak RSS per round
(bench/timed_orchestrator.py) and Mosquitto's RSS (sampled from /proc every 0.2 s).

Usage: python bench/round_overhead_bench.py [--agents 100] [--rounds 6] [--per-worker 100]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from epoll_devices import epoll_worker  # noqa: E402
from support.fake_agent import FakeAgent  # noqa: E402
from support.mosquitto import MosquittoBroker, find_mosquitto, make_users  # noqa: E402

from fedge.protocol.bundle import load_bundle  # noqa: E402
from fedge.protocol.tensors import encode_tensors  # noqa: E402
from fedge.protocol.toml_writer import write_toml  # noqa: E402


def raise_open_files(want: int = 65536) -> int:
    """Raise this process's soft open-file limit (children, e.g. Mosquitto, inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def agent_worker(
    url: str,
    creds: list[tuple[str, str]],
    delta: dict[str, np.ndarray],
    connect_timeout: float,
    run_seconds: float,
    ready: mp.Queue,
    stop: mp.Event,
    results: mp.Queue,
    poll: float = 0.01,
) -> None:
    """Run ``creds`` agents in this process: connect all at once, answer rounds until ``stop``."""
    raise_open_files()
    agents = [FakeAgent(url, aid, pw) for aid, pw in creds]
    t0 = time.monotonic()
    try:
        for a in agents:
            a.begin()
            time.sleep(0.002)  # spread the SYNs a little: the listen backlog is finite
        for a in agents:
            a.finish_start(max(1.0, connect_timeout - (time.monotonic() - t0)))
    except RuntimeError as exc:
        ready.put(("error", str(exc)))
        for a in agents:
            a.stop()
        return
    ready.put(("ok", time.monotonic() - t0))
    answered: set[tuple[str, int]] = set()
    end = time.monotonic() + run_seconds
    while not stop.is_set() and time.monotonic() < end:
        for a in agents:
            a.pump(0)
            t = a.task
            if t and t.state == "open" and (a.id, t.round) not in answered:
                if a.invited:  # the task and this device's own invitation name the round
                    answered.add((a.id, t.round))
                    a.offer(delta)
        time.sleep(poll)
    seen: dict[str, list[float]] = {}
    for a in agents:
        for rnd, ts in a.invited_seen.items():
            seen.setdefault(str(rnd), []).append(ts)
    results.put(seen)
    for a in agents:
        a.stop()


def rss_kib(pid: int | None) -> int:
    """VmRSS of a process in KiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


class RssSampler(threading.Thread):
    """(time.time(), VmRSS KiB) of one process every 0.2 s, until ``stop`` is set."""

    def __init__(self, pid: int | None) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.stop = threading.Event()
        self.samples: list[tuple[float, int]] = []

    def run(self) -> None:
        while not self.stop.wait(0.2):
            self.samples.append((time.time(), rss_kib(self.pid)))

    def peak(self, lo: float, hi: float) -> int:
        return max((kib for t, kib in self.samples if lo <= t <= hi), default=0)


def load_timings(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def within(timings: list[dict], step: str, lo: float, hi: float) -> float:
    """Total seconds of ``step`` calls that started in [lo, hi]."""
    return sum(
        t["end"] - t["start"] for t in timings if t["step"] == step and lo <= t["start"] <= hi
    )


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f} ms ({min(values) * 1000:.0f}-{max(values) * 1000:.0f})"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=6, help="model versions (round changes + 1)")
    ap.add_argument("--per-worker", type=int, default=100, help="agents per worker process")
    ap.add_argument("--connect-timeout", type=float, default=120.0)
    ap.add_argument("--timeout", type=float, default=900.0, help="whole run, seconds")
    ap.add_argument("--poll", type=float, default=0.01, help="worker loop sleep, seconds")
    ap.add_argument("--profile", default="", help="cProfile the orchestrator into this file")
    ap.add_argument(
        "--orchestrator-python",
        default=sys.executable,
        help="the interpreter that runs the orchestrator (another checkout's venv: a baseline)",
    )
    ap.add_argument(
        "--epoll",
        action="store_true",
        help="devices on one epoll loop per worker (bench/epoll_devices.py): thousands a process",
    )
    ap.add_argument(
        "--pull",
        action="store_true",
        help="--epoll devices never send their delta inline: the orchestrator fetches every one",
    )
    args = ap.parse_args()
    nofile = raise_open_files()
    import paho.mqtt

    mq_version = subprocess.run(
        [find_mosquitto(), "-h"], capture_output=True, text=True
    ).stdout.splitlines()[:1]
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
        f"numpy {np.__version__}, paho-mqtt {paho.mqtt.__version__}, "
        f"{mq_version[0] if mq_version else 'mosquitto ?'}, load avg {os.getloadavg()[0]:.2f}, "
        f"open-file limit {nofile}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        from fedge.demo.models import digits_mlp
        from fedge.exporter.export import export_bundle

        bdir = export_bundle(
            digits_mlp(),
            input_shape=(64,),
            out_dir=tmp / "b",
            optimizer="adamw",
            lr=0.01,
            num_classes=10,
            model_name="digits-mlp",
        )
        template = load_bundle(bdir).initial_parameters()
        delta = {n: np.full(a.shape, 1e-4, a.dtype) for n, a in template.items()}
        n_params = sum(a.size for a in template.values())
        broker = MosquittoBroker(tmp / "mq", users=make_users(args.agents), persistence=False)
        broker.start()
        user = "fedge-orchestrator"
        db = tmp / "o.db"
        timings_path = tmp / "timings.jsonl"
        cfg = write_toml(
            tmp / "o.toml",
            {
                "federation": broker.federation,
                "bundle": str(bdir),
                "database": str(db),
                "client_id": user,
                "mqtt": {
                    "url": broker.url,
                    "username": user,
                    "password": broker.users[user],
                    "protocol": "5",
                },
                "rounds": {
                    "rounds": args.rounds,
                    "min_devices": args.agents,
                    "min_reports": args.agents,
                    "deadline_seconds": 300,
                },
            },
        )
        ctx = mp.get_context("spawn")
        ready, results, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
        ids = [f"dev-{i}" for i in range(args.agents)]
        n_workers = math.ceil(args.agents / args.per_worker)
        workers = []
        orch = None
        sampler: RssSampler | None = None
        seen: dict[str, list[float]] = {}
        try:
            t0 = time.monotonic()
            for w in range(n_workers):
                creds = [(i, broker.users[i]) for i in ids[w::n_workers]]
                common = (args.connect_timeout, args.timeout, ready, stop, results)
                if args.epoll:
                    p = ctx.Process(
                        target=epoll_worker,
                        args=(broker.url, creds, encode_tensors(delta), *common, not args.pull),
                        daemon=True,
                    )
                else:
                    p = ctx.Process(
                        target=agent_worker,
                        args=(broker.url, creds, delta, *common, args.poll),
                        daemon=True,
                    )
                p.start()
                workers.append(p)
            for _ in workers:
                status, detail = ready.get(timeout=args.connect_timeout + 60)
                if status != "ok":
                    raise RuntimeError(f"agents did not connect: {detail}")
            print(
                f"{args.agents} agents in {n_workers} worker processes connected in "
                f"{time.monotonic() - t0:.1f} s; Mosquitto RSS {rss_kib(broker.pid) / 1024:.0f} MiB"
            )
            sampler = RssSampler(broker.pid)
            sampler.start()
            orch = subprocess.Popen(
                [
                    args.orchestrator_python,
                    str(ROOT / "bench" / "timed_orchestrator.py"),
                    "--config",
                    str(cfg),
                    "--timings",
                    str(timings_path),
                    *(["--profile", args.profile] if args.profile else []),
                ]
            )
            try:
                orch.wait(timeout=args.timeout)
            except subprocess.TimeoutExpired:
                print(f"orchestrator still running after {args.timeout:.0f} s: stopping it")
        finally:
            if orch is not None and orch.poll() is None:
                orch.terminate()
                orch.wait(10)
            stop.set()
            for _ in workers:
                try:
                    for rnd, ts in results.get(timeout=30).items():
                        seen.setdefault(rnd, []).extend(ts)
                except Exception:  # a worker that failed to connect sends no results
                    break
            for p in workers:
                p.join(10)
                if p.is_alive():
                    p.kill()
            if sampler is not None:
                sampler.stop.set()
            broker.stop()
        con = sqlite3.connect(db)
        rounds = con.execute(
            "SELECT round, opened, closed, reports FROM rounds ORDER BY round"
        ).fetchall()
        last_in = dict(
            con.execute(
                "SELECT round, MAX(received) FROM updates WHERE status='accepted' GROUP BY round"
            )
        )
        timings = load_timings(timings_path)
        closes = [t for t in timings if t["step"] == "close"]
        opens = [t for t in timings if t["step"] == "open"]
        pub_open = [t for t in timings if t["step"] == "publish:open"]
        # The breakdown needs every close/open timed (a renamed method is not wrapped).
        timed = len(closes) >= len(rounds) - 1 and len(opens) == len(pub_open) >= len(rounds)
        if not timed:
            print("orchestrator steps not timed (methods renamed?): no breakdown")
        cols = {
            k: []
            for k in (
                "overhead",
                "detect",
                "aggregate",
                "commit",
                "close_publish",
                "gap",
                "select",
                "open_rest",
                "open_publish",
                "first_agent",
                "all_agents",
                "opened_db",
                "duration",
            )
        }
        for i, ((r, opened, closed, reports), nxt) in enumerate(
            zip(rounds, rounds[1:], strict=False)
        ):
            assert reports == args.agents, (r, reports)
            lin = last_in[r]
            if timed:
                c, o, po = closes[i], opens[i + 1], pub_open[i + 1]
                commit = within(timings, "commit", c["start"], c["end"])
                close_pub = within(timings, "publish:closed", c["start"], c["end"]) + within(
                    timings, "event", c["start"], c["end"]
                )
                other = within(timings, "load_global", c["start"], c["end"]) + within(
                    timings, "round_metrics", c["start"], c["end"]
                )
                select = within(timings, "select", o["start"], o["end"])
                open_pub = po["end"] - po["start"] + within(timings, "event", o["start"], o["end"])
                cols["overhead"].append(po["end"] - lin)
                cols["detect"].append(c["start"] - lin)
                cols["aggregate"].append(c["end"] - c["start"] - commit - close_pub - other)
                cols["commit"].append(commit + other)
                cols["close_publish"].append(close_pub)
                cols["gap"].append(o["start"] - c["end"])
                cols["select"].append(select)
                cols["open_rest"].append(o["end"] - o["start"] - select - open_pub)
                cols["open_publish"].append(open_pub)
            cols["opened_db"].append(nxt[1] - lin)
            cols["duration"].append(closed - opened)
            got = sorted(seen.get(str(nxt[0]), []))
            if got:
                cols["first_agent"].append(got[0] - lin)
                cols["all_agents"].append(got[-1] - lin)
        scale: dict[str, list[float]] = {
            k: [] for k in ("open_close", "fanout", "cpu", "rss", "mq")
        }
        by_round = {
            r: (o, c) for r, o, c in zip((x[0] for x in rounds), opens, closes, strict=False)
        }
        for r, (o, c) in by_round.items():
            if r == rounds[0][0]:
                continue  # the first round also pays for start-up (connections, caches)
            scale["open_close"].append(c["end"] - o["start"])
            got = seen.get(str(r), [])
            if len(got) == args.agents:
                scale["fanout"].append(max(got) - o["start"])
            if "cpu" in c and "cpu_start" in o:
                scale["cpu"].append(c["cpu"] - o["cpu_start"])
                scale["rss"].append(c["hwm_kib"] / 1024)
            if sampler is not None:
                scale["mq"].append(sampler.peak(o["start"], c["end"]) / 1024)
        n = len(cols["opened_db"])
        print(
            f"{args.agents} agents, {len(rounds)} rounds, all with {args.agents} reports; "
            f"model {n_params} parameters; median (min-max) over {n} round changes:"
        )
        labels = {
            "overhead": "round overhead: last report in -> next task published",
            "detect": "  last report in -> round closing (loop notices)",
            "aggregate": "  aggregate (read deltas from SQLite, decode, FedAvg)",
            "commit": "  commit new version to SQLite + reload it + round metrics",
            "close_publish": "  publish 'closed' task + event",
            "gap": "  close -> open (main loop turn, eligibility query)",
            "select": "  select participants",
            "open_rest": "  record the new round in SQLite + publish the invitations",
            "open_publish": "  publish 'open' task + event",
            "opened_db": "last report in -> round row opened (previous metric)",
            "first_agent": "last report in -> first agent has the new task + invitation",
            "all_agents": "last report in -> every agent has the new task + invitation",
            "duration": "round duration open -> close (all answering at once), s",
        }
        for key, label in labels.items():
            if cols[key]:
                vals = cols[key]
                text = (
                    f"{statistics.median(vals):.2f} s ({min(vals):.2f}-{max(vals):.2f})"
                    if key == "duration"
                    else ms(vals)
                )
                print(f"{label}: {text}")
        scale_labels = {
            "open_close": "round open -> closed and committed, all answering at once, s",
            "fanout": "fan-out: round opened -> last device holds task + its invitation, s",
            "cpu": "orchestrator CPU per round (all threads), s",
            "rss": "orchestrator peak RSS during a round, MiB",
            "mq": "Mosquitto peak RSS during a round, MiB",
        }
        print(
            f"per round, median (min-max) over {len(scale['open_close'])} rounds after the first:"
        )
        for key, label in scale_labels.items():
            vals = scale[key]
            if vals:
                med, lo, hi = statistics.median(vals), min(vals), max(vals)
                print(f"{label}: {med:.2f} ({lo:.2f}-{hi:.2f})")
            else:
                print(f"{label}: not measured")
    return 0


if __name__ == "__main__":
    sys.exit(main())
