"""Demo and test data: scikit-learn's bundled data sets, split non-IID into per-device SQLite files.

Every device gets its own SQLite file of labelled rows (the user's local data in a real
deployment); a stratified held-out test file serves central evaluation. Splits use a fixed
seed, so the same arguments always give the same files.

Example::

    fed = make_federation("demo-out/data", dataset="digits", n_devices=5, alpha=0.5)
    fed.device_paths[0]   # demo-out/data/dev-0.db, table "samples", columns f0..f63, label
    read_samples(data_source(fed.device_paths[0]))   # Samples(x float32 [n, 64], y int64 [n])
"""

from __future__ import annotations

import logging
import re
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np

from fedge.protocol.errors import ConfigError
from fedge.protocol.sqlite_samples import DataSource

log = logging.getLogger(__name__)

DatasetName = Literal["digits", "breast_cancer", "wine"]
Layout = Literal["columns", "blob"]
DATASETS: tuple[str, ...] = ("digits", "breast_cancer", "wine")
LAYOUTS: tuple[str, ...] = ("columns", "blob")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class FederationData:
    """The files written by :func:`make_federation` and what a model needs to know about them."""

    dataset: str
    layout: str
    table: str
    device_paths: list[Path]
    test_path: Path
    n_features: int
    n_classes: int
    label_histograms: list[list[int]] = field(default_factory=list)
    test_size: int = 0

    @property
    def device_sizes(self) -> list[int]:
        """Number of training rows on each device."""
        return [sum(hist) for hist in self.label_histograms]


def load_sklearn_dataset(name: DatasetName) -> tuple[np.ndarray, np.ndarray]:
    """Load a bundled scikit-learn data set: X float32, y int64.

    digits' pixels (0..16) are divided by 16, so they lie in [0, 1]; wine and breast_cancer
    come raw (breast_cancer's features span 0.001..4000): :func:`make_federation` standardizes
    them with :func:`standardize`.
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown data set {name!r}; choose one of: {', '.join(DATASETS)}")
    try:
        from sklearn import datasets
    except ImportError as exc:  # the demo extra is not installed
        raise ConfigError(
            "scikit-learn is needed for the demo data sets: pip install 'fedge[demo]'"
        ) from exc
    loader = {
        "digits": datasets.load_digits,
        "breast_cancer": datasets.load_breast_cancer,
        "wine": datasets.load_wine,
    }[name]
    bunch = loader()
    X = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    if name == "digits":  # pixels 0..16: one scale for all, so empty border pixels stay small
        X = X / 16.0
    return X.astype(np.float32), y


def standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Scale every feature to mean 0, std 1 with ``train``'s statistics; apply them to ``others``.

    A constant feature becomes 0. Returns ``[train, *others]`` standardized, float32.

    The demo computes these statistics over the pooled training rows of all devices, which a
    real federation cannot do (no device sees the others' rows). It is a shortcut of the demo's
    data preparation; standardizing without pooling the data is a separate feature.
    """
    ref = np.asarray(train, dtype=np.float64)
    mean = ref.mean(axis=0)
    std = ref.std(axis=0)
    safe = np.where(std > 0, std, 1.0)
    return [
        np.where(std > 0, (np.asarray(x, dtype=np.float64) - mean) / safe, 0.0).astype(np.float32)
        for x in (train, *others)
    ]


def dirichlet_split(
    y: np.ndarray,
    n_parts: int,
    alpha: float,
    seed: int,
    *,
    min_size: int = 10,
    max_attempts: int = 1000,
) -> list[np.ndarray]:
    """Split sample indices into ``n_parts`` non-IID parts with per-class Dirichlet proportions.

    For each class, proportions over the parts are drawn from Dir(alpha); a part that already
    holds its fair share (len(y) / n_parts) receives no more, which keeps sizes from running
    away. The draw is repeated (same generator, so deterministically) until every part has at
    least ``min_size`` samples. Small ``alpha`` means strongly skewed label histograms.

    Returns one sorted int64 index array per part; together they cover every index once.
    """
    labels = np.asarray(y)
    n = len(labels)
    if n_parts < 1:
        raise ConfigError(f"n_parts must be at least 1, got {n_parts}")
    if not alpha > 0:
        raise ConfigError(f"alpha must be positive, got {alpha}")
    if n_parts * min_size > n:
        raise ConfigError(
            f"cannot give {n_parts} parts at least {min_size} samples each from {n} samples; "
            "use fewer devices or a smaller min_size"
        )
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    fair_share = n / n_parts
    for attempt in range(1, max_attempts + 1):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_parts)]
        sizes = np.zeros(n_parts, dtype=np.int64)
        for cls in classes:
            idx = np.flatnonzero(labels == cls)
            rng.shuffle(idx)
            props = rng.dirichlet(np.full(n_parts, float(alpha)))
            props = props * (sizes < fair_share)
            total = props.sum()
            props = props / total if total > 0 else np.full(n_parts, 1.0 / n_parts)
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(np.int64)
            for part_id, chunk in enumerate(np.split(idx, cuts)):
                parts[part_id].append(chunk)
                sizes[part_id] += len(chunk)
        if sizes.min() >= min_size:
            log.debug("dirichlet split: %d parts after %d attempt(s)", n_parts, attempt)
            return [np.sort(np.concatenate(chunks)).astype(np.int64) for chunks in parts]
    raise ConfigError(
        f"no Dirichlet split with at least {min_size} samples per part after {max_attempts} "
        f"attempts (alpha={alpha}, parts={n_parts}); raise alpha or use fewer devices"
    )


