"""``fedge data check``: what the agent would train on, and the first problems, read-only.

The file's tables, columns and declared types come from sqlite-utils' introspection and are
shown in the report and in the problems, so a wrong name in the config is fixed at a glance.
"""

from __future__ import annotations

import fnmatch
import sqlite3
from collections import Counter
from dataclasses import dataclass, field

from sqlite_utils import Database

from fedge.protocol.data_contract import check_samples
from fedge.protocol.manifest import Manifest
from fedge.protocol.sqlite_samples import (
    DataError,
    DataSource,
    Samples,
    _connect_read_only,
    read_samples,
    resolve_feature_columns,
    split_train_validation,
)

MAX_PROBLEMS = 10
MAX_LABELS = 50  # label values shown in the histogram
MAX_LISTED_COLUMNS = 24  # wider tables (64 pixel columns) are listed up to here, then counted


def describe_columns(columns: list[tuple[str, str]]) -> str:
    """``id INTEGER, f0 REAL, ...``: names with their declared types, long lists shortened."""
    shown = [f"{name} {ctype}".rstrip() for name, ctype in columns[:MAX_LISTED_COLUMNS]]
    more = len(columns) - len(shown)
    return ", ".join(shown) + (f", ... ({more} more)" if more > 0 else "") or "(none)"


def _schema(db: Database, src: DataSource) -> list[tuple[str, str]]:
    """(name, declared type) of the source's columns; a DataError naming the tables if the
    configured table does not exist, or the SQL error if the query does not run."""
    if src.query:
        try:
            cur = db.execute(f"SELECT * FROM ({src.query}) LIMIT 0")
        except sqlite3.DatabaseError as exc:
            raise DataError(f"data query failed: {exc}; query was: {src.query}") from None
        return [(d[0], "") for d in cur.description]
    names = db.table_names() + db.view_names()
    if src.table not in names:
        raise DataError(
            f"table '{src.table}' not found in {src.path}; tables are: "
            f"{', '.join(names) or '(none)'}"
        )
    return [(c.name, c.type or "ANY") for c in db[src.table].columns]


@dataclass
class DataReport:
    source: str
    tables: list[str] = field(default_factory=list)  # tables and views in the file
    columns: str = ""  # the source's columns with their declared types
    rows_total: int | None = None  # rows in the table (None for a query source)
    rows_selected: int = 0  # rows the agent reads (after `where`)
    features: str = ""
    labels: dict[str, int] = field(default_factory=dict)
    train: int = 0
    validation: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        out = [f"source:      {self.source}"]
        if self.tables:
            out.append(f"tables:      {', '.join(self.tables)}")
        if self.columns:
            out.append(f"columns:     {self.columns}")
        if self.rows_total is not None:
            out.append(
                f"rows:        {self.rows_total} in the table, {self.rows_selected} selected"
            )
        else:
            out.append(f"rows:        {self.rows_selected} selected")
        if self.features:
            out.append(f"features:    {self.features}")
        if self.labels:
            hist = ", ".join(f"{k}: {v}" for k, v in self.labels.items())
            out.append(f"labels:      {hist}")
        out.append(f"split:       {self.train} train, {self.validation} validation")
        if self.problems:
            out.append(f"problems ({len(self.problems)}):")
            out.extend(f"  - {p}" for p in self.problems)
        else:
            out.append("problems:    none")
        return out


def _null_scan(
    conn: sqlite3.Connection, src: DataSource, columns: list[str], described: str
) -> list[str]:
    """Rows with a NULL label or feature; unknown feature or blob columns by name (for each
    ``[data.inputs.NAME]`` of a model with several inputs, each problem naming the input)."""
    if src.inputs:
        problems: list[str] = []
        for name in src.inputs:
            for problem in _null_scan(conn, src.for_input(name), columns, described):
                if " rows have a NULL label in column " in problem:  # the same for every input
                    if problem not in problems:
                        problems.append(problem)
                else:
                    problems.append(f"data.inputs.{name}: {problem}")
        return problems[:MAX_PROBLEMS]
    source = f"({src.query})" if src.query else f'"{src.table}"'
    where = f"({src.where}) AND " if src.where else ""
    where_from = f"table '{src.table}'" if not src.query else "the query"
    problems = []
    if src.blob_column and src.blob_column not in columns:
        return [
            f"{where_from} has no column '{src.blob_column}' (the feature blob); "
            f"columns are: {described}"
        ]
    unmatched = [
        p
        for p in src.features
        if not any(fnmatch.fnmatchcase(c, p) and c != src.label for c in columns)
    ]
    if not src.blob_column and unmatched:
        return [
            f"{where_from} has no column matching the feature pattern "
            f"{', '.join(repr(p) for p in unmatched)}; columns are: {described}"
        ]
    try:
        feats = [src.blob_column] if src.blob_column else resolve_feature_columns(columns, src)
    except DataError as exc:
        return [str(exc)]
    for col in [src.label, *feats]:
        if col not in columns:
            continue
        sql = f'SELECT COUNT(*) FROM {source} WHERE {where}"{col}" IS NULL'
        try:
            (n,) = conn.execute(sql).fetchone()
        except sqlite3.DatabaseError as exc:
            return [f"reading the data failed: {exc}; SQL was: {sql}"]
        if n:
            what = "label" if col == src.label else "feature"
            problems.append(f"{n} rows have a NULL {what} in column '{col}'")
        if len(problems) >= MAX_PROBLEMS:
            break
    return problems


