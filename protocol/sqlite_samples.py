"""Read labelled samples from a user's SQLite file, read-only, with errors that name the fix.

Shared by agents (local training data) and the orchestrator (optional held-out test table).
Features come from numeric columns (listed, or matched by a glob such as ``f*``) or from one
BLOB column holding a little-endian array (float32, float64, uint8, int8, int32, int64) of a
declared shape. A model with several inputs (token ids and a mask) maps each input to its own
columns or BLOB (``inputs``: ``[data.inputs.<name>]``), read from the same rows; its samples'
``x`` is then a tuple, one array per input, in ``input_names`` order. The file is opened with
``mode=ro``: fedge never writes to a user's database.
``read_samples`` gives float32 features by default; ``dtype=None`` keeps the stored values as
they are (column values as float64, which holds every int64 token id below 2**53 exactly; a
BLOB in its own dtype), for ``fedge.protocol.data_contract`` to check and cast to what the
bundle's input declares.
"""

from __future__ import annotations

import fnmatch
import re
import sqlite3
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

import numpy as np

from .errors import ConfigError, FedgeError
from .fields import Len, OneOf, Range
from .sqlite_db import read_only_uri

BLOB_DTYPES = ("float32", "float64", "uint8", "int8", "int32", "int64")
MAX_INPUTS = 16  # model inputs one row can feed

# one sample's values for the model: one array, or one per model input (``Samples.input_names``)
Features = np.ndarray | tuple[np.ndarray, ...]


class DataError(FedgeError):
    """Local data is missing, unreadable or does not match the configured schema."""


@dataclass
class InputColumns:
    """Where one model input's values are in a row (``[data.inputs.<input name>]``): numeric
    columns (``features``: names or globs) or one BLOB column."""

    features: Annotated[list[Annotated[str, Len(1, 256)]], Len(0, 100_000)] = field(
        default_factory=list
    )
    blob_column: Annotated[str, Len(0, 256)] = ""
    blob_dtype: Annotated[str, OneOf(*BLOB_DTYPES)] = "float32"
    blob_shape: Annotated[list[Annotated[int, Range(1, 2**31 - 1)]], Len(0, 8)] = field(
        default_factory=list
    )
    feature_scale: Annotated[float, Range(-1e30, 1e30)] = 1.0


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
    # a model with several inputs: each input's columns (then features/blob_* above are unused)
    inputs: dict[str, InputColumns] = field(default_factory=dict)

    def for_input(self, name: str) -> DataSource:
        """This source reading only model input ``name``'s columns or BLOB."""
        ic = self.inputs[name]
        return replace(
            self,
            features=list(ic.features),
            blob_column=ic.blob_column,
            blob_dtype=ic.blob_dtype,
            blob_shape=list(ic.blob_shape),
            feature_scale=ic.feature_scale,
            inputs={},
        )

    def validate(self) -> None:
        """Each ``[data.inputs.NAME]`` names its columns or its BLOB, not both, not neither."""
        if len(self.inputs) > MAX_INPUTS:
            raise ConfigError(f"data.inputs has {len(self.inputs)} inputs; at most {MAX_INPUTS}")
        for name, ic in self.inputs.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", name):
                raise ConfigError(
                    f"data.inputs.{name[:80]}: an input name is a letter or _ then letters, "
                    "digits or _ (at most 64), as the bundle's inputs are named"
                )
            if bool(ic.features) == bool(ic.blob_column):
                raise ConfigError(
                    f"data.inputs.{name} needs either 'features' (columns) or 'blob_column' "
                    "(one BLOB), not both or neither"
                )


@dataclass
class Samples:
    x: Features
    y: np.ndarray
    feature_columns: tuple[str, ...] = ()  # the columns the features came from, in order
    # several inputs: x is a tuple in this order, each from its own columns
    input_names: tuple[str, ...] = ()
    input_columns: tuple[tuple[str, ...], ...] = ()

    def __len__(self) -> int:
        return len(self.y)

    @property
    def array(self) -> np.ndarray:
        """The one input's values; a DataError for samples of several inputs."""
        if isinstance(self.x, tuple):
            raise DataError(
                f"these samples hold {len(self.x)} inputs ({', '.join(self.input_names)}), "
                "not one array"
            )
        return self.x

    def input(self, name: str) -> Samples:
        """One model input's values as one-input samples (the same labels)."""
        i = self.input_names.index(name)
        x = self.x[i] if isinstance(self.x, tuple) else self.x
        return Samples(x, self.y, self.input_columns[i])


def input_arrays(x: Features) -> tuple[np.ndarray, ...]:
    """One array per model input (a single array: the one input)."""
    return x if isinstance(x, tuple) else (x,)


