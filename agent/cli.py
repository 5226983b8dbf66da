"""``fedge agent``: run the device daemon (thin: parse, load config, run)."""

from __future__ import annotations

import argparse
import logging
import signal

log = logging.getLogger(__name__)

EXAMPLE = """Example:
  fedge agent --config agent.toml
  fedge agent --config agent.toml --set mqtt.url=mqtt://broker.local:1883 --set data.path=/data/readings.db

Every setting can also come from the environment: FEDGE_MQTT_PASSWORD=... for mqtt.password.

The training rows: [data] in agent.toml (read-only SQLite; every key with examples: docs/data.md)
  path           the SQLite file (default data.db)
  table          table or view to read (default samples)
  query          a full SELECT instead of table (default none)
  features       feature columns, names or globs; globs sort naturally (default ["f*"])
  blob_column    features from one BLOB column instead (default none)
  blob_dtype     its little-endian type: float32, float64, uint8, int8, int32, int64 (default float32)
  blob_shape     one sample's shape, e.g. [1, 28, 28] (default [] = flat)
  label          the label column (default label)
  where          SQL condition selecting the rows (default none)
  feature_scale  multiply every feature, e.g. 0.003921569 = 1/255 (default 1.0)
  inputs         a model with several inputs (tokens + mask): one [data.inputs.NAME] table
                 per input with its features or blob_column/blob_dtype/blob_shape,
                 feature_scale (default {} = one input, from the keys above)
and at the top level:
  validation_fraction  rows held back from training in every round to measure the model
                       (default 0.1: a tenth of every device's rows; 0 = train on all)
For example, in agent.toml:
  validation_fraction = 0.1
  [data]
  path = "/var/lib/fedge/readings.db"
  table = "readings"
  features = ["temp", "humidity", "vibration"]
  label = "label"
  where = "taken_at > datetime('now', '-30 days')"

Check what the agent will read: fedge data check --config agent.toml"""


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
    _register_data(sub)


DATA_EXAMPLE = """Example:
  fedge data check --config agent.toml --bundle model.fedge

  source:      readings.db (table samples)
  rows:        412 in the table, 412 selected
  features:    [64] float32 per sample
  labels:      0: 40, 1: 45, 2: 38, ...
  split:       371 train, 41 validation
  problems:    none

Exit code 1 when there are problems. The database is opened read-only."""


def _register_data(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser(
        "data",
        help="inspect this device's training data (read-only)",
        description="Inspect the local SQLite data the agent trains on.",
        epilog=DATA_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data_sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    check = data_sub.add_parser(
        "check",
        help="row counts, label histogram, train/validation split and the first problems",
        description="Read the data source from the agent's config as the agent would; print "
        "row counts, the label histogram, the split sizes and the first problems.",
        epilog=DATA_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("--config", help="agent TOML file")
    check.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting"
    )
    check.add_argument(
        "--features", type=int, default=None, help="features per sample the model expects"
    )
    check.add_argument(
        "--bundle",
        default=None,
        help="also check the rows against this bundle: labels in the task's range, the "
        "input's feature count and dtype",
    )
    check.set_defaults(func=run_data_check)
    from .data_cli import register_import  # `fedge data import` (storage engineer's module)

    register_import(data_sub)


def run_data_check(args: argparse.Namespace) -> int:
    from .data_check import check_data

    config = load_config(args)
    manifest = None
    if args.bundle:
        from fedge.protocol.bundle import load_bundle

        manifest = load_bundle(args.bundle).manifest
    report = check_data(
        config.data,
        validation_fraction=config.validation_fraction,
        expected_features=args.features,
        manifest=manifest,
    )
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


def load_config(args: argparse.Namespace):
    from fedge.protocol.settings import load_settings

    from .config import AgentConfig

    return load_settings(AgentConfig, args.config, overrides=args.set)


def run_agent(args: argparse.Namespace) -> int:
    from fedge.protocol.mqtt_link import MqttLink

    from .backends import create_backend
    from .daemon import Agent
    from .eligibility import apply_process_limits
    from .status_message import offline_status

    config = load_config(args)
    apply_process_limits(config.nice)
    backend = create_backend(config.backend, threads=config.threads)
    link = MqttLink(config.mqtt, client_id=config.id, will=offline_status(config, backend.name))
    agent = Agent(config, transport=link, backend=backend)
    # SIGTERM (systemd stop, docker stop): finish the current batch, journal the round as
    # interrupted (trained again after the restart), say offline, exit 0
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    log.info(
        "agent %s: backend %s (%s), data %s, broker %s",
        config.id,
        agent.backend.name,
        agent.backend.runtime,
        config.data.path,
        config.mqtt.url,
    )
    try:
        agent.run(max_rounds=args.max_rounds)
    except KeyboardInterrupt:
        agent.stop()
    return 0
