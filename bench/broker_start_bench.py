"""Broker start time: RabbitMQ 3.10 (MQTT plugin) vs Mosquitto 2.0, as the tests start them.

Each run starts a fresh broker in a new directory with the users of a 5-device federation and
stops it: Mosquitto through ``fedge.demo.mosquitto.LocalMosquitto`` (ready = port accepts),
RabbitMQ through ``tests/support/rabbitmq.py`` (ready = "Server startup complete" and the MQTT
port accepts; its first boot creates the node's database). Reported: median wall seconds to
ready, RabbitMQ's CPU seconds to ready (its process group, from /proc: less sensitive to a
busy machine than wall time), and the ratio RabbitMQ / Mosquitto. Load average in the header:
wall times on a shared machine grow with it.

Usage: python bench/broker_start_bench.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.rabbitmq import RabbitMQBroker  # noqa: E402

from fedge.demo.mosquitto import LocalMosquitto, make_users  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of every live process in process group ``pgid``."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after "(comm)": state ppid pgrp ... utime stime
            total += int(fields[11]) + int(fields[12])
    return total / TICKS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(
        f"# {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.1f} at start"
    )
    mosquitto, rabbit, rabbit_cpu = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            users = make_users(5)
            began = time.monotonic()
            broker = LocalMosquitto(Path(tmp) / f"m{run}", users=users).start()
            mosquitto.append(time.monotonic() - began)
            broker.stop()
            node = RabbitMQBroker(Path(tmp) / f"r{run}", users=users).start()
            rabbit.append(node.start_seconds)
            assert node._proc is not None
            rabbit_cpu.append(group_cpu_seconds(node._proc.pid))
            node.stop()
            print(f"run {run + 1}: mosquitto {mosquitto[-1]:.2f} s, rabbitmq {rabbit[-1]:.1f} s")
    m, r, c = (statistics.median(x) for x in (mosquitto, rabbit, rabbit_cpu))
    print("\n| broker | median wall s to ready | CPU s to ready |\n|---|---|---|")
    print(f"| Mosquitto 2.0 | {m:.2f} | - |\n| RabbitMQ 3.10 | {r:.1f} | {c:.1f} |")
    print(
        f"ratio RabbitMQ / Mosquitto (wall): {r / m:.0f}x; load average now {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
