"""``fedge data import``: thin CLI over :func:`fedge.agent.data_import.import_file`."""

from __future__ import annotations

import argparse

IMPORT_EXAMPLE = """Example:
  fedge data import readings.csv --config agent.toml

  Imported 412 rows (csv) into new table 'samples' of /data/readings.db; columns: f0 REAL,
  f1 REAL, ..., label INTEGER

  fedge data import more.jsonl --config agent.toml          # append rows (JSON lines)
  fedge data import readings.csv --config agent.toml --replace --table samples

CSV/TSV (header row), JSON (a list of objects) or JSON lines (one object per line). Column types
are detected (integer, float, text). The file goes into the agent's `data.path`, table
`data.table` unless --table is given; rows are appended unless --replace. One transaction: a
file that fails leaves the table as it was. Check the result with `fedge data check`."""


def register_import(data_sub: argparse._SubParsersAction) -> None:
    """Add ``import`` under ``fedge data``."""
    p = data_sub.add_parser(
        "import",
        help="load a CSV or JSON(-lines) file into this device's SQLite data table",
        description="Load a CSV/TSV, JSON or JSON-lines file into the SQLite table the agent "
        "trains on (sqlite-utils detects the column types).",
        epilog=IMPORT_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", metavar="FILE", help="CSV, TSV, JSON or JSON-lines file")
    p.add_argument("--config", help="agent TOML file (its data.path and data.table)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting"
    )
    p.add_argument("--table", default=None, help="table to load (default: data.table)")
    p.add_argument(
        "--replace", action="store_true", help="drop and recreate the table instead of appending"
    )
    p.set_defaults(func=run_data_import)


def run_data_import(args: argparse.Namespace) -> int:
    from fedge.protocol.settings import load_settings

    from .config import AgentConfig
    from .data_import import import_file

    config = load_settings(AgentConfig, args.config, overrides=args.set)
    result = import_file(
        args.file, config.data.path, args.table or config.data.table, replace=args.replace
    )
    print(result.summary())
    return 0
