"""The agent's row cache goes stale exactly when the data file (or the request) changes."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from support.toy_bundle import write_toy_bundle

from fedge.agent.local_rows import LocalRowCache, is_volatile
from fedge.demo.data import write_samples_sqlite
from fedge.protocol.bundle import load_bundle
from fedge.protocol.sqlite_samples import DataSource


@pytest.fixture
def setup(tmp_path: Path):
    rng = np.random.default_rng(0)
    path = write_samples_sqlite(
        tmp_path / "data.db",
        rng.random((20, 3), dtype=np.float32),
        rng.integers(0, 2, 20).astype(np.int64),
    )
    return Path(path), load_bundle(write_toy_bundle(tmp_path / "bundle"))


def _first_feature(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        cols = [r[1] for r in conn.execute("PRAGMA table_info(samples)")]
    return next(c for c in cols if c.startswith("f"))


def test_unchanged_file_is_read_once_and_the_rows_are_read_only(setup):
    path, bundle = setup
    cache = LocalRowCache()
    first = cache.read(DataSource(path=str(path)), bundle)
    again = cache.read(DataSource(path=str(path)), bundle)
    assert cache.reads == 1 and again is first
    with pytest.raises(ValueError, match="read-only"):
        first.x[0, 0] = 1.0


@pytest.mark.parametrize("wal", [False, True])
def test_an_in_place_update_is_seen_even_with_a_writer_holding_the_file_open(setup, wal):
    path, bundle = setup
    col = _first_feature(path)
    writer = sqlite3.connect(path, isolation_level=None)
    if wal:
        writer.execute("PRAGMA journal_mode=WAL")
    cache = LocalRowCache()
    src = DataSource(path=str(path))
    before = cache.read(src, bundle).x[0, 0]
    cache.read(src, bundle)
    assert cache.reads == 1
    # same size, maybe the same mtime tick: the change counters must tell
    writer.execute(f'UPDATE samples SET "{col}" = 0.5 WHERE rowid = 1')
    after = cache.read(src, bundle)
    assert cache.reads == 2 and after.x[0, 0] == pytest.approx(0.5) != before
    writer.close()


def test_a_replaced_file_and_another_request_are_read_afresh(setup, tmp_path):
    path, bundle = setup
    cache = LocalRowCache()
    cache.read(DataSource(path=str(path)), bundle)
    cache.read(DataSource(path=str(path), where="label = 1"), bundle)
    assert cache.reads == 2
    rng = np.random.default_rng(1)
    other = write_samples_sqlite(
        tmp_path / "new.db",
        rng.random((7, 3), dtype=np.float32),
        rng.integers(0, 2, 7).astype(np.int64),
    )
    os.replace(other, path)
    assert len(cache.read(DataSource(path=str(path), where="label = 1"), bundle)) <= 7
    assert cache.reads == 3


def test_a_filter_that_reads_the_clock_is_never_cached(setup):
    path, bundle = setup
    src = DataSource(path=str(path), where="julianday('now') > 0")
    assert is_volatile(src) and not is_volatile(DataSource(path=str(path), where="label = 1"))
    cache = LocalRowCache()
    cache.read(src, bundle)
    cache.read(src, bundle)
    assert cache.reads == 2
