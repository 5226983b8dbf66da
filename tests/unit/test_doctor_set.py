"""`fedge doctor --set key=value` overrides a setting like `fedge agent` and `fedge orchestrator`."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

from fedge.demo.data import write_samples_sqlite


def _doctor(*argv: str) -> subprocess.CompletedProcess:
    # In a child process: the backend check imports ONNX Runtime, which blocks torch.
    return subprocess.run(
        [sys.executable, "-m", "fedge", "doctor", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _free_port() -> int:
    with socket.socket() as s:  # a port nobody listens on: the broker check fails fast
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_doctor_checks_the_overridden_settings(tmp_path: Path) -> None:
    import numpy as np

    data = write_samples_sqlite(
        tmp_path / "readings.db", np.zeros((4, 2), np.float32), np.zeros(4, np.int64)
    )
    config = tmp_path / "agent.toml"
    config.write_text(f'id = "pi-1"\n[data]\npath = "{tmp_path / "missing.db"}"\n')
    url = f"mqtt://127.0.0.1:{_free_port()}"

    plain = _doctor("--config", str(config), "--set", f"mqtt.url={url}")
    assert "unrecognized arguments" not in plain.stderr, plain.stderr
    assert re.search(r"FAIL +data .*missing\.db", plain.stdout), plain.stdout

    fixed = _doctor(
        "--config", str(config), "--set", f"mqtt.url={url}", "--set", f"data.path={data}"
    )
    assert re.search(r"ok +data .*readings\.db", fixed.stdout), fixed.stdout
    assert f"cannot reach 127.0.0.1:{url.rsplit(':', 1)[1]}" in fixed.stdout
    assert fixed.returncode == 1  # the broker is down: still a problem

    bad = _doctor("--config", str(config), "--role", "agent", "--set", "data.nope=1")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert re.search(r"FAIL +config .*unknown setting 'data.nope'", bad.stdout), bad.stdout


def test_doctor_reads_a_site_config_and_checks_both_logins(tmp_path: Path) -> None:
    config = tmp_path / "site.toml"
    url = f"mqtt://127.0.0.1:{_free_port()}"
    config.write_text(
        f'federation = "clinics-a"\nbundle = "{tmp_path / "bundle.fedge"}"\n'
        f'[mqtt]\nurl = "{url}"\n[site]\nid = "site-a"\nfederation = "clinics"\n'
        f'[site.mqtt]\nurl = "{url}"\n'
    )
    out = _doctor("--config", str(config)).stdout
    assert "fedge doctor (site)" in out and "read as site config" in out
    assert out.count(url.removeprefix("mqtt://")) >= 2, out  # the orchestrator's and the site's