def check_data(
    src: DataSource,
    *,
    validation_fraction: float = 0.1,
    expected_features: int | None = None,
    manifest: Manifest | None = None,
) -> DataReport:
    """Count, histogram and split the samples as the agent would; collect problems, never raise
    for the data itself (only a missing file or table ends the check early, as a problem).

    With the bundle's ``manifest``, the rows are also checked against the model
    (``fedge.protocol.data_contract``): labels in the task's range, the input's feature count
    and dtype."""
    report = DataReport(source=f"{src.path} ({'query' if src.query else 'table ' + src.table})")
    try:
        conn = _connect_read_only(src.path)
    except DataError as exc:
        report.problems.append(str(exc))
        return report
    try:
        db = Database(conn, recursive_triggers=False, execute_plugins=False)
        try:
            report.tables = db.table_names() + db.view_names()
            schema = _schema(db, src)
        except DataError as exc:
            report.problems.append(str(exc))
            return report
        except sqlite3.DatabaseError as exc:
            report.problems.append(f"data file {src.path} cannot be read: {exc}")
            return report
        columns = [name for name, _ in schema]
        report.columns = describe_columns(schema)
        where_from = f"table '{src.table}'" if not src.query else "the query"
        if src.label not in columns:
            report.problems.append(
                f"{where_from} has no column '{src.label}' (the label); columns are: "
                f"{report.columns}"
            )
        if not src.query:
            report.rows_total = db[src.table].count
        source = f"({src.query})" if src.query else f'"{src.table}"'
        where = f" WHERE {src.where}" if src.where else ""
        try:
            (report.rows_selected,) = conn.execute(
                f"SELECT COUNT(*) FROM {source}{where}"
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            report.problems.append(f"the row filter `where` failed: {exc}")
            return report
        report.problems.extend(_null_scan(conn, src, columns, report.columns))
    finally:
        conn.close()
    if report.problems:
        return report
    try:
        samples = read_samples(
            src, expected_features=expected_features, dtype=None if manifest else "float32"
        )
    except DataError as exc:
        report.problems.append(str(exc))
        return report
    report.rows_selected = len(samples)
    if len(samples) == 0:
        report.problems.append("no rows match the data source (check `table`/`query`/`where`)")
        return report
    report.features = _features_line(samples, src, manifest)
    if manifest is not None:
        report.problems.extend(check_samples(samples, manifest, src)[:MAX_PROBLEMS])
        if manifest.task.kind == "regression":  # a histogram of real values says nothing
            report.labels = _label_summary(samples.y)
    counts = Counter(samples.y.tolist())
    if not report.labels:
        report.labels = {str(k): counts[k] for k in sorted(counts, key=str)[:MAX_LABELS]}
    train, val = split_train_validation(samples, validation_fraction, seed=0)
    report.train, report.validation = len(train), len(val)
    if len(counts) < 2:
        report.problems.append(f"only one label value ({next(iter(counts))}) in the data")
    return report


def _features_line(samples: Samples, src: DataSource, manifest: Manifest | None) -> str:
    """``[3] float32 per sample (columns a, b, c)``; with several inputs, one entry each:
    ``tokens [16] int64 (blob ids); mask [16] float32 (columns m0, ..., m15)``."""
    dtypes = {s.name: s.dtype for s in manifest.inputs} if manifest else {}
    if not samples.input_names:
        dtype = manifest.input.dtype if manifest else "float32"
        line = f"{list(samples.array.shape[1:])} {dtype} per sample"
        if samples.feature_columns and not src.blob_column:
            line += f" (columns {_listed(samples.feature_columns)})"
        return line
    parts = []
    for name in samples.input_names:
        one, part = samples.input(name), src.for_input(name)
        where = (
            f"blob {part.blob_column}"
            if part.blob_column
            else f"columns {_listed(one.feature_columns)}"
        )
        parts.append(f"{name} {list(one.array.shape[1:])} {dtypes.get(name, 'float32')} ({where})")
    return "; ".join(parts) + " per sample"


def _listed(names: tuple[str, ...]) -> str:
    shown = ", ".join(names[:6])
    return shown + (f", ... ({len(names)} in all)" if len(names) > 6 else "")


def _label_summary(y: object) -> dict[str, int]:
    """min/max of real-valued labels (regression), shown instead of a histogram."""
    import numpy as np

    try:
        values = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError):
        return {}
    finite = values[np.isfinite(values)]
    if not len(finite):
        return {}
    return {f"min {finite.min():.4g}, max {finite.max():.4g}, rows": len(values)}
