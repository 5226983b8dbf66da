"""The package list in pyproject.toml must name every package folder (no stray top-levels)."""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_folder_is_listed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapping = config["package-dir"]
    found = set()
    for package, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            if "__pycache__" in rel.parts:
                continue
            found.add(".".join([package, *rel.parts]) if rel.parts else package)
    assert found - listed == set(), (
        f"add these to [tool.setuptools] packages: {sorted(found - listed)}"
    )
    assert listed - found == set(), f"listed but missing: {sorted(listed - found)}"


def test_agent_extra_pulls_no_torch():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in ("agent", "orchestrator"):
        assert not any(d.split(";")[0].strip().startswith("torch") for d in deps[extra]), extra


def test_ci_lints_and_type_checks_before_the_tests_with_strict_protocol():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert any(d.startswith("mypy") for d in config["project"]["optional-dependencies"]["dev"])
    strict = [o for o in config["tool"]["mypy"]["overrides"] if "fedge.protocol.*" in o["module"]]
    assert strict and strict[0]["disallow_untyped_defs"] and strict[0]["disallow_any_generics"]
    steps = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith(("#", "echo", "set ", "cd "))
    ]
    order = [
        "bash scripts/setup-venv.sh dev",
        ".venv/bin/ruff check .",
        ".venv/bin/ruff format --check .",
        "bash scripts/typecheck.sh",
        "bash scripts/test.sh",
        "bash scripts/test-current-ort.sh",
    ]
    positions = [next(i for i, s in enumerate(steps) if s.startswith(o)) for o in order]
    assert positions == sorted(positions), steps


def test_every_dashboard_static_file_is_package_data():
    from pathlib import PurePosixPath

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    globs = config["package-data"]["fedge.orchestrator.dashboard"]
    base = ROOT / "orchestrator" / "dashboard"
    files = [p.relative_to(base).as_posix() for p in (base / "static").rglob("*") if p.is_file()]
    assert {"static/index.html", "static/vendor/uPlot.iife.min.js"} <= set(files)
    missing = [f for f in files if not any(PurePosixPath(f).match(g) for g in globs)]
    assert not missing, f"add to [tool.setuptools.package-data]: {missing}"
