"""Subscribers that write what a topic carries somewhere durable.

>>> import tempfile, pyarrow as pa
>>> sink = TableSink(tempfile.mkdtemp(), "alerts", key="event_id", flush_rows=10)
>>> sink.on_batch(pa.table({"event_id": [1, 2], "_offset": [0, 1]}))
>>> sink.on_batch(pa.table({"event_id": [2], "_offset": [2]}))   # a redelivery
>>> sink.flush()
2
"""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.compute as pc

from runtime.store import Store
from runtime.topic import OFFSET


class TableSink:
    """Write a topic to a LanceDB table, batched; with ``key`` an idempotent upsert.

    Upserting by a key makes redelivery harmless: a batch published again after a
    restart (at-least-once) leaves one row per key.
    """

    def __init__(
        self,
        data_dir: str,
        table: str,
        key: str | None = None,
        flush_rows: int = 50_000,
        compact_every: int = 20,
    ) -> None:
        self.store = Store(data_dir)
        self.table = table
        self.key = key
        self.flush_rows = flush_rows
        self._buf: list[pa.Table] = []
        self._rows = 0
        self.written = 0
        self.compact_every = compact_every
        self._writes = 0

    def on_batch(self, rows: pa.Table) -> None:
        if OFFSET in rows.column_names:
            rows = rows.drop_columns([OFFSET])
        self._buf.append(rows)
        self._rows += rows.num_rows
        if self._rows >= self.flush_rows:
            self.flush()

    def flush(self) -> int:
        """Write what is buffered; returns the table's row count."""
        if self._buf:
            data = pa.concat_tables(self._buf, promote_options="default")
            self._buf, self._rows = [], 0
            if self.key:
                # last write wins inside one flush too
                data = data.take(_last_per_key(data.column(self.key)))
                self.store.upsert(self.table, data, key=self.key)
            else:
                self.store.append(self.table, data)
            self.written += data.num_rows
            self._writes += 1
            if self._writes % self.compact_every == 0:  # bound fragments and versions
                self.store.compact(self.table, keep_newer_than=time.time() - 60)
        return self.store.table(self.table).count_rows() if self.store.exists(self.table) else 0


def _last_per_key(keys: pa.ChunkedArray) -> pa.Array:
    """Row indices keeping the last row of each key."""
    n = len(keys)
    rev = pc.unique(keys.take(pa.array(range(n - 1, -1, -1))))
    idx_rev = pc.index_in(rev, keys.take(pa.array(range(n - 1, -1, -1))))
    return pc.subtract(n - 1, idx_rev)
