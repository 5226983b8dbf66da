"""fedge: federated learning for edge devices (ONNX Runtime training, coordinated over MQTT).

What a model author or an operator scripts, importable from the package root::

    import fedge

    fedge.export_bundle(model, input_shape=(13,), num_classes=3, out_dir="bundle")  # torch
    bundle = fedge.load_bundle("bundle")
    result = fedge.run_orchestrator("orchestrator.toml")     # RunResult with the round history
    fedge.run_agent("agent.toml")                             # blocks; start_agent() threads

Every name is imported on first use, so ``import fedge`` stays light: it never imports torch
or onnx (a device's agent install has neither). See docs/api.md.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any


def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedge")
    except PackageNotFoundError:  # running from a checkout without an install
        return "0+unknown"


__version__ = _installed_version()

# public name -> module that defines it (imported when the name is first used)
_EXPORTS = {
    "export_bundle": "fedge.exporter.export",
    "load_bundle": "fedge.protocol.bundle",
    "pack_bundle": "fedge.protocol.bundle",
    "Bundle": "fedge.protocol.bundle",
    "write_keypair": "fedge.protocol.signing",
    "AgentConfig": "fedge.agent.config",
    "OrchestratorConfig": "fedge.orchestrator.config",
    "load_agent_config": "fedge.api",
    "load_orchestrator_config": "fedge.api",
    "run_agent": "fedge.api",
    "start_agent": "fedge.api",
    "RunningAgent": "fedge.api",
    "AgentResult": "fedge.api",
    "run_orchestrator": "fedge.api",
    "run_history": "fedge.api",
    "RunResult": "fedge.api",
    "RoundSummary": "fedge.api",
    "FedgeError": "fedge.protocol.errors",
    "ConfigError": "fedge.protocol.errors",
    "BundleError": "fedge.protocol.errors",
}

__all__ = [
    "__version__",
    "export_bundle",
    "load_bundle",
    "pack_bundle",
    "Bundle",
    "write_keypair",
    "AgentConfig",
    "OrchestratorConfig",
    "load_agent_config",
    "load_orchestrator_config",
    "run_agent",
    "start_agent",
    "RunningAgent",
    "AgentResult",
    "run_orchestrator",
    "run_history",
    "RunResult",
    "RoundSummary",
    "FedgeError",
    "ConfigError",
    "BundleError",
]  # the names of _EXPORTS (a test keeps the two equal)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fedge' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:  # what type checkers and IDEs see; never executed
    from fedge.agent.config import AgentConfig
    from fedge.api import (
        AgentResult,
        RoundSummary,
        RunningAgent,
        RunResult,
        load_agent_config,
        load_orchestrator_config,
        run_agent,
        run_history,
        run_orchestrator,
        start_agent,
    )
    from fedge.exporter.export import export_bundle
    from fedge.orchestrator.config import OrchestratorConfig
    from fedge.protocol.bundle import Bundle, load_bundle, pack_bundle
    from fedge.protocol.errors import BundleError, ConfigError, FedgeError
    from fedge.protocol.signing import write_keypair
