"""``fedge demo``: run a whole federation on this machine."""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import TYPE_CHECKING

from fedge.protocol.errors import FedgeError

if TYPE_CHECKING:
    from .run import DemoOptions

EXAMPLE = """Example:
  fedge demo                         # 5 devices, 10 rounds, embedded broker
  fedge demo --devices 3 --rounds 3  # quicker
  fedge demo --async                 # buffered asynchronous rounds (FedBuff)
  fedge demo --broker mqtt://127.0.0.1:1883 --protocol 5   # a real (anonymous) Mosquitto"""


def register(sub: argparse._SubParsersAction) -> None:
    from .run import DemoOptions

    d = DemoOptions()
    p = sub.add_parser(
        "demo",
        help="run a small federation on this machine and show it learning",
        description="Split scikit-learn's digits over several SQLite 'devices', export a PyTorch "
        "model, and train it federated: orchestrator and agents as real processes over MQTT.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--devices",
        type=int,
        default=d.devices,
        help="number of agent processes (default %(default)s)",
    )
    p.add_argument(
        "--rounds", type=int, default=d.rounds, help="federated rounds (default %(default)s)"
    )
    p.add_argument(
        "--dataset",
        default=d.dataset,
        choices=["digits", "wine", "breast_cancer"],
        help="scikit-learn data set; wine and breast_cancer are standardized (default %(default)s)",
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=d.alpha,
        help="Dirichlet non-IID concentration (default %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help="seed of the data split and device selection (default %(default)s)",
    )
    p.add_argument(
        "--local-epochs",
        type=int,
        default=d.local_epochs,
        help="epochs each device trains per round (default %(default)s)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help="local batch size (default %(default)s)",
    )
    p.add_argument(
        "--optimizer",
        default=d.optimizer,
        choices=["adamw", "sgd"],
        help="the bundle's local optimizer (default %(default)s)",
    )
    p.add_argument(
        "--lr", type=float, default=d.lr, help="local learning rate (default %(default)s)"
    )
    p.add_argument(
        "--hidden", type=int, default=d.hidden, help="hidden units of the MLP (default %(default)s)"
    )
    p.add_argument("--out", default=d.out, help="working folder (default %(default)s)")
    p.add_argument(
        "--broker",
        default=None,
        help="mqtt://host:port of a running broker instead of the embedded one",
    )
    p.add_argument(
        "--protocol",
        default=d.protocol,
        choices=["3.1.1", "5"],
        help="MQTT version (default %(default)s)",
    )
    p.add_argument(
        "--min-accuracy", type=float, default=0.0, help="exit 1 if the final test accuracy is lower"
    )
    p.add_argument(
        "--async",
        dest="asynchronous",
        action="store_true",
        help="buffered asynchronous rounds (FedBuff): no round waits for slow devices",
    )
    p.set_defaults(func=run)


def options_from_args(args: argparse.Namespace) -> DemoOptions:
    """Every DemoOptions field that has a flag takes the flag's value (none is dropped)."""
    from .run import DemoOptions

    given = {f.name: getattr(args, f.name) for f in fields(DemoOptions) if hasattr(args, f.name)}
    return DemoOptions(**given)


def run(args: argparse.Namespace) -> int:
    import logging

    from .run import run_demo

    if not args.verbose:  # the demo prints its own progress; the processes' logs go to files
        logging.getLogger().setLevel(logging.WARNING)

    result = run_demo(options_from_args(args), echo=lambda s: print(s, flush=True))
    if not result.final_accuracy >= args.min_accuracy:
        raise FedgeError(
            f"final test accuracy {result.final_accuracy:.4f} is below --min-accuracy {args.min_accuracy}"
        )
    return 0
