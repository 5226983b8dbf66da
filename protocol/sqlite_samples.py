"""Read labelled samples from a user's SQLite file, read-only, with errors that name the fix.

Shared by agents (local training data) and the orchestrator (optional held-out test table).
Features come from numeric columns (listed, or matched by a glob such as ``f*``) or from one
BLOB column holding a little-endian array (float32, float64, uint8, int8, int32, int64) of a
declared shape. The file is opened with ``mode=ro``: fedge never writes to a user's database.
``read_samples`` gives float32 features by default; ``dtype=None`` keeps the stored values as
they are (column values as float64, which holds every int64 token id below 2**53 exactly; a
BLOB in its own dtype), for ``fedge.protocol.data_contract`` to check and cast to what the
bundle's input declares.
"""

from __future__ import annotations

import fnmatch
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FedgeError
from .sqlite_db import read_only_uri

BLOB_DTYPES = ("float32", "float64", "uint8", "int8", "int32", "int64")


class DataError(FedgeError):
    """Local data is missing, unreadable or does not match the configured schema."""


@dataclass
class DataSource:
    """Where the samples live and how to read them."""

    path: str
    table: str = "samples"
    query: str = ""  # a full SELECT instead of `table` (must return the configured columns)
    features: list[str] = field(default_factory=lambda: ["f*"])  # names or globs
    blob_column: str = ""  # if set, features come from this BLOB column
    blob_dtype: str = "float32"
    blob_shape: list[int] = field(default_factory=list)
    label: str = "label"
    where: str = ""  # optional SQL filter, e.g. "created_at > datetime('now', '-30 days')"
    feature_scale: float = 1.0  # multiply features (e.g. 1/255 for uint8 pixels)


@dataclass
class Samples:
    x: np.ndarray
    y: np.ndarray
    feature_columns: tuple[str, ...] = ()  # the columns the features came from, in order

    def __len__(self) -> int:
        return len(self.y)


def _connect_read_only(path: str) -> sqlite3.Connection:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file {path} does not exist: check `data.path` in the config")
    try:
        conn = sqlite3.connect(read_only_uri(p), uri=True)  # creates no -wal/-shm beside it
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
    except (sqlite3.DatabaseError, OSError) as exc:
        raise DataError(f"data file {path} is not a readable SQLite database: {exc}") from None
    return conn


def _columns(conn: sqlite3.Connection, src: DataSource) -> list[str]:
    if src.query:
        try:
            cur = conn.execute(f"SELECT * FROM ({src.query}) LIMIT 0")
        except sqlite3.DatabaseError as exc:
            raise DataError(f"data query failed: {exc}; query was: {src.query}") from None
        return [d[0] for d in cur.description]
    tables = [
        r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table','view')")
    ]
    if src.table not in tables:
        raise DataError(
            f"table '{src.table}' not found in {src.path}; tables are: {', '.join(tables) or '(none)'}"
        )
    return [r[1] for r in conn.execute(f'PRAGMA table_info("{src.table}")')]


def resolve_feature_columns(columns: list[str], src: DataSource) -> list[str]:
    """Expand the configured names/globs against the table's columns, in table order."""
    chosen: list[str] = []
    for pattern in src.features:
        matched = [c for c in columns if fnmatch.fnmatchcase(c, pattern) and c != src.label]
        if not matched:
            raise DataError(
                f"feature column '{pattern}' matches nothing in '{src.table or 'query'}'; "
                f"columns are: {', '.join(columns)}"
            )
        chosen.extend(c for c in matched if c not in chosen)
    # f2 before f10: sort globbed names naturally so the feature order is stable
    if any(ch in p for p in src.features for ch in "*?["):
        chosen.sort(
            key=lambda c: (c.rstrip("0123456789"), int(c[len(c.rstrip("0123456789")) :] or -1))
        )
    return chosen


