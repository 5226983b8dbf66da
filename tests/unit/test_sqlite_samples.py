import sqlite3

import numpy as np
import pytest

from fedge.protocol.sqlite_samples import (
    DataError,
    DataSource,
    read_samples,
    split_train_validation,
)


def _make(path, rows, cols="f0 REAL, f1 REAL, f10 REAL, f2 REAL, label INTEGER"):
    db = sqlite3.connect(path)
    db.execute(f"CREATE TABLE samples (id INTEGER PRIMARY KEY, {cols})")
    ncol = cols.count(",") + 1
    db.executemany(f"INSERT INTO samples VALUES (NULL{', ?' * ncol})", rows)
    db.commit()
    db.close()


def test_reads_glob_columns_in_natural_order(tmp_path):
    p = tmp_path / "d.db"
    _make(p, [(0.0, 1.0, 10.0, 2.0, 3), (0.5, 1.5, 10.5, 2.5, 4)])
    s = read_samples(DataSource(path=str(p)))
    np.testing.assert_array_equal(s.x[0], [0.0, 1.0, 2.0, 10.0])
    assert s.y.tolist() == [3, 4]


def test_never_writes_to_the_users_database(tmp_path):
    p = tmp_path / "d.db"
    _make(p, [(0.0, 1.0, 10.0, 2.0, 3)])
    before = p.read_bytes()
    read_samples(DataSource(path=str(p)))
    assert p.read_bytes() == before


@pytest.mark.parametrize(
    "source, fragment",
    [
        (dict(table="readings"), "table 'readings' not found.*tables are: samples"),
        (dict(label="y"), "no label column 'y'.*columns are"),
        (dict(features=["g*"]), "'g\\*' matches nothing"),
        (dict(where="nonsense ~~"), "reading samples failed"),
    ],
)
def test_schema_errors_name_table_and_columns(tmp_path, source, fragment):
    p = tmp_path / "d.db"
    _make(p, [(0.0, 1.0, 10.0, 2.0, 3)])
    with pytest.raises(DataError, match=fragment):
        read_samples(DataSource(path=str(p), **source))


def test_missing_file_null_values_and_not_sqlite(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_samples(DataSource(path=str(tmp_path / "nope.db")))
    p = tmp_path / "d.db"
    _make(p, [(0.0, None, 1.0, 2.0, 1)])
    with pytest.raises(DataError, match="row 1"):
        read_samples(DataSource(path=str(p)))
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DataError, match="not a readable SQLite"):
        read_samples(DataSource(path=str(bad)))


def test_blob_features_and_expected_width(tmp_path):
    p = tmp_path / "b.db"
    db = sqlite3.connect(p)
    db.execute("CREATE TABLE samples (features BLOB, label INTEGER)")
    db.execute("INSERT INTO samples VALUES (?, ?)", (np.arange(6, dtype="<f4").tobytes(), 1))
    db.commit()
    db.close()
    s = read_samples(DataSource(path=str(p), blob_column="features", blob_shape=[2, 3]))
    assert s.x.shape == (1, 2, 3)
    with pytest.raises(DataError, match="expected 4"):
        read_samples(DataSource(path=str(p), blob_column="features", blob_shape=[4]))
    with pytest.raises(DataError, match="expects 7 features"):
        read_samples(DataSource(path=str(p), blob_column="features"), expected_features=7)


def test_validation_split_is_fixed_and_disjoint():
    from fedge.protocol.sqlite_samples import Samples

    s = Samples(np.arange(100, dtype=np.float32)[:, None], np.arange(100))
    a_train, a_val = split_train_validation(s, 0.2, seed=0)
    b_train, b_val = split_train_validation(s, 0.2, seed=0)
    assert len(a_val) == 20 and a_val.y.tolist() == b_val.y.tolist()
    assert not set(a_train.y) & set(a_val.y)
