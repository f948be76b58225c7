"""Subscribers that write what a topic carries somewhere durable.

>>> import tempfile, pyarrow as pa
>>> sink = TableSink(tempfile.mkdtemp(), "alerts", key="event_id", flush_rows=10)
>>> sink.on_batch(pa.table({"event_id": [1, 2], "_offset": [0, 1]}))
>>> sink.on_batch(pa.table({"event_id": [2], "_offset": [2]}))   # a redelivery
>>> sink.flush()
2
"""

from __future__ import annotations

import datetime
import time

import pyarrow as pa
import pyarrow.compute as pc

from runtime.cluster.heap import trim_heap
from runtime.cluster.wire import unpack
from runtime.observe.raymirror import in_ray
from runtime.state.store import Store
from runtime.topics.topic import OFFSET, PARTITION


class BufferedSink:
    """Collects what a topic delivers and writes it in batches of ``flush_rows``.

    Subclasses say how to write (``_write``) and may reshape rows on the way in
    (``_prepare``); topic offsets are dropped before either sees the rows.
    """

    def __init__(self, flush_rows: int) -> None:
        self.flush_rows = flush_rows
        self._buf: list[pa.Table] = []
        self._rows = 0
        self.written = 0

    def _prepare(self, rows: pa.Table) -> pa.Table:
        return rows

    def _write(self, data: pa.Table) -> None:
        raise NotImplementedError

    def on_batch(self, rows: pa.Table) -> None:
        # here, where the last flush's tables and LanceDB's buffers are gone (right after
        # the write they are still held: see runtime.cluster.heap)
        trim_heap()
        rows = unpack(rows)  # topics push batches packed (runtime.cluster.wire)
        if rows.num_rows == 0:  # nothing to write (an empty write trips the key dedup)
            return
        drop = [c for c in (OFFSET, PARTITION) if c in rows.column_names]
        if drop:  # where a row sat in the topic is not part of it
            rows = rows.drop_columns(drop)
        rows = self._prepare(rows)
        self._buf.append(rows)
        self._rows += rows.num_rows
        if self._rows >= self.flush_rows:
            self.flush()

    def flush(self) -> int:
        """Write what is buffered; returns the rows written so far."""
        trim_heap()  # a sink no rows come to trims at the checkpoints' flushes
        if self._buf:
            data = pa.concat_tables(self._buf, promote_options="default")
            self._buf, self._rows = [], 0
            self._write(data)
            self.written += data.num_rows
        return self.written


class TableSink(BufferedSink):
    """Write a topic to a LanceDB table, batched; with ``key`` an idempotent upsert.

    Upserting by a key makes redelivery harmless: a batch published again after a
    restart (at-least-once) leaves one row per key.
    """

    #: one process per node hosts the table sinks and the status board
    #: (runtime.cluster.host): a sink idles between flushes to a local folder
    edgecore_hostable = True

    def __init__(
        self,
        data_dir: str,
        table: str,
        key: str | tuple[str, ...] | None = None,
        flush_rows: int = 50_000,
        compact_every: int = 20,
    ) -> None:
        super().__init__(flush_rows)
        # under Ray, LanceDB is imported as the sink starts, in the background: imported at
        # its first flush, it cost a replay's alerts sink 1.4 s of CPU inside the run (its
        # namespace client's pydantic models), with the shards on the same two cores
        self.store = Store(data_dir, writer=True, warm=in_ray())  # WRITER_METADATA_CACHE_MB
        self.table = table
        self.key = key
        self.compact_every = compact_every
        self._writes = 0

    def _write(self, data: pa.Table) -> None:
        if self.key:
            # last write wins inside one flush too
            data = data.take(_last_per_key(data, self.key))
            self.store.upsert(self.table, data, key=self.key)
        else:
            self.store.append(self.table, data)
        self._writes += 1
        if self._writes % self.compact_every == 0:  # bound fragments and versions
            self.store.compact(self.table, keep_newer_than=time.time() - 60)
            self.store.forget_cached()  # what LanceDB cached of the versions just deleted

    def flush(self) -> int:
        """Write what is buffered; returns the table's row count."""
        super().flush()
        return self.store.table(self.table).count_rows() if self.store.exists(self.table) else 0


def _last_per_key(data: pa.Table, key: str | tuple[str, ...]) -> pa.Array:
    """Row indices keeping the last row of each key (one column or several together)."""
    if not isinstance(key, str):
        rows = data.select(list(key)).append_column("_row", pa.array(range(data.num_rows)))
        last = rows.group_by(list(key), use_threads=False).aggregate([("_row", "max")])
        rows_kept = last.column("_row_max")
        return pc.take(rows_kept, pc.sort_indices(rows_kept))  # in arrival order
    keys = data.column(key)
    n = len(keys)
    rev = pc.unique(keys.take(pa.array(range(n - 1, -1, -1))))
    idx_rev = pc.index_in(rev, keys.take(pa.array(range(n - 1, -1, -1))))
    return pc.subtract(n - 1, idx_rev)


