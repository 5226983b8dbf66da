"""``fedge orchestrator``: run rounds for a federation (thin: parse, load config, run)."""

from __future__ import annotations

import argparse
import logging
import signal

log = logging.getLogger(__name__)

EXAMPLE = """Example:
  fedge orchestrator --config orch.toml
  fedge orchestrator --config orch.toml --set rounds.rounds=20 --set rounds.min_devices=3

Every setting can also come from the environment: FEDGE_MQTT_PASSWORD=... for mqtt.password."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "orchestrator",
        help="run the orchestrator: register devices, schedule rounds, aggregate deltas",
        description="Run federated rounds until the configured number of model versions exists.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="orchestrator TOML file")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting"
    )
    p.set_defaults(func=run_orchestrator)


def run_orchestrator(args: argparse.Namespace) -> int:
    from fedge.protocol.settings import load_settings

    from .config import OrchestratorConfig
    from .server import Orchestrator

    config = load_settings(OrchestratorConfig, args.config, overrides=args.set)
    orch = Orchestrator(config)
    signal.signal(signal.SIGTERM, lambda *_: orch.stop())
    log.info(
        "orchestrator for federation %s: bundle %s, database %s, broker %s",
        config.federation,
        orch.bundle.content_hash[:12],
        config.database,
        config.mqtt.url,
    )
    try:
        orch.run()
    except KeyboardInterrupt:
        orch.stop()
    return 0