def read_samples(
    src: DataSource, *, expected_features: int | None = None, dtype: str | None = "float32"
) -> Samples:
    """Load every matching row as (features [n, ...], labels [n]); features in ``dtype``
    (``None``: as stored, see the module docstring)."""
    conn = _connect_read_only(src.path)
    try:
        columns = _columns(conn, src)
        if src.label not in columns:
            raise DataError(
                f"table '{src.table or 'query'}' has no label column '{src.label}'; "
                f"columns are: {', '.join(columns)}"
            )
        source = f"({src.query})" if src.query else f'"{src.table}"'
        where = f" WHERE {src.where}" if src.where else ""
        if src.blob_column:
            if src.blob_column not in columns:
                raise DataError(
                    f"blob column '{src.blob_column}' not found; columns are: {', '.join(columns)}"
                )
            sql = f'SELECT "{src.blob_column}", "{src.label}" FROM {source}{where}'
            feats = [src.blob_column]
        else:
            feats = resolve_feature_columns(columns, src)
            cols = ", ".join(f'"{c}"' for c in feats)
            sql = f'SELECT {cols}, "{src.label}" FROM {source}{where}'
        try:
            rows = conn.execute(sql).fetchall()
        except sqlite3.DatabaseError as exc:
            raise DataError(f"reading samples failed: {exc}; SQL was: {sql}") from None
    finally:
        conn.close()
    if not rows:
        return Samples(
            np.zeros((0, expected_features or 0), dtype or np.float32),
            np.zeros((0,), np.int64),
            tuple(feats),
        )
    if src.blob_column:
        x = _decode_blobs(rows, src)
    else:
        try:
            x = np.array([r[:-1] for r in rows], dtype=np.float64)
        except (TypeError, ValueError):
            bad = next(
                i
                for i, r in enumerate(rows)
                if any(not isinstance(v, (int, float)) for v in r[:-1])
            )
            raise DataError(
                f"row {bad + 1} has a non-numeric or NULL feature: {rows[bad][:-1][:8]}..."
            ) from None
    if x.dtype.kind == "f" and np.isnan(x).any():
        bad = int(np.argwhere(np.isnan(x).reshape(len(x), -1).any(axis=1))[0][0])
        raise DataError(
            f"row {bad + 1} has a NULL/NaN feature; clean the data or filter it with `where`"
        )
    labels = [r[-1] for r in rows]
    if any(v is None for v in labels):
        bad = labels.index(None)
        raise DataError(f"row {bad + 1} has a NULL label in column '{src.label}'")
    y = np.array(labels)
    if expected_features is not None and x.reshape(len(x), -1).shape[1] != expected_features:
        raise DataError(
            f"the model expects {expected_features} features per sample but the data has "
            f"{x.reshape(len(x), -1).shape[1]}"
        )
    if src.feature_scale != 1.0:
        x = x * src.feature_scale
    return Samples(x.astype(dtype, copy=False) if dtype else x, y, tuple(feats))


def _decode_blobs(rows: list[tuple[Any, ...]], src: DataSource) -> np.ndarray:
    if src.blob_dtype not in BLOB_DTYPES:
        raise DataError(
            f"blob_dtype {src.blob_dtype!r} unsupported; use one of {', '.join(BLOB_DTYPES)}"
        )
    dtype = np.dtype(src.blob_dtype).newbyteorder("<")
    shape = tuple(src.blob_shape)
    size = int(np.prod(shape)) if shape else None
    out = []
    for i, (blob, _label) in enumerate(rows):
        if not isinstance(blob, bytes):
            raise DataError(f"row {i + 1}: column '{src.blob_column}' is not a BLOB")
        arr = np.frombuffer(blob, dtype=dtype)
        if size is not None and arr.size != size:
            raise DataError(
                f"row {i + 1}: blob holds {arr.size} {dtype.name} values, expected {size} for shape {list(shape)}"
            )
        out.append(arr.reshape(shape) if shape else arr)
    return np.stack(out).astype(dtype.newbyteorder("="))


def split_train_validation(samples: Samples, fraction: float, seed: int) -> tuple[Samples, Samples]:
    """A fixed-seed split so a device's validation rows stay the same across rounds."""
    n = len(samples)
    n_val = int(round(n * fraction)) if n >= 10 else 0
    order = np.random.default_rng(seed).permutation(n)
    val, train = order[:n_val], order[n_val:]
    cols = samples.feature_columns
    return (
        Samples(samples.x[train], samples.y[train], cols),
        Samples(samples.x[val], samples.y[val], cols),
    )
