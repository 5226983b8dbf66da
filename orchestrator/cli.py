"""Orchestrator commands: ``orchestrator``, ``status``, ``history``, ``plot``, ``dashboard``,
``model export``.

Thin: each parses its arguments, calls one library function and prints the result.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal

log = logging.getLogger(__name__)

RAW = argparse.RawDescriptionHelpFormatter

EXAMPLE = """Example:
  fedge orchestrator --config orch.toml
  fedge orchestrator --config orch.toml --set rounds.rounds=20 --set strategy=fedadam
  fedge orchestrator --config orch.toml --continue --set rounds.rounds=30   # 10 more rounds
  fedge orchestrator --role site --config site.toml   # a site aggregator (docs/sites.md)

Every setting can also come from the environment: FEDGE_MQTT_PASSWORD=... for mqtt.password."""


DASHBOARD_EXAMPLE = """Example:
  fedge dashboard --database orchestrator.db
  (then open http://127.0.0.1:8390/)

  fedge dashboard --database orchestrator.db --host 0.0.0.0 --port 8390
  (prints http://0.0.0.0:8390/?token=...: open it with this machine's name instead of 0.0.0.0)"""


def _db_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--database", default="orchestrator.db", help="orchestrator SQLite file")
    p.add_argument("--run", default=None, help="run id (default: the latest run)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "orchestrator",
        help="run the orchestrator: register devices, schedule rounds, aggregate deltas",
        description="Run federated rounds until the configured number of model versions exists.",
        epilog=EXAMPLE,
        formatter_class=RAW,
    )
    p.add_argument("--config", help="orchestrator TOML file")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting"
    )
    p.add_argument(
        "--continue",
        dest="continue_run",
        action="store_true",
        help="train the latest finished run of this bundle on from its last version, up to "
        "rounds.rounds versions (same as --set continue_run=true)",
    )
    p.add_argument(
        "--role",
        choices=["central", "site"],
        default="central",
        help="site: a site aggregator beside a site's own broker, one device of the central "
        "federation whose rounds are site rounds of its devices (docs/sites.md)",
    )
    p.set_defaults(func=run_orchestrator)

    p = sub.add_parser(
        "status",
        help="show the current run, open round, devices and last metrics",
        description="Read the orchestrator database and show where the run stands.",
        epilog="Example:\n  fedge status --database orchestrator.db\n"
        "  fedge status --database orchestrator.db --all   # also devices of earlier runs",
        formatter_class=RAW,
    )
    _db_args(p)
    p.add_argument(
        "--all",
        action="store_true",
        help="also list devices that went offline before this run started",
    )
    p.set_defaults(func=show_status)

    p = sub.add_parser(
        "history",
        help="table of a run's rounds",
        description="One line per round: state, reports/goal, rejections, late and duplicate "
        "updates, bytes received, duration and metrics.",
        epilog="Example:\n  fedge history --database orchestrator.db",
        formatter_class=RAW,
    )
    _db_args(p)
    p.set_defaults(func=show_history)

    p = sub.add_parser(
        "plot",
        help="PNG of a run's metrics per round",
        description="Plot test/validation accuracy and losses per committed round.",
        epilog="Example:\n  fedge plot --database orchestrator.db --out accuracy.png",
        formatter_class=RAW,
    )
    _db_args(p)
    p.add_argument("--out", default="fedge-run.png", help="PNG file to write")
    p.set_defaults(func=make_plot)

    p = sub.add_parser(
        "dashboard",
        help="a live, read-only web page of the run: fleet, round, curves, refusals, bytes",
        description="Serve a read-only web page of an orchestrator database that updates while "
        "the run goes on. It opens the database read-only and never blocks the orchestrator. "
        "On 127.0.0.1 (the default) it needs no token; bound to any other address it requires "
        "one on every request (generated and printed unless given).",
        epilog=DASHBOARD_EXAMPLE,
        formatter_class=RAW,
    )
    _db_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8390, help="port (default 8390; 0: any free one)")
    p.add_argument(
        "--token",
        default=os.environ.get("FEDGE_DASHBOARD_TOKEN"),
        help="require this token (also FEDGE_DASHBOARD_TOKEN); default: none on loopback, "
        "a generated one elsewhere",
    )
    p.add_argument(
        "--interval", type=float, default=2.0, help="seconds between page updates (default 2)"
    )
    p.set_defaults(func=run_dashboard)

    p = sub.add_parser(
        "model",
        help="model versions: export one as an inference ONNX file",
        description="Work with the model versions stored by the orchestrator.",
        epilog="Example:\n  fedge model export --database orchestrator.db --bundle bundle/ "
        "--version 10 --out model.onnx",
        formatter_class=RAW,
    )
    msub = p.add_subparsers(dest="model_command", metavar="COMMAND", required=True)
    e = msub.add_parser(
        "export",
        help="write model version N as an inference ONNX file",
        description="The bundle's inference graph with the stored parameters of version N.",
        epilog="Example:\n  fedge model export --database orchestrator.db --bundle bundle/ "
        "--version 10 --out model.onnx",
        formatter_class=RAW,
    )
    _db_args(e)
    e.add_argument("--bundle", required=True, help="the bundle the run was started with")
    e.add_argument("--version", type=int, default=-1, help="model version (default: latest)")
    e.add_argument("--out", required=True, help="ONNX file to write")
    e.set_defaults(func=export_model)