class ParquetSink(BufferedSink):
    """Append a topic to a Hive-partitioned Parquet dataset, for analytics.

    Rows are partitioned by ``partition_by`` columns; a ``date`` partition is derived
    from ``time_column`` when the rows have none (``alerts/date=2026-01-01/...``); rows
    without it take their first timestamp column, else the day they are written.
    Delivery is at-least-once: after a restart, rows may be written again.

    >>> import tempfile, pyarrow as pa, datetime as dt
    >>> root = tempfile.mkdtemp()
    >>> sink = ParquetSink(root)
    >>> sink.on_batch(pa.table({"ts": [dt.datetime(2026, 1, 1, 5)], "x": [1]}))
    >>> sink.flush()
    1
    >>> sorted(p.name for p in __import__("pathlib").Path(root).iterdir())
    ['date=2026-01-01']
    """

    #: hosted with the table sinks (runtime.cluster.host): it writes to a local folder
    edgecore_hostable = True

    def __init__(
        self,
        root: str,
        partition_by: tuple[str, ...] = ("date",),
        time_column: str | None = "ts",
        flush_rows: int = 50_000,
        dictionary: bool = True,
    ) -> None:
        super().__init__(flush_rows)
        #: dictionary encoding makes Parquet smaller for repetitive strings but costs most
        #: of the writing time (2-3x); a sink on the hot path turns it off
        self.dictionary = dictionary
        self.root = root
        self.partition_by = list(partition_by)
        self.time_column = time_column

    def _prepare(self, rows: pa.Table) -> pa.Table:
        if "date" in self.partition_by and "date" not in rows.column_names:
            rows = rows.append_column("date", self._day(rows))
        return rows

    def _day(self, rows: pa.Table) -> pa.Array | pa.ChunkedArray:
        """Each row's date: from ``time_column``, else the first timestamp column (None:
        look for one), else the day it is written."""
        col = self.time_column if self.time_column in rows.column_names else None
        if col is None:
            col = next(
                (f.name for f in rows.schema if pa.types.is_timestamp(f.type)),
                None,
            )
        if col is not None:
            # a cast, not strftime: strftime costs ~2 us a row, a cast next to nothing
            day = pc.cast(rows.column(col), pa.date32())
            return day if day.null_count == 0 else pc.fill_null(day, pa.scalar(_today()))
        return pa.array([_today()] * rows.num_rows, pa.date32())

    def _write(self, data: pa.Table) -> None:
        """New files each time (a unique name), never rewriting what is there."""
        import uuid

        import pyarrow.dataset as ds

        options = ds.ParquetFileFormat().make_write_options(use_dictionary=self.dictionary)
        ds.write_dataset(
            data,
            self.root,
            format="parquet",
            file_options=options,
            partitioning=self.partition_by,
            partitioning_flavor="hive",
            existing_data_behavior="overwrite_or_ignore",
            basename_template=f"part-{uuid.uuid4().hex}-{{i}}.parquet",
        )


def _today() -> datetime.date:
    return datetime.datetime.now(datetime.UTC).date()


class WebhookSink:
    """POST each batch as a JSON array to ``url``; retry with exponential backoff, then
    write the batch to the ``<name>_failed`` table of the data folder with the reason.

    Nothing is dropped silently: every row is either acknowledged by the webhook (a 2xx)
    or stored as failed.
    """

    def __init__(
        self,
        url: str,
        data_dir: str,
        name: str = "webhook",
        retries: int = 4,
        backoff_s: float = 0.2,
        timeout_s: float = 5.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.url, self.retries, self.backoff_s, self.timeout_s = url, retries, backoff_s, timeout_s
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.store = Store(data_dir, writer=True)  # see WRITER_METADATA_CACHE_MB
        self.failed_table = f"{name}_failed"
        self.delivered = 0
        self.failed = 0

    def on_batch(self, rows: pa.Table) -> None:
        import json
        import urllib.request

        trim_heap()  # what the last batch's JSON freed (see BufferedSink.on_batch)
        rows = unpack(rows)
        body = json.dumps(rows.to_pylist(), default=str).encode()
        reason = ""
        for attempt in range(self.retries + 1):
            try:
                req = urllib.request.Request(
                    self.url, data=body, headers=self.headers, method="POST"
                )
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    if 200 <= resp.status < 300:
                        self.delivered += rows.num_rows
                        return
                    reason = f"HTTP {resp.status}"
            except Exception as err:  # HTTP errors, refused connections, time-outs
                reason = f"{type(err).__name__}: {err}"
            if attempt < self.retries:
                time.sleep(self.backoff_s * 2**attempt)
        failed = pa.table(
            {
                "payload": [json.dumps(r, default=str)[:4096] for r in rows.to_pylist()],
                "reason": [f"after {self.retries + 1} attempts: {reason}"] * rows.num_rows,
                "failed_at": pa.array([time.time()] * rows.num_rows, pa.float64()),
            }
        )
        self.store.append(self.failed_table, failed)
        self.failed += rows.num_rows

    def flush(self) -> dict[str, int]:
        return {"delivered": self.delivered, "failed": self.failed}
