"""Round overhead with many lightweight agents on one Mosquitto.

Overhead = the last accepted report of round k -> round k+1 opened (close, aggregate, commit to
SQLite, publish the next task), read from the orchestrator's database. The orchestrator is a
real ``python -m fedge orchestrator`` process; the agents are scripted paho clients
(tests/support/fake_agent.py) in this process that answer each round with a tiny precomputed
delta of the digits MLP. Loopback only. Median over the rounds (>= 5).

Usage: python bench/round_overhead_bench.py [--agents 100] [--rounds 6]
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.fake_agent import FakeAgent  # noqa: E402
from support.mosquitto import MosquittoBroker, make_users  # noqa: E402

from fedge.demo.run import write_toml  # noqa: E402
from fedge.protocol.bundle import load_bundle  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}"
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
        broker = MosquittoBroker(tmp / "mq", users=make_users(args.agents)).start()
        user = "fedge-orchestrator"
        db = tmp / "o.db"
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
                    "deadline_seconds": 120,
                },
            },
        )
        agents = [
            FakeAgent(broker.url, f"dev-{i}", broker.users[f"dev-{i}"]) for i in range(args.agents)
        ]
        for a in agents:
            a.start()
        orch = subprocess.Popen(
            [sys.executable, "-m", "fedge", "orchestrator", "--config", str(cfg), "-q"]
        )
        answered: set[tuple[str, int]] = set()
        try:
            end = time.monotonic() + 300
            while orch.poll() is None and time.monotonic() < end:
                for a in agents:
                    a.pump(0)
                    t = a.task
                    if (
                        t
                        and t.state == "open"
                        and (a.id, t.round) not in answered
                        and a.id in t.participants
                    ):
                        answered.add((a.id, t.round))
                        a.offer(delta)
                time.sleep(0.005)
        finally:
            if orch.poll() is None:
                orch.terminate()
            orch.wait(10)
            for a in agents:
                a.stop()
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
        overheads, durations = [], []
        for (r, opened, closed, reports), nxt in zip(rounds, rounds[1:], strict=False):
            overheads.append(nxt[1] - last_in[r])
            durations.append(closed - opened)
            assert reports == args.agents, (r, reports)
        print(f"{args.agents} agents, {len(rounds)} rounds, all with {args.agents} reports")
        print(
            f"round overhead (last report in -> next round opened): median "
            f"{statistics.median(overheads) * 1000:.0f} ms (min {min(overheads) * 1000:.0f}, "
            f"max {max(overheads) * 1000:.0f})"
        )
        print(
            f"round duration (open -> close, all agents answering at once): median "
            f"{statistics.median(durations):.2f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
