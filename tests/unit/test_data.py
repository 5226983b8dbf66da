"""fedge.demo.data: loading, Dirichlet splits and SQLite files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from fedge.demo.data import (
    FederationData,
    data_source,
    dirichlet_split,
    load_sklearn_dataset,
    make_federation,
    standardize,
    write_samples_sqlite,
)
from fedge.protocol.errors import ConfigError
from fedge.protocol.sqlite_samples import read_samples


def read_samples_sqlite(path: Path, *, layout: str = "columns") -> tuple[np.ndarray, np.ndarray]:
    """What the demo wrote, read back through the one sample reader agents use."""
    samples = read_samples(data_source(path, layout=layout))  # type: ignore[arg-type]
    return samples.x, samples.y


@pytest.mark.parametrize(
    ("name", "n_features", "n_classes"),
    [("digits", 64, 10), ("breast_cancer", 30, 2), ("wine", 13, 3)],
)
def test_load_sklearn_dataset_shapes_and_scales(name: str, n_features: int, n_classes: int) -> None:
    X, y = load_sklearn_dataset(name)  # type: ignore[arg-type]
    assert X.dtype == np.float32 and y.dtype == np.int64
    assert X.shape == (len(y), n_features)
    assert set(np.unique(y).tolist()) == set(range(n_classes))
    if name == "digits":  # pixels / 16
        assert X.min() == 0.0 and X.max() == 1.0
    else:  # raw: make_federation standardizes
        assert X.max() > 100


def test_standardize_uses_the_training_rows_statistics_and_zeroes_constant_features() -> None:
    train = np.array([[1.0, 5.0, 1000.0], [3.0, 5.0, 3000.0]], np.float32)
    test = np.array([[5.0, 7.0, 2000.0]], np.float32)
    a, b = standardize(train, test)
    assert np.allclose(a, [[-1.0, 0.0, -1.0], [1.0, 0.0, 1.0]])
    assert np.allclose(b, [[3.0, 0.0, 0.0]]) and b.dtype == np.float32


def test_breast_cancer_federation_is_standardized(tmp_path: Path) -> None:
    raw, _ = load_sklearn_dataset("breast_cancer")
    assert raw.min() < 0.01 and raw.max() > 4000  # the raw spread the model could not learn from
    fed = make_federation(tmp_path, dataset="breast_cancer", n_devices=3, seed=0)
    pooled = np.concatenate([read_samples_sqlite(p)[0] for p in fed.device_paths])
    assert np.allclose(pooled.mean(axis=0), 0.0, atol=1e-4)
    assert np.allclose(pooled.std(axis=0), 1.0, atol=1e-3)
    X_test, _ = read_samples_sqlite(fed.test_path)
    assert np.abs(X_test).max() < 20  # the same scale, from the training statistics


def test_load_unknown_dataset_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="digits, breast_cancer, wine"):
        load_sklearn_dataset("mnist")  # type: ignore[arg-type]


def test_dirichlet_split_is_deterministic_disjoint_and_complete() -> None:
    _, y = load_sklearn_dataset("digits")
    a = dirichlet_split(y, 5, 0.5, seed=3)
    b = dirichlet_split(y, 5, 0.5, seed=3)
    c = dirichlet_split(y, 5, 0.5, seed=4)
    assert len(a) == 5
    assert all(np.array_equal(pa, pb) for pa, pb in zip(a, b, strict=True))
    assert not all(np.array_equal(pa, pc) for pa, pc in zip(a, c, strict=True))
    everything = np.concatenate(a)
    assert len(everything) == len(y)  # disjoint ...
    assert np.array_equal(np.sort(everything), np.arange(len(y)))  # ... and complete
    assert all(part.dtype == np.int64 for part in a)
    assert min(len(part) for part in a) >= 10


def _max_total_variation(y: np.ndarray, parts: list[np.ndarray]) -> float:
    n_classes = int(y.max()) + 1
    overall = np.bincount(y, minlength=n_classes) / len(y)
    return max(
        0.5 * np.abs(np.bincount(y[p], minlength=n_classes) / len(p) - overall).sum() for p in parts
    )


def test_small_alpha_skews_label_histograms_large_alpha_does_not() -> None:
    _, y = load_sklearn_dataset("digits")
    skewed = _max_total_variation(y, dirichlet_split(y, 5, 0.1, seed=0))
    near_iid = _max_total_variation(y, dirichlet_split(y, 5, 1000.0, seed=0))
    assert skewed > 0.4, skewed
    assert near_iid < 0.1, near_iid


def test_dirichlet_split_respects_min_size() -> None:
    _, y = load_sklearn_dataset("wine")
    parts = dirichlet_split(y, 5, 0.1, seed=1, min_size=20)
    assert min(len(p) for p in parts) >= 20


def test_dirichlet_split_rejects_impossible_requests() -> None:
    y = np.zeros(30, dtype=np.int64)
    with pytest.raises(ConfigError, match="fewer devices"):
        dirichlet_split(y, 4, 0.5, seed=0, min_size=10)
    with pytest.raises(ConfigError, match="alpha"):
        dirichlet_split(y, 2, 0.0, seed=0)


@pytest.mark.parametrize("layout", ["columns", "blob"])
def test_sqlite_round_trips_values_exactly(tmp_path: Path, layout: str) -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 7)).astype(np.float32)
    X[0, 0] = np.float32(1e-38)  # float32 edge values survive too
    X[1, 1] = np.float32(3.4e38)
    y = rng.integers(0, 4, size=50).astype(np.int64)
    path = tmp_path / "d.db"
    write_samples_sqlite(path, X, y, layout=layout)  # type: ignore[arg-type]
    X2, y2 = read_samples_sqlite(path, layout=layout)  # type: ignore[arg-type]
    assert X2.dtype == np.float32 and y2.dtype == np.int64
    assert np.array_equal(X2, X) and np.array_equal(y2, y)


def test_sqlite_schema_and_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    X = np.ones((3, 2), dtype=np.float32)
    write_samples_sqlite(path, np.zeros((9, 2), dtype=np.float32), np.zeros(9, dtype=np.int64))
    write_samples_sqlite(path, X, np.array([0, 1, 2]), table="readings")
    with sqlite3.connect(path) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        cols = [(r[1], r[2]) for r in conn.execute("PRAGMA table_info(readings)")]
        created = conn.execute("SELECT created_at FROM readings").fetchone()[0]
    assert tables == ["readings"]  # the old file is gone
    assert cols == [
        ("id", "INTEGER"),
        ("f0", "REAL"),
        ("f1", "REAL"),
        ("label", "INTEGER"),
        ("created_at", "TEXT"),
    ]
    assert created.endswith("+00:00")

    blob_path = tmp_path / "b.db"
    write_samples_sqlite(blob_path, X, np.array([0, 1, 2]), layout="blob")
    with sqlite3.connect(blob_path) as conn:
        cols = [r[1] for r in conn.execute("PRAGMA table_info(samples)")]
        blob = conn.execute("SELECT features FROM samples WHERE id = 1").fetchone()[0]
    assert cols == ["id", "features", "label", "created_at"]
    assert blob == np.ones(2, dtype="<f4").tobytes()


def test_write_rejects_bad_table_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="table name"):
        write_samples_sqlite(tmp_path / "x.db", np.zeros((1, 1)), np.zeros(1), table="x; DROP")


def test_digits_federation_fixture(digits_federation: FederationData) -> None:
    fed = digits_federation
    assert len(fed.device_paths) == 3 and fed.n_features == 64 and fed.n_classes == 10
    assert all(p.exists() for p in fed.device_paths) and fed.test_path.exists()
    X_test, y_test = read_samples_sqlite(fed.test_path)
    assert len(y_test) == fed.test_size == 360  # 20 % of 1797, stratified
    assert set(np.unique(y_test).tolist()) == set(range(10))
    for path, hist in zip(fed.device_paths, fed.label_histograms, strict=True):
        _, y = read_samples_sqlite(path)
        assert np.bincount(y, minlength=10).tolist() == hist
    assert sum(fed.device_sizes) + fed.test_size == 1797


def test_make_federation_is_reproducible(tmp_path: Path) -> None:
    a = make_federation(tmp_path / "a", dataset="wine", n_devices=3, seed=7, layout="blob")
    b = make_federation(tmp_path / "b", dataset="wine", n_devices=3, seed=7, layout="blob")
    assert a.label_histograms == b.label_histograms
    for pa, pb in zip(a.device_paths, b.device_paths, strict=True):
        Xa, ya = read_samples_sqlite(pa, layout="blob")
        Xb, yb = read_samples_sqlite(pb, layout="blob")
        assert np.array_equal(Xa, Xb) and np.array_equal(ya, yb)