def write_samples_sqlite(
    path: str | Path,
    X: np.ndarray,
    y: np.ndarray,
    *,
    table: str = "samples",
    layout: Layout = "columns",
) -> Path:
    """Write labelled rows to a new SQLite file (an existing file is replaced).

    ``columns`` layout: ``id INTEGER PRIMARY KEY, f0..f{d-1} REAL, label INTEGER, created_at
    TEXT``. ``blob`` layout: ``id, features BLOB`` (float32 little-endian bytes), ``label,
    created_at``. float32 values round-trip exactly in both layouts.
    """
    path = Path(path)
    features = np.asarray(X, dtype=np.float32)
    labels = np.asarray(y, dtype=np.int64)
    if features.ndim != 2 or labels.ndim != 1 or len(features) != len(labels):
        raise ConfigError(
            f"expected X of shape (n, d) and y of shape (n,), got {features.shape} and "
            f"{labels.shape}"
        )
    if not _IDENTIFIER.match(table):
        raise ConfigError(f"invalid table name {table!r}: use letters, digits and underscores")
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    created_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    n_features = features.shape[1]
    conn = sqlite3.connect(path)
    try:
        with conn:
            if layout == "columns":
                cols = [f"f{i}" for i in range(n_features)]
                conn.execute(
                    f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, "
                    + "".join(f"{c} REAL, " for c in cols)
                    + "label INTEGER NOT NULL, created_at TEXT NOT NULL)"
                )
                marks = ", ".join("?" * (n_features + 2))
                rows = (
                    (*row, label, created_at)
                    for row, label in zip(
                        features.astype(np.float64).tolist(), labels.tolist(), strict=True
                    )
                )
                conn.executemany(
                    f"INSERT INTO {table} ({', '.join(cols)}, label, created_at) VALUES ({marks})",
                    rows,
                )
            else:
                conn.execute(
                    f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, features BLOB NOT NULL, "
                    "label INTEGER NOT NULL, created_at TEXT NOT NULL)"
                )
                little = features.astype("<f4", copy=False)
                conn.executemany(
                    f"INSERT INTO {table} (features, label, created_at) VALUES (?, ?, ?)",
                    ((little[i].tobytes(), int(labels[i]), created_at) for i in range(len(labels))),
                )
    finally:
        conn.close()
    log.debug("wrote %d rows (%s layout) to %s", len(labels), layout, path)
    return path


def data_source(
    path: str | Path, *, table: str = "samples", layout: Layout = "columns"
) -> DataSource:
    """How to read a file written by :func:`write_samples_sqlite` with the one sample reader.

    ``read_samples(data_source(path))`` returns the rows (X float32, y int64) in id order; the
    fields are also what an agent's ``[data]`` section needs.
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")
    if layout == "blob":
        return DataSource(path=str(path), table=table, blob_column="features")
    return DataSource(path=str(path), table=table)


def make_federation(
    out_dir: str | Path,
    *,
    dataset: DatasetName = "digits",
    n_devices: int = 5,
    alpha: float = 0.5,
    seed: int = 0,
    test_fraction: float = 0.2,
    layout: Layout = "columns",
    table: str = "samples",
    min_size: int = 10,
) -> FederationData:
    """Write one SQLite file per device (``dev-<i>.db``) plus a held-out ``test.db``.

    The test split is stratified and seeded; the rest is split across devices with
    :func:`dirichlet_split`. wine and breast_cancer are standardized with the training rows'
    statistics (:func:`standardize`); digits keeps its [0, 1] pixels.
    """
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    from sklearn.model_selection import train_test_split

    X, y = load_sklearn_dataset(dataset)
    n_classes = int(y.max()) + 1
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=test_fraction, stratify=y, random_state=seed
    )
    if dataset != "digits":  # raw features of very different ranges: see standardize()
        X_train, X_test = standardize(X_train, X_test)
    parts = dirichlet_split(y_train, n_devices, alpha, seed, min_size=min_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device_paths: list[Path] = []
    histograms: list[list[int]] = []
    for i, idx in enumerate(parts):
        device_path = out / f"dev-{i}.db"
        write_samples_sqlite(device_path, X_train[idx], y_train[idx], table=table, layout=layout)
        device_paths.append(device_path)
        histograms.append(np.bincount(y_train[idx], minlength=n_classes).tolist())
    test_path = write_samples_sqlite(out / "test.db", X_test, y_test, table=table, layout=layout)
    log.info(
        "wrote %s federation: %d devices (alpha=%s, seed=%d), %d test rows, to %s",
        dataset,
        n_devices,
        alpha,
        seed,
        len(y_test),
        out,
    )
    return FederationData(
        dataset=dataset,
        layout=layout,
        table=table,
        device_paths=device_paths,
        test_path=test_path,
        n_features=int(X.shape[1]),
        n_classes=n_classes,
        label_histograms=histograms,
        test_size=len(y_test),
    )
