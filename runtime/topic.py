"""Pub-sub topics: an ordered log of Arrow batches with offsets, retention and subscribers.

A topic is a plain class hosted by a Ray actor. Publishing appends rows and gives
them consecutive offsets; subscribers (other actors with an ``on_batch(table)``
method) get every batch pushed, in order; readers can also pull from any offset
still retained. Retention is by row count: older batches are dropped, and a
reader asking for a dropped offset is told where the log now starts.

>>> import pyarrow as pa
>>> t = Topic("alerts", retention_rows=10)
>>> t.publish(pa.table({"x": [1, 2]}))
2
>>> t.publish(pa.table({"x": [3]}))
3
>>> t.read(1).column("x").to_pylist()
[2, 3]
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from runtime.handles import Handle, ready, resolve

OFFSET = "_offset"
MAX_PENDING = 16


class Topic:
    def __init__(self, name: str, retention_rows: int = 1_000_000) -> None:
        self.name = name
        self.retention_rows = retention_rows
        self._log: list[tuple[int, pa.Table]] = []  # (first offset, rows)
        self._next = 0
        self._retained = 0
        self._subscribers: dict[str, Handle] = {}
        self._pending: list[Any] = []
        self.max_pending_seen = 0

    def publish(self, rows: pa.Table) -> int:
        """Append ``rows``; returns the next offset (the log's end)."""
        if rows.num_rows == 0:
            return self._next
        first = self._next
        self._log.append((first, rows))
        self._next += rows.num_rows
        self._retained += rows.num_rows
        while (
            self._retained - self._log[0][1].num_rows >= self.retention_rows and len(self._log) > 1
        ):
            self._retained -= self._log.pop(0)[1].num_rows
        with_offsets = rows.append_column(OFFSET, pa.array(range(first, self._next), pa.int64()))
        for sub in self._subscribers.values():
            self._pending.append(sub.call("on_batch", with_offsets))
        self.max_pending_seen = max(self.max_pending_seen, len(self._pending))
        if len(self._pending) > MAX_PENDING:  # a slow subscriber slows publishers
            done, self._pending = ready(self._pending, len(self._pending) - MAX_PENDING)
            resolve(done)
        return self._next

    def read(self, offset: int = 0, max_rows: int = 100_000) -> pa.Table:
        """Rows from ``offset`` on (from the start of retention if older), with ``_offset``."""
        parts, taken = [], 0
        for first, rows in self._log:
            end = first + rows.num_rows
            if end <= offset:
                continue
            part = rows.slice(max(0, offset - first))
            start = max(first, offset)
            part = part.slice(0, max_rows - taken)
            parts.append(
                part.append_column(
                    OFFSET, pa.array(range(start, start + part.num_rows), pa.int64())
                )
            )
            taken += part.num_rows
            if taken >= max_rows:
                break
        if not parts:
            return pa.table({OFFSET: pa.array([], pa.int64())})
        return pa.concat_tables(parts, promote_options="default")

    def subscribe(self, name: str, handle: Handle, from_offset: int | None = None) -> None:
        """Push every future batch to ``handle.on_batch`` (replaying from ``from_offset``)."""
        self._subscribers[name] = handle
        if from_offset is not None:
            backlog = self.read(from_offset, max_rows=max(1, self._next - from_offset))
            if backlog.num_rows:
                self._pending.append(handle.call("on_batch", backlog))

    def flush(self) -> int:
        """Wait until subscribers took every batch, and ask them to flush; returns the end offset."""
        resolve(self._pending)
        self._pending = []
        resolve([s.call("flush") for s in self._subscribers.values()])
        return self._next

    def end_offset(self) -> int:
        return self._next

    def stats(self) -> dict[str, int]:
        """Offsets, rows retained, and deliveries waiting for subscribers (now and at most)."""
        return {
            "end_offset": self._next,
            "retained_rows": self._retained,
            "pending": len(self._pending),
            "max_pending_seen": self.max_pending_seen,
        }
