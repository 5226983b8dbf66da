"""What `pip install 'fedge[agent]'` resolves to, on this machine and on a Raspberry Pi.

pip resolves against the configured package index without installing anything (--dry-run).
The aarch64 case evaluates the extra's environment markers for a 64-bit Raspberry Pi OS and
asks pip for aarch64 wheels only: the agent must get plain onnxruntime there, never torch and
never the (non-existent) training wheel.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _resolve(args: list[str]) -> set[str]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            "-",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    return {item["metadata"]["name"].lower().replace("_", "-") for item in report["install"]}


def test_agent_extra_pulls_no_torch_here():
    names = _resolve(["--no-build-isolation", ".[agent]"])
    assert "torch" not in names
    assert {"paho-mqtt", "numpy", "safetensors"} <= names
    assert "onnxruntime-training-cpu" in names or "onnxruntime" in names


def test_agent_extra_on_raspberry_pi_aarch64_gets_plain_onnxruntime():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pi = dict(
        default_environment(),
        platform_machine="aarch64",
        sys_platform="linux",
        platform_system="Linux",
        python_version="3.11",
        python_full_version="3.11.2",
    )
    wanted = [
        str(req).split(";")[0]
        for req in map(Requirement, deps["dependencies"] + deps["optional-dependencies"]["agent"])
        if req.marker is None or req.marker.evaluate(pi)
    ]
    assert any(w.startswith("onnxruntime>=") for w in wanted), wanted
    assert not any(w.startswith("onnxruntime-training") for w in wanted), wanted
    # Raspberry Pi OS 12 (bookworm) has glibc 2.36: manylinux_2_17 .. 2_36 wheels install there
    platforms = [f"manylinux_2_{minor}_aarch64" for minor in range(36, 16, -1)]
    names = _resolve(
        [
            *[arg for p in platforms for arg in ("--platform", p)],
            "--python-version",
            "3.11",
            "--only-binary=:all:",
            "--target",
            str(ROOT / "build" / "pi-resolve"),
            *wanted,
        ]
    )
    assert (
        "onnxruntime" in names and "torch" not in names and "onnxruntime-training-cpu" not in names
    )
