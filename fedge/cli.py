"""The ``fedge`` command: one thin entry point; each part registers its own subcommands.

Library code raises ``FedgeError``; here it becomes one ``Error: ...`` line and exit code 1.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from fedge.logs import add_logging_flags, configure_logging
from fedge.protocol.errors import FedgeError

# Modules exposing ``register(subparsers)``; imported lazily so that `fedge agent` never
# imports torch (the exporter's commands import it only when they run).
COMMAND_MODULES = (
    "fedge.demo.cli",
    "fedge.exporter.cli",
    "fedge.agent.cli",
    "fedge.orchestrator.cli",
    "fedge.provision.cli",
)

log = logging.getLogger("fedge")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedge",
        description="Federated learning for edge devices over MQTT.",
        epilog="Example:\n  fedge demo --devices 5 --rounds 10",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(sub)
    for action in sub.choices.values():
        add_logging_flags(action)
    return parser


def _version() -> str:
    import fedge

    return f"fedge {fedge.__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    configure_logging(verbose=args.verbose, quiet=args.quiet, json_format=args.log_json)
    try:
        result = args.func(args)
    except FedgeError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