def take_rows(x: Features, index: Any) -> Features:
    """Rows ``index`` (an index array or a slice) of every input."""
    if isinstance(x, tuple):
        return tuple(a[index] for a in x)
    rows: np.ndarray = x[index]
    return rows


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
    (``None``: as stored, see the module docstring). With ``src.inputs``: one array per input."""
    conn = _connect_read_only(src.path)
    try:
        columns = _columns(conn, src)
        if src.label not in columns:
            raise DataError(
                f"table '{src.table or 'query'}' has no label column '{src.label}'; "
                f"columns are: {', '.join(columns)}"
            )
        names = list(src.inputs) or [""]
        parts = [src.for_input(n) if n else src for n in names]
        selected = [_selected_columns(columns, p, n) for p, n in zip(parts, names, strict=True)]
        source = f"({src.query})" if src.query else f'"{src.table}"'
        where = f" WHERE {src.where}" if src.where else ""
        cols = ", ".join(f'"{c}"' for feats in selected for c in feats)
        sql = f'SELECT {cols}, "{src.label}" FROM {source}{where}'
        try:
            rows = conn.execute(sql).fetchall()
        except sqlite3.DatabaseError as exc:
            raise DataError(f"reading samples failed: {exc}; SQL was: {sql}") from None
    finally:
        conn.close()
    arrays, start = [], 0
    for part, feats, name in zip(parts, selected, names, strict=True):
        values = [r[start : start + len(feats)] for r in rows]
        start += len(feats)
        arrays.append(_features(values, part, name, expected_features, dtype))
    labels = [r[-1] for r in rows]
    if any(v is None for v in labels):
        bad = labels.index(None)
        raise DataError(f"row {bad + 1} has a NULL label in column '{src.label}'")
    y = np.array(labels) if rows else np.zeros((0,), np.int64)
    if not src.inputs:
        return Samples(arrays[0], y, tuple(selected[0]))
    return Samples(
        tuple(arrays),
        y,
        tuple(c for feats in selected for c in feats),
        tuple(names),
        tuple(tuple(feats) for feats in selected),
    )


def _selected_columns(columns: list[str], src: DataSource, name: str) -> list[str]:
    """The columns one input (``name``; "" for the one-input config) reads, in order."""
    if src.blob_column:
        if src.blob_column not in columns:
            what = f" (input '{name}')" if name else ""
            raise DataError(
                f"blob column '{src.blob_column}'{what} not found; columns are: "
                f"{', '.join(columns)}"
            )
        return [src.blob_column]
    try:
        return resolve_feature_columns(columns, src)
    except DataError as exc:
        if name:
            raise DataError(f"data.inputs.{name}: {exc}") from None
        raise


def _features(
    rows: list[tuple[Any, ...]],
    src: DataSource,
    name: str,
    expected_features: int | None,
    dtype: str | None,
) -> np.ndarray:
    """One input's values of every row, decoded, checked and scaled."""
    what = f" of input '{name}'" if name else ""
    if not rows:
        return np.zeros((0, expected_features or 0), dtype or np.float32)
    if src.blob_column:
        x = _decode_blobs(rows, src, what)
    else:
        try:
            x = np.array(rows, dtype=np.float64)
        except (TypeError, ValueError):
            bad = next(
                i for i, r in enumerate(rows) if any(not isinstance(v, (int, float)) for v in r)
            )
            raise DataError(
                f"row {bad + 1} has a non-numeric or NULL feature{what}: {rows[bad][:8]}..."
            ) from None
    if x.dtype.kind == "f" and np.isnan(x).any():
        bad = int(np.argwhere(np.isnan(x).reshape(len(x), -1).any(axis=1))[0][0])
        raise DataError(
            f"row {bad + 1} has a NULL/NaN feature{what}; clean the data or filter it with `where`"
        )
    if expected_features is not None and x.reshape(len(x), -1).shape[1] != expected_features:
        raise DataError(
            f"the model expects {expected_features} features per sample but the data has "
            f"{x.reshape(len(x), -1).shape[1]}"
        )
    if src.feature_scale != 1.0:
        x = x * src.feature_scale
    return x.astype(dtype, copy=False) if dtype else x


def _decode_blobs(rows: list[tuple[Any, ...]], src: DataSource, what: str = "") -> np.ndarray:
    if src.blob_dtype not in BLOB_DTYPES:
        raise DataError(
            f"blob_dtype {src.blob_dtype!r} unsupported; use one of {', '.join(BLOB_DTYPES)}"
        )
    dtype = np.dtype(src.blob_dtype).newbyteorder("<")
    shape = tuple(src.blob_shape)
    size = int(np.prod(shape)) if shape else None
    out = []
    for i, (blob, *_rest) in enumerate(rows):
        if not isinstance(blob, bytes):
            raise DataError(f"row {i + 1}: column '{src.blob_column}'{what} is not a BLOB")
        arr = np.frombuffer(blob, dtype=dtype)
        if size is not None and arr.size != size:
            raise DataError(
                f"row {i + 1}: blob{what} holds {arr.size} {dtype.name} values, expected {size} "
                f"for shape {list(shape)}"
            )
        out.append(arr.reshape(shape) if shape else arr)
    return np.stack(out).astype(dtype.newbyteorder("="))


def split_train_validation(samples: Samples, fraction: float, seed: int) -> tuple[Samples, Samples]:
    """A fixed-seed split so a device's validation rows stay the same across rounds."""
    n = len(samples)
    n_val = int(round(n * fraction)) if n >= 10 else 0
    order = np.random.default_rng(seed).permutation(n)
    val, train = order[:n_val], order[n_val:]
    keep = (samples.feature_columns, samples.input_names, samples.input_columns)
    return (
        Samples(take_rows(samples.x, train), samples.y[train], *keep),
        Samples(take_rows(samples.x, val), samples.y[val], *keep),
    )
