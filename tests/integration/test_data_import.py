"""``fedge data import``: real CSV / JSON / JSON-lines files -> the device's SQLite table ->
``fedge data check`` reads them as the agent would."""

from __future__ import annotations

import csv
import json
import re
import sqlite3
import subprocess
import sys

import pytest
from sklearn.datasets import load_wine

from fedge.agent.data_import import import_file
from fedge.protocol.sqlite_samples import DataError

pytestmark = pytest.mark.integration

FEATURES = [f"f{i}" for i in range(13)]


@pytest.fixture(scope="module")
def wine() -> list[dict]:
    """scikit-learn's wine data (178 samples, 13 float features, labels 0/1/2) as records."""
    data = load_wine()
    return [
        {**{f: float(v) for f, v in zip(FEATURES, x, strict=True)}, "label": int(y)}
        for x, y in zip(data.data, data.target, strict=True)
    ]


def _write_csv(path, records, delimiter=","):
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(records[0]), delimiter=delimiter)
        w.writeheader()
        w.writerows(records)
    return path


def _fedge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedge", "data", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _config(tmp_path, db, table="samples"):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'validation_fraction = 0.2\n[data]\npath = "{db}"\ntable = "{table}"\n')
    return str(cfg)


def _count(db, table="samples") -> int:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0]
    finally:
        conn.close()


def test_a_csv_file_becomes_a_typed_table_that_data_check_accepts(tmp_path, wine):
    src = _write_csv(tmp_path / "wine.csv", wine)
    db = tmp_path / "readings.db"
    cfg = _config(tmp_path, db)
    proc = _fedge("import", str(src), "--config", cfg)
    assert proc.returncode == 0, proc.stderr
    assert f"Imported 178 rows (csv) into new table 'samples' of {db}" in proc.stdout
    assert "f0 REAL" in proc.stdout and "label INTEGER" in proc.stdout

    check = _fedge("check", "--config", cfg)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "columns:     f0 REAL, f1 REAL," in check.stdout
    assert "rows:        178 in the table, 178 selected" in check.stdout
    assert "features:    [13] float32 per sample" in check.stdout
    assert "labels:      0: 59, 1: 71, 2: 48" in check.stdout

    # the same file again appends; --replace starts the table afresh
    assert _fedge("import", str(src), "--config", cfg).returncode == 0
    assert _count(db) == 356
    again = _fedge("import", str(src), "--config", cfg, "--replace")
    assert again.returncode == 0, again.stderr
    assert _count(db) == 178


def test_json_then_json_lines_append_to_one_table(tmp_path, wine):
    first = tmp_path / "part1.json"
    first.write_text(json.dumps(wine[:100]))
    second = tmp_path / "part2.data"  # JSON lines recognised by content, not by suffix
    second.write_text("\n".join(json.dumps(r) for r in wine[100:]) + "\n")
    db = tmp_path / "readings.db"
    a = import_file(first, db, "samples")
    b = import_file(second, db, "samples")
    assert (a.rows, a.format, a.created) == (100, "json", True)
    assert (b.rows, b.format, b.created) == (78, "jsonl", False)
    assert dict(a.columns)["f0"] == "REAL" and dict(a.columns)["label"] == "INTEGER"
    check = _fedge("check", "--config", _config(tmp_path, db))
    assert check.returncode == 0, check.stdout
    assert "rows:        178 in the table, 178 selected" in check.stdout


def test_a_tsv_file_into_a_named_table(tmp_path, wine):
    src = _write_csv(tmp_path / "wine.tsv", wine[:30], delimiter="\t")
    db = tmp_path / "readings.db"
    proc = _fedge("import", str(src), "--config", _config(tmp_path, db), "--table", "wine")
    assert proc.returncode == 0, proc.stderr
    assert "(tsv) into new table 'wine'" in proc.stdout
    assert _count(db, "wine") == 30


def test_bad_input_is_one_error_line_and_leaves_the_table_as_it_was(tmp_path, wine):
    db = tmp_path / "readings.db"
    cfg = _config(tmp_path, db)
    import_file(_write_csv(tmp_path / "good.csv", wine[:10]), db, "samples")

    missing = _fedge("import", str(tmp_path / "nope.csv"), "--config", cfg)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert missing.stderr.strip() == f"Error: input file {tmp_path / 'nope.csv'} does not exist"

    bad = tmp_path / "bad.csv"
    lines = ["f0,f1,label"] + [f"{i}.5,{i},{i % 2}" for i in range(20)] + ["1,2,3,4"]
    bad.write_text("\n".join(lines) + "\n")
    proc = _fedge("import", str(bad), "--config", cfg)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "row 21 (after the header) has more values than the header" in proc.stderr
    assert _count(db) == 10  # nothing of the bad file was written


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.csv", "", "is empty: nothing to import"),
        ("blank.csv", "\n  \n", "is empty: nothing to import"),
        ("header.csv", "f0,f1,label\n", "has a header but no rows"),
        ("short.csv", "f0,f1,label\n1,2,0\n3,4\n", "row 2 (after the header) has fewer values"),
        ("broken.json", '[{"f0": 1, "label": 0},', "is not valid JSON"),
        ("scalars.json", "[1, 2, 3]", "record 1 is int, not an object"),
        ("nothing.json", "[]", "holds no records"),
        ("latin1.csv", "f0,label\n\xe9\xe9,1\n", "is not UTF-8 text"),
    ],
)
def test_unusable_files_name_the_problem(tmp_path, name, content, message):
    src = tmp_path / name
    src.write_bytes(content.encode("latin-1"))
    with pytest.raises(DataError, match=re.escape(message)):
        import_file(src, tmp_path / "readings.db", "samples")
    assert not (tmp_path / "readings.db").exists() or _count_tables(tmp_path / "readings.db") == 0


def _count_tables(db) -> int:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE type='table'").fetchone()[0]
    finally:
        conn.close()


def test_columns_the_table_lacks_are_named_with_the_table_schema(tmp_path, wine):
    db = tmp_path / "readings.db"
    import_file(_write_csv(tmp_path / "good.csv", wine[:10]), db, "samples")
    other = tmp_path / "other.csv"
    other.write_text("f0,temperature,label\n1.0,20.5,1\n")
    with pytest.raises(DataError) as err:
        import_file(other, db, "samples")
    text = str(err.value)
    assert "table 'samples' of" in text and "has no column 'temperature'" in text
    assert "columns are: f0 REAL, f1 REAL" in text and "--replace" in text
    assert _count(db) == 10
