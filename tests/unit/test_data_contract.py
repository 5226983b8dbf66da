"""Rows checked against the bundle's manifest: labels, feature counts, dtypes (data_contract)."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from support.toy_bundle import toy_manifest

from fedge.agent.data_check import check_data
from fedge.protocol.data_contract import check_samples, read_for_bundle
from fedge.protocol.errors import BundleError
from fedge.protocol.manifest import Manifest
from fedge.protocol.sqlite_samples import DataError, DataSource, read_samples


def _manifest(
    *,
    kind: str = "multiclass",
    classes: int = 10,
    features: int = 3,
    input_dtype: str = "float32",
) -> Manifest:
    m = toy_manifest()
    m["inputs"][0].update(dtype=input_dtype, shape=[None, features])
    if kind == "multiclass":
        m["outputs"][0]["shape"] = [None, classes]
        m["task"] = {"kind": "multiclass", "num_classes": classes}
    elif kind == "binary":
        m["outputs"][0]["shape"] = [None, 1]
        m["label"] = {"name": "labels", "dtype": "float32", "shape": [None, 1]}
        m["loss"] = {"type": "bce_with_logits", "reduction": "mean"}
        m["task"] = {"kind": "binary"}
    else:
        m["outputs"][0]["shape"] = [None, 1]
        m["label"] = {"name": "labels", "dtype": "float32", "shape": [None, 1]}
        m["loss"] = {"type": "mse", "reduction": "mean"}
        m["task"] = {"kind": "regression", "num_targets": 1}
    return Manifest.from_dict(m, draft=True)


def _db(path, n_features: int, rows: list[tuple], types: str = "REAL", label: str = "INTEGER"):
    cols = ", ".join(f"f{i} {types}" for i in range(n_features))
    conn = sqlite3.connect(path)
    conn.execute(f"CREATE TABLE samples (id INTEGER PRIMARY KEY, {cols}, label {label})")
    marks = ", ".join("?" * (n_features + 1))
    conn.executemany(f"INSERT INTO samples VALUES (NULL, {marks})", rows)
    conn.commit()
    conn.close()
    return DataSource(path=str(path))


def test_multiclass_label_outside_the_classes_is_refused_with_rows(tmp_path):
    src = _db(tmp_path / "d.db", 3, [(0.1, 0.2, 0.3, i % 10) for i in range(20)] + [(0, 0, 0, 12)])
    with pytest.raises(DataError) as err:
        read_for_bundle(src, _manifest())
    msg = str(err.value)
    assert "1 rows have a label outside the model's 10 classes (row 21: 12)" in msg
    assert "class id 0..9" in msg
    # the same check behind `fedge data check --bundle`: a problem, so exit code 1
    report = check_data(src, manifest=_manifest())
    assert not report.ok and "outside the model's 10 classes" in report.problems[0]
    assert check_data(src).ok  # without the bundle nothing says the label is wrong


def test_binary_labels_must_be_0_or_1_integer_or_real(tmp_path):
    good_int = _db(tmp_path / "i.db", 3, [(0, 0, 0, i % 2) for i in range(10)])
    good_real = _db(
        tmp_path / "r.db", 3, [(0, 0, 0, float(i % 2)) for i in range(10)], label="REAL"
    )
    for src in (good_int, good_real):
        s = read_for_bundle(src, _manifest(kind="binary"))
        assert s.y.dtype == np.float32 and s.y.tolist() == [0.0, 1.0] * 5
    bad = _db(tmp_path / "b.db", 3, [(0, 0, 0, 2), (0, 0, 0, 1)])
    problems = check_samples(read_samples(bad, dtype=None), _manifest(kind="binary"), bad)
    assert problems == [
        "1 rows have a label other than 0 or 1 (row 1: 2): a binary (one-logit) model's "
        "labels are 0 or 1"
    ]


def test_regression_labels_any_finite_number_text_is_refused(tmp_path):
    src = _db(tmp_path / "d.db", 3, [(0, 0, 0, 151.5), (0, 0, 0, -3.0)], label="REAL")
    assert read_for_bundle(src, _manifest(kind="regression")).y.tolist() == [151.5, -3.0]
    text = _db(tmp_path / "t.db", 3, [(0, 0, 0, "cat"), (0, 0, 0, 1.0)], label="")
    with pytest.raises(DataError, match=r"1 rows have a non-numeric label \(row 1: cat\)"):
        read_for_bundle(text, _manifest(kind="regression"))


def test_feature_glob_matching_fewer_columns_than_the_input_needs(tmp_path):
    conn = sqlite3.connect(tmp_path / "d.db")
    cols = ", ".join(f"mean_{i} REAL" for i in range(29))
    conn.execute(f"CREATE TABLE samples (f REAL, {cols}, label INTEGER)")
    conn.execute(f"INSERT INTO samples VALUES ({', '.join(['0.5'] * 30)}, 1)")
    conn.execute(f"INSERT INTO samples VALUES ({', '.join(['0.1'] * 30)}, 0)")
    conn.commit()
    conn.close()
    src = DataSource(path=str(tmp_path / "d.db"))  # the default features = ["f*"]
    report = check_data(src, manifest=_manifest(kind="binary", features=30))
    assert report.problems == [
        "features match 1 column (f) but the model's input 'input' needs 30: check data.features"
    ]
    src.features = ["f", "mean_*"]
    assert read_for_bundle(src, _manifest(kind="binary", features=30)).x.shape == (2, 30)


def test_integer_columns_become_int64_token_ids(tmp_path):
    rows = [(3, 0, 7, 1), (1, 2, 2, 0)]
    src = _db(tmp_path / "d.db", 3, rows, types="INTEGER")
    s = read_for_bundle(src, _manifest(kind="binary", input_dtype="int64"))
    assert s.x.dtype == np.int64 and s.x.tolist() == [[3, 0, 7], [1, 2, 2]]
    frac = _db(tmp_path / "f.db", 3, [(3, 0.5, 7, 1)])
    with pytest.raises(DataError, match="fractional feature but the model's input 'input'"):
        read_for_bundle(frac, _manifest(kind="binary", input_dtype="int64"))
    # the same rows feed a float model as float32
    assert read_for_bundle(src, _manifest(kind="binary")).x.dtype == np.float32


@pytest.mark.parametrize(
    "blob_dtype, want", [("int64", np.int64), ("uint8", np.float32), ("float32", np.float32)]
)
def test_blobs_of_every_dtype_cast_to_the_input_dtype(tmp_path, blob_dtype, want):
    conn = sqlite3.connect(tmp_path / "b.db")
    conn.execute("CREATE TABLE samples (ids BLOB, label INTEGER)")
    arr = np.array([[1, 5, 9, 0], [2, 2, 3, 4]])
    for row in arr:
        conn.execute("INSERT INTO samples VALUES (?, 1)", (row.astype(blob_dtype).tobytes(),))
    conn.commit()
    conn.close()
    src = DataSource(path=str(tmp_path / "b.db"), blob_column="ids", blob_dtype=blob_dtype)
    input_dtype = "int64" if blob_dtype == "int64" else "float32"
    s = read_for_bundle(src, _manifest(kind="binary", features=4, input_dtype=input_dtype))
    assert s.x.dtype == want and s.x.tolist() == arr.tolist()
    with pytest.raises(DataError, match="holds 4 .* values per row but the model's input"):
        read_for_bundle(src, _manifest(kind="binary", features=6, input_dtype=input_dtype))


def _token_manifest(vocab: int = 50) -> Manifest:
    m = toy_manifest()
    m["inputs"][0].update(
        dtype="int64", shape=[None, 3], ids={"below": vocab, "module": "encoder.embed"}
    )
    return Manifest.from_dict(m, draft=True)


def test_token_ids_past_the_embedding_are_refused_with_rows_and_the_module(tmp_path):
    rows = [(1, 2, 3, 0)] * 5 + [(1, 60, 2, 1), (4, 5, 6, 1), (-1, 0, 0, 2)]
    src = _db(tmp_path / "t.db", 3, rows, types="INTEGER")
    with pytest.raises(DataError) as err:
        read_for_bundle(src, _token_manifest())
    msg = str(err.value)
    assert "2 rows have an id outside the model's input 'input' range 0..49" in msg
    assert "(row 6: 60, row 8: -1)" in msg
    assert "the Embedding 'encoder.embed' has 50 rows" in msg
    # within the table: accepted
    good = _db(tmp_path / "g.db", 3, [(1, 2, 49, 0)] * 4, types="INTEGER")
    assert read_for_bundle(good, _token_manifest()).array.max() == 49


def test_the_id_range_survives_the_manifest_round_trip_and_is_for_integer_inputs():
    m = _token_manifest(7)
    body = {k: v for k, v in m.to_dict().items() if k != "content_hash"}
    spec = Manifest.from_dict(body, draft=True).input
    assert (spec.ids_below, spec.ids_module) == (7, "encoder.embed")
    raw = toy_manifest()
    assert "ids" not in Manifest.from_dict(raw, draft=True).input.to_dict()  # hash kept
    raw["inputs"][0]["ids"] = {"below": 7, "module": "embed"}
    with pytest.raises(BundleError, match="'inputs\\[0\\].ids' is for integer inputs"):
        Manifest.from_dict(raw, draft=True)
