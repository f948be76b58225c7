"""Pub-sub topics: an ordered log of Arrow batches with offsets, retention and subscribers.

A topic is a plain class hosted by a Ray actor. Publishing appends rows and gives
them consecutive offsets; subscribers (other actors with an ``on_batch(table)``
method) get every batch pushed, in order; readers can also pull from any offset
still retained. Retention is by rows, bytes and age: the oldest batches are
dropped first, and a reader asking for a dropped offset gets the log from where it
now starts.

Consumer groups pull with at-least-once delivery: ``poll`` hands out rows after
the group's position, ``commit`` records what the group has processed, and a group
that restarts (``seek_committed``) is given again everything after its last commit.

>>> t2 = Topic("events")
>>> _ = t2.publish(pa.table({"x": [1, 2, 3]}))
>>> t2.poll("g", max_rows=2).column("x").to_pylist()
[1, 2]
>>> t2.commit("g", 1)         # processed offset 0 only, then crashed
>>> t2.seek_committed("g")
1
>>> t2.poll("g").column("x").to_pylist()
[2, 3]

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

import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from runtime.handles import Handle, ready, resolve

OFFSET = "_offset"
MAX_PENDING = 16


class Topic:
    def __init__(
        self,
        name: str,
        retention_rows: int = 1_000_000,
        retention_bytes: int | None = None,
        retention_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.retention_rows = retention_rows
        self.retention_bytes = retention_bytes
        self.retention_seconds = retention_seconds
        self.now = clock
        self._log: list[tuple[int, pa.Table]] = []  # (first offset, rows)
        self._born: list[float] = []  # when each batch was published, for age retention
        self._bytes = 0
        self._positions: dict[str, int] = {}  # consumer group -> next offset to hand out
        self._committed: dict[str, int] = {}  # consumer group -> first offset not processed
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
        self._born.append(self.now())
        self._next += rows.num_rows
        self._retained += rows.num_rows
        self._bytes += rows.nbytes
        self._expire()
        with_offsets = rows.append_column(OFFSET, pa.array(range(first, self._next), pa.int64()))
        for sub in self._subscribers.values():
            self._pending.append(sub.call("on_batch", with_offsets))
        self.max_pending_seen = max(self.max_pending_seen, len(self._pending))
        if len(self._pending) > MAX_PENDING:  # a slow subscriber slows publishers
            done, self._pending = ready(self._pending, len(self._pending) - MAX_PENDING)
            resolve(done)
        return self._next

    def _expire(self) -> None:
        """Drop the oldest batches beyond the row, byte and age limits (never the newest)."""
        limit = self.now() - self.retention_seconds if self.retention_seconds else None
        while len(self._log) > 1:
            oldest = self._log[0][1]
            over_rows = self._retained - oldest.num_rows >= self.retention_rows
            over_bytes = self.retention_bytes is not None and self._bytes > self.retention_bytes
            too_old = limit is not None and self._born[0] < limit
            if not (over_rows or over_bytes or too_old):
                break
            self._log.pop(0)
            self._born.pop(0)
            self._retained -= oldest.num_rows
            self._bytes -= oldest.nbytes

    def first_offset(self) -> int:
        """The oldest offset still retained."""
        return self._log[0][0] if self._log else self._next

    # -- consumer groups (pull, at-least-once) --------------------------------------------
    def poll(self, group: str, max_rows: int = 10_000, start: str = "earliest") -> pa.Table:
        """The next rows for ``group`` (with ``_offset``); a new group starts at the
        ``earliest`` retained offset or the ``latest`` (only what comes next)."""
        if group not in self._positions:
            self._positions[group] = self._committed.get(
                group, self.first_offset() if start == "earliest" else self._next
            )
        rows = self.read(max(self._positions[group], self.first_offset()), max_rows)
        if rows.num_rows:
            self._positions[group] = int(rows.column(OFFSET)[-1].as_py()) + 1
        return rows

    def commit(self, group: str, offset: int) -> None:
        """``group`` processed everything before ``offset`` (acknowledged)."""
        self._committed[group] = max(self._committed.get(group, 0), int(offset))

    def committed(self, group: str) -> int | None:
        return self._committed.get(group)

    def seek_committed(self, group: str) -> int:
        """Rewind ``group`` to its last commit: what it polled since is delivered again."""
        self._positions[group] = self._committed.get(group, self.first_offset())
        return self._positions[group]

    def groups(self) -> dict[str, dict[str, int]]:
        """Per group: position, committed offset and lag (rows not yet committed)."""
        out = {}
        for g, pos in self._positions.items():
            c = self._committed.get(g, self.first_offset())
            out[g] = {"position": pos, "committed": c, "lag": self._next - c}
        return out

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
            "first_offset": self.first_offset(),
            "retained_rows": self._retained,
            "retained_bytes": self._bytes,
            "pending": len(self._pending),
            "max_pending_seen": self.max_pending_seen,
        }