def run_orchestrator(args: argparse.Namespace) -> int:
    from fedge.protocol.mqtt_link import MqttLink
    from fedge.protocol.settings import load_settings

    from .buffered import create_orchestrator
    from .config import OrchestratorConfig

    if getattr(args, "role", "central") == "site":
        return run_site(args)
    config = load_settings(OrchestratorConfig, args.config, overrides=args.set)
    config.continue_run = config.continue_run or args.continue_run
    config.buffered.validate()
    queue_bytes = config.limits.receive_queue_mib << 20  # bounded: see docs/security.md
    link = MqttLink(config.mqtt, client_id=config.client_id, max_queued_bytes=queue_bytes)
    orch = create_orchestrator(config, transport=link)
    signal.signal(signal.SIGTERM, lambda *_: orch.stop())
    log.info(
        "orchestrator (%s) for federation %s: bundle %s, database %s, broker %s, strategy %s",
        config.mode,
        config.federation,
        orch.bundle.content_hash[:12],
        config.database,
        config.mqtt.url,
        orch.strategy.describe(),
    )
    try:
        orch.run()
    except KeyboardInterrupt:
        orch.stop()
    return 0


def run_site(args: argparse.Namespace) -> int:
    from fedge.protocol.settings import load_settings

    from .site_aggregator import SiteAggregator
    from .site_config import SiteConfig

    config = load_settings(SiteConfig, args.config, overrides=args.set)
    site = SiteAggregator(config)
    signal.signal(signal.SIGTERM, lambda *_: site.stop())
    log.info(
        "site aggregator %s of federation %s: its devices' federation %s, bundle %s, broker %s",
        config.site.id,
        config.site.federation,
        config.federation,
        site.orch.bundle.content_hash[:12],
        config.mqtt.url,
    )
    try:
        site.run()
    except KeyboardInterrupt:
        site.stop()
    return 0


def show_status(args: argparse.Namespace) -> int:
    from .history import open_store, pick_run, status_text

    store = open_store(args.database)
    print(status_text(store, pick_run(store, args.run), all_devices=args.all))
    return 0


def _async_run(store, run_id: str) -> bool:
    from .buffered_views import is_async

    return is_async(store, run_id)


def show_history(args: argparse.Namespace) -> int:
    from .history import history_table, open_store, pick_run

    store = open_store(args.database)
    run_id = pick_run(store, args.run)
    print(f"run {run_id}")
    if _async_run(store, run_id):
        from .buffered_views import async_history_table

        print(async_history_table(store, run_id))
        return 0
    print(history_table(store.rounds(run_id)))
    return 0


def make_plot(args: argparse.Namespace) -> int:
    from .history import open_store, pick_run
    from .plotting import plot_rounds

    store = open_store(args.database)
    run_id = pick_run(store, args.run)
    if _async_run(store, run_id):
        from .buffered_views import plot_async

        print(f"Wrote {plot_async(store, run_id, args.out, title=f'fedge async run {run_id}')}")
        return 0
    print(f"Wrote {plot_rounds(store.rounds(run_id), args.out, title=f'fedge run {run_id}')}")
    return 0


def run_dashboard(args: argparse.Namespace) -> int:
    from .dashboard.serve import DashboardError, resolve_token, serve
    from .history import open_store

    if not 0.2 <= args.interval <= 3600:
        raise DashboardError(f"--interval {args.interval} must be between 0.2 and 3600 seconds")
    if not 0 <= args.port <= 65535:
        raise DashboardError(f"--port {args.port} must be between 0 and 65535")
    open_store(args.database).close()  # a clear error now if the file is missing or not fedge's
    token, generated = resolve_token(args.host, args.token)

    def listening(port: int) -> None:
        host = f"[{args.host}]" if ":" in args.host else args.host
        url = f"http://{host}:{port}/" + (f"?token={token}" if token else "")
        print(f"Dashboard of {args.database}: {url}", flush=True)
        if generated:
            print(
                "A token was generated for this non-loopback address; pass --token (or "
                "FEDGE_DASHBOARD_TOKEN) to keep the same one across restarts.",
                flush=True,
            )

    serve(
        args.database,
        host=args.host,
        port=args.port,
        token=token,
        run_id=args.run,
        poll_seconds=args.interval,
        on_listening=listening,
    )
    return 0


def export_model(args: argparse.Namespace) -> int:
    from fedge.protocol.bundle import load_bundle

    from .history import open_store, pick_run
    from .model_export import export_version

    store = open_store(args.database)
    run_id = pick_run(store, args.run)
    version = args.version
    if version < 0:
        version = store.latest_version(run_id)[0]
    out = export_version(store, run_id, version, load_bundle(args.bundle), args.out)
    raw = "; takes raw features (standardized inside)" if store.standardization(run_id) else ""
    print(f"Wrote {out}: run {run_id}, model version {version}{raw}")
    return 0
