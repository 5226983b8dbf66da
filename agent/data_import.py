"""``fedge data import``: load a CSV/TSV, JSON or JSON-lines file into the device's SQLite table.

sqlite-utils does the parsing (``rows_from_file``), the type detection (``TypeTracker`` for
CSV's strings, ``suggest_column_types`` for JSON's typed values) and the table creation. The
whole import is one transaction: a bad row leaves the table as it was. The file is read twice
(CSV: once to detect types and validate, once to insert), so nothing is written for a file that
fails half-way and memory stays flat for large CSVs.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlite_utils import Database, suggest_column_types
from sqlite_utils.utils import Format, RowError, TypeTracker, rows_from_file

from fedge.protocol.sqlite_db import DatabaseError, database_errors
from fedge.protocol.sqlite_samples import DataError

from .data_check import describe_columns

log = logging.getLogger(__name__)

CSV_TYPES: dict[str, type] = {"integer": int, "float": float, "text": str}
JSON_SUFFIXES = (".json",)
JSON_LINES_SUFFIXES = (".jsonl", ".ndjson")


class DataImportError(DatabaseError):
    """The device's data file cannot be written while importing (locked, damaged, disk full)."""


@dataclass
class ImportResult:
    rows: int
    table: str
    database: Path
    format: str  # csv | tsv | json | jsonl
    created: bool  # the table was created (or re-created with --replace)
    columns: list[tuple[str, str]]  # the table's columns and declared types after the import

    def summary(self) -> str:
        verb = "into new table" if self.created else "into table"
        return (
            f"Imported {self.rows} rows ({self.format}) {verb} '{self.table}' of {self.database}; "
            f"columns: {describe_columns(self.columns)}"
        )


def _format_of(path: Path) -> Format:
    """JSON-lines by suffix or content; JSON by suffix or a leading ``[``/``{``; else CSV/TSV."""
    if path.suffix.lower() in JSON_LINES_SUFFIXES:
        return Format.NL
    with path.open("rb") as f:
        head = f.read(4096).lstrip()
    if path.suffix.lower() in JSON_SUFFIXES or head[:1] in (b"[", b"{"):
        if head[:1] == b"{" and _is_json_lines(path):
            return Format.NL
        return Format.JSON
    return Format.TSV if path.suffix.lower() in (".tsv", ".tab") else Format.CSV


def _is_json_lines(path: Path) -> bool:
    """A file of several JSON objects, one per line (a single object is plain JSON)."""
    try:
        json.loads(path.read_bytes())
    except json.JSONDecodeError as exc:
        return exc.msg == "Extra data"
    return False


FORMAT_NAMES = {Format.CSV: "csv", Format.TSV: "tsv", Format.JSON: "json", Format.NL: "jsonl"}


def _csv_rows(path: Path, fmt: Format) -> Iterator[dict[str, Any]]:
    """The file's rows as dicts of strings, with errors that name the line."""
    dialect = csv.excel_tab if fmt == Format.TSV else None
    with path.open("rb") as f:
        try:
            rows, _ = rows_from_file(f, format=fmt, dialect=dialect)
            number = 0
            for number, row in enumerate(rows, start=1):
                missing = [k for k, v in row.items() if v is None]
                if missing:
                    raise DataError(
                        f"{path}: row {number} (after the header) has fewer values than the "
                        f"header; missing: {', '.join(missing)}"
                    )
                yield row
        except RowError as exc:
            raise DataError(
                f"{path}: row {number + 1} (after the header) has more values than the header "
                f"has columns ({str(exc)[:200]}); fix the file or its header"
            ) from None
        except csv.Error as exc:
            raise DataError(f"{path} is not valid CSV: {exc}") from None
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                "save it as UTF-8 CSV or JSON"
            ) from None


