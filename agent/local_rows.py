"""The device's rows, read again only when the data file may have changed.

Reading and conforming a device's rows cost ~5-20 ms a round on a 2-core machine (a digits
device's ~180 rows), every round, although the user's data rarely changes between two rounds.
This cache keeps the last conformed ``Samples`` and returns them while nothing that decides
them changed. The key is taken before the read (a write during the read makes the next key
differ, so it is read again, never missed):

- the data source (path, table or query, columns, filter), the bundle's content hash and the
  run's standardization: another source or model reads afresh;
- the file's identity and state: device and inode (a replaced file), size, modification and
  change times, SQLite's file change counter (bumped by every commit in rollback-journal
  mode), and for a WAL database the ``-wal`` file's size, times and header (its salts change
  at every WAL restart) and the ``-shm`` index header (its change counter and last frame move
  at every commit).

A filter or query that reads the clock or a random source (``datetime('now', ...)``,
``random()``, ``CURRENT_TIMESTAMP``...) can select other rows with no change to the file: such
sources are read every round, as before. The cached arrays are made read-only, so a caller that
tried to change them in place would fail loudly instead of corrupting the next round's rows.
"""

from __future__ import annotations

import os
import re

import numpy as np

from fedge.protocol.data_contract import read_for_bundle
from fedge.protocol.sqlite_samples import DataSource, Samples, input_arrays

# SQL words whose value changes without any write to the file
_VOLATILE = re.compile(
    r"\b(now|current_date|current_time|current_timestamp|random|randomblob|date|time|datetime"
    r"|julianday|unixepoch|strftime|timediff|changes|total_changes|last_insert_rowid)\b",
    re.IGNORECASE,
)


def _file_state(path: str, header: tuple[int, int] | None) -> tuple[object, ...]:
    """(dev, ino, size, mtime, ctime, header bytes) of one file; () if it does not exist."""
    try:
        st = os.stat(path)
        head = b""
        if header is not None:
            with open(path, "rb") as f:
                f.seek(header[0])
                head = f.read(header[1])
    except OSError:
        return ()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, head)


def data_file_state(path: str) -> tuple[object, ...]:
    """What changes whenever a committed write lands in the SQLite file at ``path`` (or in
    its WAL): see the module docstring."""
    return (
        _file_state(path, (24, 4)),  # file change counter
        _file_state(f"{path}-wal", (0, 32)),  # WAL header: checkpoint sequence, salts
        _file_state(f"{path}-shm", (0, 48)),  # wal-index header: change counter, last frame
    )


def is_volatile(src: DataSource) -> bool:
    """Whether the source's SQL may select other rows with no write to the file."""
    return bool(_VOLATILE.search(src.where) or _VOLATILE.search(src.query))


class LocalRowCache:
    """The last conformed rows of one data source, reused while the key is unchanged."""

    def __init__(self) -> None:
        self._key: tuple[object, ...] | None = None
        self._samples: Samples | None = None
        self.reads = 0  # rows actually read from the file (tests, logs)

    def read(
        self,
        src: DataSource,
        bundle,
        standardization: tuple[list[float], list[float]] | None = None,
    ) -> Samples:
        """The rows of ``src`` conformed for ``bundle`` (``read_for_bundle``), from the cache
        when neither the file nor the request changed; ``DataError`` as ``read_for_bundle``."""
        key: tuple[object, ...] | None = None
        if not is_volatile(src):
            key = (repr(src), bundle.content_hash, repr(standardization), data_file_state(src.path))
        if key is not None and key == self._key and self._samples is not None:
            return self._samples
        self._key, self._samples = None, None  # a failed read leaves nothing stale behind
        samples = read_for_bundle(src, bundle.manifest, standardization)
        self.reads += 1
        for array in (*input_arrays(samples.x), samples.y):
            if isinstance(array, np.ndarray):
                array.setflags(write=False)
        if key is not None:
            self._key, self._samples = key, samples
        return samples
