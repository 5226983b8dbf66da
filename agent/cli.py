"""``fedge agent``: run the device daemon (thin: parse, load config, run)."""

from __future__ import annotations

import argparse
import logging
import signal

log = logging.getLogger(__name__)

EXAMPLE = """Example:
  fedge agent --config agent.toml
  fedge agent --config agent.toml --set mqtt.url=mqtt://broker.local:1883 --set data.path=/data/readings.db

Every setting can also come from the environment: FEDGE_MQTT_PASSWORD=... for mqtt.password."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "agent",
        help="run the device agent: train on local SQLite data when idle, send deltas",
        description="Run the fedge agent on this device until stopped (Ctrl-C or SIGTERM).",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="agent TOML file")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting"
    )
    p.add_argument(
        "--max-rounds", type=int, default=None, help="exit after this many trained rounds"
    )
    p.set_defaults(func=run_agent)


def load_config(args: argparse.Namespace):
    from fedge.protocol.settings import load_settings

    from .config import AgentConfig

    return load_settings(AgentConfig, args.config, overrides=args.set)


def run_agent(args: argparse.Namespace) -> int:
    from .daemon import Agent

    config = load_config(args)
    agent = Agent(config)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    log.info(
        "agent %s: backend %s, data %s, broker %s",
        config.id,
        agent.backend.name,
        config.data.path,
        config.mqtt.url,
    )
    try:
        agent.run(max_rounds=args.max_rounds)
    except KeyboardInterrupt:
        agent.stop()
    return 0