def _json_rows(path: Path, fmt: Format) -> list[dict[str, Any]]:
    with path.open("rb") as f:
        try:
            rows, _ = rows_from_file(f, format=fmt)
            rows = list(rows)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path} is not valid JSON{' lines' if fmt == Format.NL else ''}: {exc.msg} "
                f"at line {exc.lineno} column {exc.colno}"
            ) from None
        except UnicodeDecodeError as exc:
            raise DataError(f"{path} is not UTF-8 text ({exc.reason})") from None
        except Exception as exc:  # sqlite-utils' RowsFromFileBadJSON: not a list or object
            raise DataError(f"{path}: {exc}; expected a list of objects") from None
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataError(
                f"{path}: record {i} is {type(row).__name__}, not an object; expected one object "
                'per sample, e.g. {"f0": 0.5, "label": 1}'
            )
    return rows


def _scan_csv(path: Path, fmt: Format) -> tuple[int, list[str], dict[str, str]]:
    """Validate the whole CSV, count its rows, return (rows, columns, detected types)."""
    tracker = TypeTracker()
    count = 0
    columns: list[str] = []
    for row in tracker.wrap(_csv_rows(path, fmt)):
        if not columns:
            columns = list(row)
        count += 1
    return count, columns, tracker.types


def _convert(rows: Iterable[dict[str, Any]], types: dict[str, str]) -> Iterator[dict[str, Any]]:
    """CSV strings to the detected types; an empty cell is NULL."""
    casts = {k: CSV_TYPES[t] for k, t in types.items()}
    for row in rows:
        yield {k: (None if v == "" else casts.get(k, str)(v)) for k, v in row.items()}


def import_file(
    source: str | Path, database: str | Path, table: str, *, replace: bool = False
) -> ImportResult:
    """Load ``source`` into ``table`` of ``database`` (created if missing): appended to an
    existing table whose columns it must fit, or (``replace``) replacing the table."""
    src = Path(source)
    if not src.is_file():
        raise DataError(f"input file {src} does not exist")
    with src.open("rb") as f:
        blank = not f.read(4096).strip()
    if blank:
        raise DataError(f"input file {src} is empty: nothing to import")
    db_path = Path(database)
    if not db_path.parent.is_dir():
        raise DataError(
            f"the directory of the data file {db_path} does not exist; create it or fix data.path"
        )
    fmt = _format_of(src)
    if fmt in (Format.CSV, Format.TSV):
        count, columns, types = _scan_csv(src, fmt)
        if count == 0:
            raise DataError(f"{src} has a header but no rows: nothing to import")
        column_types: dict[str, type] = {c: CSV_TYPES[types.get(c, "text")] for c in columns}
        rows: Iterable[dict[str, Any]] = _convert(_csv_rows(src, fmt), types)
    else:
        records = _json_rows(src, fmt)
        if not records:
            raise DataError(f"{src} holds no records: nothing to import")
        column_types = suggest_column_types(records)
        columns = list(column_types)
        count, rows = len(records), records

    with database_errors(db_path, DataImportError, "importing into"):
        db = Database(db_path, recursive_triggers=False, execute_plugins=False)
        try:
            if table in db.view_names():
                raise DataError(f"'{table}' in {db_path} is a view; import into a table")
            target = db.table(table)
            exists = target.exists()
            if exists and not replace:
                have = [(c.name, c.type) for c in target.columns]
                extra = [c for c in columns if c not in dict(have)]
                if extra:
                    raise DataError(
                        f"table '{table}' of {db_path} has no column "
                        f"{', '.join(repr(c) for c in extra)}; columns are: "
                        f"{describe_columns(have)}. "
                        "Rename the file's columns, or pass --replace to recreate the table"
                    )
            created = replace or not exists
            with db.atomic():
                if exists and replace:
                    target.drop()
                if created:
                    target.create(column_types)
                target.insert_all(rows, batch_size=500)
            result = ImportResult(
                rows=count,
                table=table,
                database=db_path,
                format=FORMAT_NAMES[fmt],
                created=created,
                columns=[(c.name, c.type) for c in target.columns],
            )
        except (ValueError, TypeError) as exc:  # a value that does not fit its detected type
            raise DataError(
                f"{src}: cannot convert a value ({exc}); nothing was imported"
            ) from None
        finally:
            db.close()
    log.debug("imported %d rows from %s into %s table %s", count, src, db_path, table)
    return result
