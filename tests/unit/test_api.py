"""`import fedge`: the scripting API's names, lazy imports and version."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import fedge


def test_import_fedge_imports_neither_torch_nor_onnx():
    code = (
        "import json, sys, fedge; fedge.__version__; fedge.load_bundle; fedge.run_agent; "
        "fedge.run_orchestrator; fedge.AgentConfig; fedge.OrchestratorConfig; "
        "print(json.dumps(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('torch', 'onnx', 'onnxscript', 'onnxruntime'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(out.stdout) == []


def test_version_is_the_installed_distribution_version():
    from importlib.metadata import version

    assert fedge.__version__ == version("fedge")
    assert fedge.__version__[0].isdigit()


def test_every_public_name_resolves_and_all_lists_exactly_them():
    assert set(fedge.__all__) == {"__version__", *fedge._EXPORTS}
    for name in fedge.__all__:
        assert getattr(fedge, name) is not None, name
    assert fedge.run_orchestrator.__module__ == "fedge.api"
    assert fedge.export_bundle.__module__ == "fedge.exporter.export"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        fedge.nope  # noqa: B018


def test_overrides_with_a_config_object_are_refused():
    config = fedge.load_agent_config(overrides=["id=dev-7", "data.path=/tmp/d.db"])
    assert (config.id, config.data.path) == ("dev-7", "/tmp/d.db")
    with pytest.raises(fedge.ConfigError, match="overrides apply to a config file"):
        fedge.run_agent(config, overrides=["id=x"])


def test_run_history_of_a_missing_database_is_a_clear_error(tmp_path):
    with pytest.raises(fedge.FedgeError, match="orchestrator database .* not found"):
        fedge.run_history(tmp_path / "none.db")


def test_start_agent_raises_config_errors_in_the_callers_thread(tmp_path):
    missing = tmp_path / "author.pub"
    config = fedge.load_agent_config(
        overrides=[f"state_dir={tmp_path / 'state'}", f"trusted_keys={missing}"]
    )
    with pytest.raises(fedge.ConfigError, match=f"trusted key file {missing} does not exist"):
        fedge.start_agent(config)
