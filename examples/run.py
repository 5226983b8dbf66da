"""Run the examples: ``python examples/run.py NAME [--rounds N]`` (or ``all``).

Each example prepares its data, exports its model with ``fedge export``, starts Mosquitto on
a free loopback port, the orchestrator and three agents (real ``fedge`` processes), runs its
rounds and prints the final metric against its baseline, bytes per round and wall time.

Example:
  python examples/run.py breast_cancer
  python examples/run.py sensor_cnn --rounds 3 --out /tmp/sensor
  python examples/run.py all --repeat 3 --table      # the table in examples/README.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

try:
    from runner import Example, ExampleResult, names, run_example

    from fedge.protocol.errors import FedgeError
except ImportError as exc:  # run with a Python that has no fedge (or no numpy, torch, ...)
    sys.exit(
        f"Error: {exc}. Run the examples with the project's environment: "
        "scripts/setup-venv.sh dev, then .venv/bin/python examples/run.py ..."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python examples/run.py",
        description=__doc__.split("\n\n")[1],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", help=f"an example ({', '.join(names())}) or all")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default: the example's)")
    parser.add_argument(
        "--out", type=Path, default=None, help="output directory (default: examples-out/NAME)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="run each example this many times")
    parser.add_argument("--table", action="store_true", help="end with a Markdown table (medians)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per federation")
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    chosen = names() if args.name == "all" else [args.name]
    results: dict[str, list[ExampleResult]] = {}
    try:
        for name in chosen:
            example = Example.load(name)
            for k in range(args.repeat):
                out = args.out or Path("examples-out") / name
                if len(chosen) > 1 and args.out:
                    out = args.out / name
                print(
                    f"== {example.title}"
                    + (f" (run {k + 1}/{args.repeat})" if args.repeat > 1 else "")
                )
                result = run_example(
                    example, out.resolve(), rounds=args.rounds, timeout=args.timeout
                )
                _print_result(result)
                results.setdefault(name, []).append(result)
    except FedgeError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if args.json:
        args.json.write_text(
            json.dumps({n: [r.as_dict() for r in rs] for n, rs in results.items()}, indent=2)
        )
    if args.table:
        print()
        print(markdown_table(results))
    return 0


def _print_result(r: ExampleResult) -> None:
    verdict = "beats" if r.beats_baseline else "does NOT beat"
    print()
    print(
        f"Result: {r.example}, {r.rounds} rounds: {r.metric} {r.value:.4f} "
        f"({verdict} the baseline {r.baseline:.4f}, {r.baseline_what})"
    )
    others = {k: v for k, v in r.report.final.items() if k.startswith("test_") and k != r.metric}
    if others:
        print("        also: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(others.items())))
    print(
        f"        {r.bytes_per_round:,.0f} B per round from 3 devices (model {r.model_bytes:,} B); "
        f"federation {r.federation_seconds:.1f} s, total {r.total_seconds:.1f} s "
        f"(export {r.export_seconds:.1f} s)"
    )
    print()


def markdown_table(results: dict[str, list[ExampleResult]]) -> str:
    """example -> rounds -> metric -> bytes per round -> wall time (medians over repeats)."""

    def med(rs: list[ExampleResult], key: str) -> float:
        return float(statistics.median(getattr(r, key) for r in rs))

    lines = [
        "| example | rounds | metric (baseline) | bytes per round (up, 3 devices) | "
        "wall time: federation / total |",
        "|---|---|---|---|---|",
    ]
    for name, rs in results.items():
        r = rs[0]
        lines.append(
            f"| {name} | {r.rounds} | {r.metric} {med(rs, 'value'):.4f} "
            f"({r.baseline_what} {r.baseline:.4f}) | {med(rs, 'bytes_per_round'):,.0f} | "
            f"{med(rs, 'federation_seconds'):.1f} s / {med(rs, 'total_seconds'):.1f} s |"
        )
    runs = {len(rs) for rs in results.values()}
    lines.append("")
    lines.append(f"Medians of {'/'.join(map(str, sorted(runs)))} run(s) per example.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
