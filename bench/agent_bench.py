"""The agent's memory: RSS idle (connected, no round) and peak RSS during a round, vs a bare
python + paho-mqtt client connected to the same broker; plus delta sizes per compression.

Each run starts fresh processes against a local Mosquitto (anonymous, loopback): a baseline
client, then an agent (idle RSS sampled 2 s after it connects), then an orchestrator with one
round (the agent's RSS is polled every 20 ms; the peak is kept). Median of --runs (default 5).
Usage: python bench/agent_bench.py [--runs 5] [--backend auto|ort-training|ort-portable]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

BASELINE = """
import sys, time, paho.mqtt.client as mqtt
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="baseline")
c.on_connect = lambda *a: print("connected", flush=True)
c.connect("127.0.0.1", int(sys.argv[1]))
c.loop_start()
time.sleep(60)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def wait_for_text(path: Path, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.05)
    raise RuntimeError(f"'{text}' never appeared in {path}:\n{path.read_text()[-2000:]}")


def toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def one_run(work: Path, port: int, bundle: Path, data: Path, test: Path, backend: str, i: int):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    out = work / f"baseline-{i}.log"
    base = subprocess.Popen(
        [sys.executable, "-c", BASELINE, str(port)], stdout=out.open("w"), stderr=subprocess.STDOUT
    )
    wait_for_text(out, "connected")
    time.sleep(2)
    baseline = rss_mb(base.pid)
    base.kill()
    base.wait()

    fed = f"bench{i}"
    agent_cfg = toml(
        work / f"agent-{i}.toml",
        f'id = "dev-0"\nfederation = "{fed}"\nstate_dir = "{work}/state-{i}"\n'
        f'backend = "{backend}"\n[mqtt]\nurl = "mqtt://127.0.0.1:{port}"\n'
        f'[data]\npath = "{data}"\n',
    )
    alog = work / f"agent-{i}.log"
    agent = subprocess.Popen(
        [sys.executable, "-m", "fedge", "agent", "--config", str(agent_cfg), "--max-rounds", "1"],
        stdout=alog.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    wait_for_text(alog, "connected to")
    time.sleep(2)
    idle = rss_mb(agent.pid)

    orch_cfg = toml(
        work / f"orch-{i}.toml",
        f'federation = "{fed}"\nbundle = "{bundle}"\ndatabase = "{work}/orch-{i}.db"\n'
        f'[mqtt]\nurl = "mqtt://127.0.0.1:{port}"\n[rounds]\nrounds = 1\nmin_devices = 1\n'
        "min_reports = 1\nlocal_epochs = 5\nbatch_size = 32\n",
    )
    orch = subprocess.Popen(
        [sys.executable, "-m", "fedge", "orchestrator", "--config", str(orch_cfg)],
        stdout=(work / f"orch-{i}.log").open("w"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    peak = idle
    while agent.poll() is None:
        try:
            peak = max(peak, rss_mb(agent.pid))
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    orch.wait(60)
    if agent.returncode != 0 or "trained" not in alog.read_text():
        raise RuntimeError(f"agent run failed:\n{alog.read_text()[-2000:]}")
    backend_used = next(
        (
            ln.split("backend ")[1].split(",")[0]
            for ln in alog.read_text().splitlines()
            if "backend " in ln
        ),
        "?",
    )
    return baseline, idle, peak, backend_used


def compression_sizes(bundle: Path) -> list[tuple[str, int]]:
    from fedge.protocol.bundle import load_bundle
    from fedge.protocol.compression import encode_delta

    manifest = load_bundle(bundle).manifest
    rng = np.random.default_rng(0)
    shapes = {p.name: p.shape for p in manifest.parameters}
    delta = {n: rng.normal(0, 0.01, s).astype(np.float32) for n, s in shapes.items()}
    rows = [("plain float32", len(encode_delta(delta)[0]))]
    rows.append(("int8", len(encode_delta(delta, "int8")[0])))
    for f in (0.1, 0.01):
        rows.append((f"topk {f:g}", len(encode_delta(delta, "topk", f)[0])))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--backend", default="auto")
    args = ap.parse_args()
    from fedge.demo.data import make_federation
    from fedge.demo.models import digits_mlp
    from fedge.exporter.export import export_bundle

    work = Path(tempfile.mkdtemp(prefix="fedge-agent-bench-"))
    bundle = export_bundle(
        digits_mlp(),
        input_shape=(64,),
        out_dir=work / "bundle",
        optimizer="sgd",
        lr=0.05,
        num_classes=10,
        model_name="digits-mlp",
    )
    fed = make_federation(work / "data", dataset="digits", n_devices=3, alpha=0.5, seed=0)
    port = free_port()
    conf = toml(work / "mosquitto.conf", f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    results = []
    try:
        for i in range(args.runs):
            results.append(
                one_run(work, port, bundle, fed.device_paths[0], fed.test_path, args.backend, i)
            )
    finally:
        broker.terminate()
        broker.wait()
    base, idle, peak = (statistics.median(r[k] for r in results) for k in range(3))
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        f", onnxruntime {__import__('onnxruntime').__version__}, backend {results[0][3]}"
    )
    print(f"median of {args.runs} runs          RSS MB   vs baseline")
    print(f"python + paho (baseline)      {base:7.1f}   1.00x")
    print(f"agent idle (connected)        {idle:7.1f}   {idle / base:.2f}x")
    print(f"agent peak during a round     {peak:7.1f}   {peak / base:.2f}x")
    print("\ndelta size (digits MLP)       bytes   vs plain")
    sizes = compression_sizes(bundle)
    for name, size in sizes:
        print(f"{name:28s} {size:7d}   {size / sizes[0][1]:.3f}")


if __name__ == "__main__":
    main()
