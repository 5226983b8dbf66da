"""Fleet simulator: synchronous FedAvg vs buffered asynchronous (FedBuff) on a realistic fleet.

The real orchestrator (``fedge orchestrator`` processes, one per setting) over a real
Mosquitto (a fresh one per setting); N simulated devices (bench/fleet_devices.py) in worker
processes of ``--per-worker`` devices on one epoll loop each (bench/fleet_epoll.py), each a
real MQTT client training the digits MLP with ONNX Runtime on its own non-IID rows (``--rows``
drawn per device from the 80% training split with Dirichlet(0.5) class proportions, so any N works).
Profiles: availability (random on/off or diurnal), a "pi" class 5x slower than "laptop",
dropouts mid-training. Time is compressed (a laptop's job takes ``--base-seconds`` of real
sleep; the profile's periods scale with it). Every committed version is evaluated centrally on
the 20% held-out split; the table reports wall time to 90% / 95% test accuracy, accuracy at
the time budget and bytes per device.

Usage: python bench/fleet_simulator.py [--devices 100] [--budget 90] [--plot docs/fleet-sim.png]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from fleet_epoll import fleet_worker  # noqa: E402
from support.mosquitto import MosquittoBroker, make_users  # noqa: E402

from fedge.demo.data import load_sklearn_dataset, write_samples_sqlite  # noqa: E402
from fedge.demo.run import write_toml  # noqa: E402

SYNC_GRID = [  # (goal, over-selection, deadline s): tuned around the profile's job times
    (10, 1.3, 2.5),
    (10, 1.5, 7.0),
    (20, 1.3, 2.5),
    (10, 2.0, 2.5),
    (50, 1.3, 2.5),
    (20, 2.0, 2.5),  # 5-7: larger cohorts, for fleets of 1,000
    (50, 2.0, 2.5),
    (100, 1.5, 2.5),
]


def device_rows(n_devices: int, rows: int, seed: int = 0):
    """(per-device (x, y) lists, (x_test, y_test)): non-IID draws from the training split."""
    x, y = load_sklearn_dataset("digits")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    n_test = len(y) // 5
    test, train = order[:n_test], order[n_test:]
    pools = [train[y[train] == c] for c in range(10)]
    out = []
    for _ in range(n_devices):
        p = rng.dirichlet(np.full(10, 0.5))
        labels = rng.choice(10, size=rows, p=p)
        idx = np.array([rng.choice(pools[c]) for c in labels])
        out.append((x[idx].astype(np.float32), y[idx]))
    return out, (x[test], y[test])


def curve(db: Path) -> list[tuple[float, float]]:
    """(seconds since the run started, test accuracy) per committed version."""
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        started = conn.execute("SELECT started FROM runs ORDER BY started LIMIT 1").fetchone()
        rows = conn.execute("SELECT created, metrics FROM model_versions ORDER BY version")
        if not started:
            return []
        return [
            (created - started[0], json.loads(m).get("test_accuracy", float("nan")))
            for created, m in rows.fetchall()
        ]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def first_time(points: list[tuple[float, float]], target: float) -> float | None:
    return next((t for t, a in points if a >= target), None)


STRATEGY_KEYS = ("server_lr", "momentum", "eta", "tau", "beta1", "beta2")
BUFFERED_KEYS = {
    "max_staleness": int,
    "staleness_exponent": float,
    "staleness_hinge_after": int,
    "slot": float,  # slot_seconds, in base seconds (as the synchronous deadlines)
}


def async_setting(spec: str, args) -> tuple[str, dict]:
    """``K:C:staleness[:strategy[:options]]`` -> (label, orchestrator settings). ``options`` is a
    server lr (``0.5``) or ``key=value`` pairs joined by ``/``: strategy options (server_lr,
    momentum, eta, tau, beta1, beta2) or buffered ones (max_staleness, staleness_exponent,
    staleness_hinge_after, slot = slot_seconds in base seconds), e.g.
    ``20:100:polynomial:fedavgm:server_lr=1/momentum=0.9`` or ``20:100:constant:fedavg:slot=2.5``."""
    k, c, kind, *strategy = spec.split(":")
    b = args.base_seconds
    extra: dict = {}
    buffered: dict = {
        "buffer_size": int(k),
        "max_concurrency": int(c),
        "slot_seconds": 15.0 * b,
        "max_staleness": max(10, 3 * int(c) // int(k)),
        "staleness": kind,
        # refused devices ask again after this long: with 1,000 devices and 0.5 s, most of
        # the orchestrator's messages were refused requests
        "retry_after": 0.5 * b if args.devices <= 100 else 1.0 * b,
    }
    label = f"async-k{k}-c{c}-{kind}"
    if strategy:  # e.g. fedavgm:0.5 -> server momentum, server lr 0.5
        extra["strategy"] = strategy[0]
        options: dict = {}
        for item in strategy[1].split("/") if strategy[1:] else []:
            key, _, value = item.rpartition("=")
            key = key or "server_lr"
            if key == "slot":
                buffered["slot_seconds"] = float(value) * b
            elif key in BUFFERED_KEYS:
                buffered[key] = BUFFERED_KEYS[key](value)
            elif key in STRATEGY_KEYS:
                options[key] = float(value)
            else:
                raise SystemExit(f"--async-grid {spec!r}: unknown option {key!r}")
        extra["strategy_options"] = options
        label += "-" + "-".join(strategy).replace("/", "-")
    # the synchronous grid's grace: a device offline this long no longer holds its place
    extra["rounds"] = {"offline_grace_seconds": 0.5}
    return label, extra | {"mode": "async", "buffered": buffered}


def run_setting(name, mode_cfg, args, tmp, broker, bundle_dir, data, test_db, profile_kw):
    ctx = mp.get_context("spawn")
    ready, results, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    ids = [f"dev-{i}" for i in range(args.devices)]
    n_workers = max(1, math.ceil(args.devices / args.per_worker))
    procs = []
    for w in range(n_workers):
        mine = list(range(w, args.devices, n_workers))
        creds = [(ids[i], broker.users[ids[i]]) for i in mine]
        p = ctx.Process(
            target=fleet_worker,
            args=(
                broker.url,
                creds,
                [data[i] for i in mine],
                str(bundle_dir),
                profile_kw,
                args.seed,
                args.epochs,
                ready,
                stop,
                results,
            ),
            daemon=True,
        )
        p.start()
        procs.append(p)
    connected = sum(ready.get(timeout=300) for _ in procs)
    db = tmp / f"{name}.db"
    user = "fedge-orchestrator"
    cfg = {
        "federation": broker.federation,
        "bundle": str(bundle_dir),
        "database": str(db),
        "client_id": user,
        "mqtt": {"url": broker.url, "username": user, "password": broker.users[user]},
        "evaluation": {"enabled": True, "data": {"path": str(test_db), "table": "samples"}},
    } | mode_cfg
    cfg["rounds"] = {"rounds": 100000, "local_epochs": args.epochs} | cfg.get("rounds", {})
    log = open(tmp / f"{name}.log", "w")  # noqa: SIM115
    orch = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedge",
            "orchestrator",
            "--config",
            str(write_toml(tmp / f"{name}.toml", cfg)),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    end = time.monotonic() + args.budget + 5
    while time.monotonic() < end and orch.poll() is None:
        time.sleep(0.5)
    orch.send_signal(signal.SIGTERM)
    try:
        orch.wait(15)
    except subprocess.TimeoutExpired:
        orch.kill()
    stop.set()
    stats = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
    points = [(t, a) for t, a in curve(db) if t <= args.budget]
    total = {k: sum(s[k] for s in stats) for k in stats[0]}
    total["slowest_pass"] = max(s["slowest_pass"] for s in stats)  # a worker's loop falling behind
    print(
        f"  {name}: workers' slowest loop pass {total['slowest_pass']:.2f} s, "
        f"{total['passes'] / len(stats) / (args.budget + 5):.0f} passes/s, "
        f"{total['lost']} connections lost, fetches served {total['fetch_served']} "
        f"(not held {total['fetch_unknown']}), load avg {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    return {
        "name": name,
        "connected": connected,
        "points": points,
        "t90": first_time(points, 0.90),
        "t95": first_time(points, 0.95),
        "acc_at_budget": points[-1][1] if points else float("nan"),
        "versions": len(points) - 1,
        "kib_per_device": total["bytes"] / 1024 / args.devices,
        **total,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--per-worker", type=int, default=500)
    ap.add_argument("--rows", type=int, default=40, help="training rows per device")
    ap.add_argument("--epochs", type=int, default=3, help="local epochs per job")
    ap.add_argument("--budget", type=float, default=90.0, help="seconds per setting")
    ap.add_argument("--availability", default="diurnal", choices=["always", "random", "diurnal"])
    ap.add_argument("--base-seconds", type=float, default=1.0)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--sync", default="all", help="'all', 'none' or grid indices, e.g. 0,1")
    ap.add_argument(
        "--async-grid",
        default="10:40:hinge",
        help="async settings K:C:staleness[:strategy[:server_lr]], comma-separated ('' = none),"
        " e.g. 20:200:polynomial,20:200:constant:fedavgm:0.5",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", default="", help="PNG path for accuracy vs time")
    ap.add_argument("--workdir", default="", help="keep databases and logs here")
    ap.add_argument("--json", default="", help="also write the results (one object a setting)")
    args = ap.parse_args()
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cores, Python {sys.version.split()[0]},"
        f" load avg {os.getloadavg()[0]:.2f}; {args.devices} devices, {args.rows} rows each, "
        f"availability {args.availability}, 30% pi (5x slower), dropout {args.dropout}, "
        f"budget {args.budget:.0f} s per setting"
    )
    b = args.base_seconds
    profile_kw = {  # a slower clock (--base-seconds) stretches every period of the profile
        "availability": args.availability,
        "base_seconds": b,
        "dropout": args.dropout,
        "day_seconds": 60.0 * b,
        "on_seconds": 40.0 * b,
        "off_seconds": 20.0 * b,
    }
    data, (xt, yt) = device_rows(args.devices, args.rows, args.seed)
    settings: list[tuple[str, dict]] = []
    grid = (
        SYNC_GRID
        if args.sync == "all"
        else []
        if args.sync == "none"
        else [SYNC_GRID[int(i)] for i in args.sync.split(",")]
    )
    for goal, over, deadline in grid:
        settings.append(
            (
                f"sync-g{goal}-o{over}-d{deadline * b:g}",
                {
                    "rounds": {
                        "devices_per_round": goal,
                        "over_selection": over,
                        "deadline_seconds": deadline * b,
                        "min_devices": goal,
                        "min_reports": max(1, goal // 2),
                        "retry_seconds": 0.5,
                        "offline_grace_seconds": 0.5,
                    }
                },
            )
        )
    for spec in args.async_grid.split(",") if args.async_grid else []:
        label, extra = async_setting(spec, args)
        settings.append((label, extra))
    from bench_bundle import digits_bundle

    out = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(args.workdir or tmpdir)
        tmp.mkdir(parents=True, exist_ok=True)
        bundle_dir = digits_bundle(tmp / "bundle")
        test_db = write_samples_sqlite(tmp / "test.db", xt, yt)
        users = make_users(args.devices)
        for name, cfg in settings:
            # a fresh broker per setting: retained tasks and invitations of the previous
            # setting's run would send the next fleet after parameters nobody serves any more
            broker = MosquittoBroker(tmp / f"mq-{name}", users=users, persistence=False)
            broker.start()
            try:
                r = run_setting(name, cfg, args, tmp, broker, bundle_dir, data, test_db, profile_kw)
            finally:
                broker.stop()
            out.append(r)
            print(row(r), flush=True)
    print_table(out, args)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    if args.plot:
        plot(out, Path(args.plot), args)
    return 0


def fmt(v: float | None) -> str:
    return f"{v:6.1f}" if v is not None else "     -"


def row(r: dict) -> str:
    return (
        f"{r['name']:<44} {fmt(r['t90'])} {fmt(r['t95'])} {r['acc_at_budget']:8.3f} "
        f"{r['versions']:5d} {r['jobs']:6d} {r['dropped']:5d} {r['kib_per_device']:9.1f}"
    )


def print_table(out: list[dict], args) -> None:
    print()
    print(
        f"{'setting':<44} {'t90 s':>6} {'t95 s':>6} {'acc@' + str(int(args.budget)) + 's':>8} "
        f"{'vers':>5} {'jobs':>6} {'drop':>5} {'KiB/dev':>9}"
    )
    for r in out:
        print(row(r))
    syncs = [r for r in out if r["name"].startswith("sync") and r["t90"] is not None]
    asyncs = [r for r in out if r["name"].startswith("async") and r["t90"] is not None]
    if syncs and asyncs:
        best = min(syncs, key=lambda r: r["t90"])
        fast = min(asyncs, key=lambda r: r["t90"])
        print(
            f"\nbest async ({fast['name']}) reaches 90% {best['t90'] / fast['t90']:.2f}x sooner "
            f"than the best sync setting ({best['name']})"
        )


def plot(out: list[dict], path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in out:
        xs = [t for t, _ in r["points"]]
        ys = [a for _, a in r["points"]]
        style = "-" if r["name"].startswith("async") else "--"
        ax.plot(xs, ys, style, label=r["name"], linewidth=2 if style == "-" else 1.2)
    ax.axhline(0.9, color="grey", linewidth=0.8)
    ax.set_xlabel("wall time (s, compressed)")
    ax.set_ylabel("held-out test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(
        f"{args.devices} devices, {args.availability}, 30% 5x-slower, dropout {args.dropout}"
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
