"""SQLite tables written as a data owner would: typed feature columns or one typed BLOB, a label.

Used by the examples' data preparation scripts (examples/*/prepare.py) and the task-kind
integration tests (tests/support/task_federation.py), so both feed the agents the same kind of
file. :func:`fedge.demo.data.write_samples_sqlite` is the demo's fixed float32 layout; this
one varies what a data owner varies: INTEGER or REAL labels (one column or several), REAL or
INTEGER feature columns, or a BLOB of any dtype and shape per row.

Example::

    write_table("dev-0.db", x, y)                                   # f0..f29 REAL, label INTEGER
    write_table("dev-0.db", tokens, y, blob_dtype="int64")          # x BLOB (int64 ids), label
    write_table("dev-0.db", x, y, label_type="REAL", prefix="t")    # t0.. REAL, label REAL
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedge.protocol.errors import ConfigError

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SQL_TYPES = ("REAL", "INTEGER")


def write_table(
    path: str | Path,
    x: np.ndarray,
    y: np.ndarray,
    *,
    feature_type: str = "REAL",
    label_type: str = "INTEGER",
    blob_dtype: str = "",
    prefix: str = "f",
    columns: Sequence[str] = (),
    table: str = "samples",
    blob_column: str = "x",
    label: str = "label",
) -> Path:
    """Write a new table ``table`` to ``path`` (an existing file is replaced) and return the path.

    Columns: ``{prefix}0 .. {prefix}{d-1}`` (or the names in ``columns``) of ``feature_type``
    (``x`` of shape ``[n, d]``), or
    with ``blob_dtype`` one BLOB column ``blob_column`` holding each row of ``x`` (any shape) as
    little-endian ``blob_dtype`` bytes; then ``label`` of ``label_type`` when ``y`` is ``[n]``,
    or ``label0 .. label{k-1}`` when it is ``[n, k]`` (multi-label, several targets).
    """
    path = Path(path)
    x = np.asarray(x)
    y = np.asarray(y)
    for kind, value in (("feature_type", feature_type), ("label_type", label_type)):
        if value not in _SQL_TYPES:
            raise ConfigError(f"{kind} must be one of {', '.join(_SQL_TYPES)}, got {value!r}")
    for kind, name in (("table", table), ("prefix", prefix), ("blob_column", blob_column)):
        if not _IDENTIFIER.match(name):
            raise ConfigError(f"invalid {kind} {name!r}: use letters, digits and underscores")
    if len(x) != len(y) or y.ndim not in (1, 2):
        raise ConfigError(f"x has {len(x)} rows and y {len(y)} (shape {y.shape}): one label each")
    labels = [label] if y.ndim == 1 else [f"{label}{j}" for j in range(y.shape[1])]
    label_cols = ", ".join(f"{name} {label_type}" for name in labels)
    cast_label = int if label_type == "INTEGER" else float
    label_rows = [
        [cast_label(v) for v in np.atleast_1d(row).tolist()] for row in y
    ]  # Python ints for INTEGER: sqlite3 stores numpy ints as BLOBs
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    conn = sqlite3.connect(path)
    try:
        with conn:
            if blob_dtype:
                little = np.dtype(blob_dtype).newbyteorder("<")
                conn.execute(f"CREATE TABLE {table} ({blob_column} BLOB, {label_cols})")
                rows = [
                    (row.astype(little).tobytes(), *lab)
                    for row, lab in zip(x, label_rows, strict=True)
                ]
                width = 1
            else:
                if x.ndim != 2:
                    raise ConfigError(
                        f"feature columns need x of shape [n, d], got {x.shape}: "
                        "flatten it or write a BLOB (blob_dtype=...)"
                    )
                names = list(columns) or [f"{prefix}{i}" for i in range(x.shape[1])]
                if len(names) != x.shape[1] or not all(map(_IDENTIFIER.match, names)):
                    raise ConfigError(
                        f"columns must be {x.shape[1]} names of letters, digits and "
                        f"underscores, got {names}"
                    )
                cols = ", ".join(f"{name} {feature_type}" for name in names)
                conn.execute(f"CREATE TABLE {table} ({cols}, {label_cols})")
                cast = int if feature_type == "INTEGER" else float
                rows = [
                    (*[cast(v) for v in row.tolist()], *lab)
                    for row, lab in zip(x, label_rows, strict=True)
                ]
                width = x.shape[1]
            marks = ", ".join("?" * (width + len(labels)))
            conn.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
    finally:
        conn.close()
    return path
