"""A topic's storage: each partition's retained batches, and each consumer group's cursor.

>>> import pyarrow as pa
>>> log = PartitionLog()
>>> log.append(pa.table({"x": [1, 2]}), born=0.0), log.append(pa.table({"x": [3]}), born=1.0)
(0, 2)
>>> [(first, rows.num_rows) for first, rows in log.read(1, 10)]
[(1, 1), (2, 1)]
>>> log.expire(max_rows=1, max_bytes=None, cutoff=None); log.first()
2
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

OFFSET = "_offset"
PARTITION = "_partition"

_RELEASED = pa.table({})  # stands in for a dropped batch until the list is compacted


class PartitionLog:
    """One partition: its retained batches in offset order, and their accounting.

    Batches live in parallel lists searched with ``bisect``; dropped ones are released
    at once but their slots are only removed in bulk now and then, so dropping the
    oldest batch stays O(1) however many batches are retained.
    """

    def __init__(self) -> None:
        self.firsts: list[int] = []  # first offset of each batch
        self.tables: list[pa.Table] = []
        self.born: list[float] = []  # when each batch was published, for age retention
        #: the same on the wall clock (never decreasing), for ``--since`` and for the age
        #: of rows on disk, which must survive a restart
        self.walls: list[float] = []
        self.head = 0  # batches before this index were dropped
        self.next = 0  # the offset the next row gets
        self.rows = 0  # rows retained
        self.bytes = 0  # bytes retained

    def first(self) -> int:
        """The oldest offset still retained (``next`` when nothing is)."""
        return self.firsts[self.head] if self.head < len(self.firsts) else self.next

    def batches(self) -> int:
        return len(self.firsts) - self.head

    def append(self, rows: pa.Table, born: float, wall: float = 0.0) -> int:
        first = self.next
        self.firsts.append(first)
        self.tables.append(rows)
        self.born.append(born)
        self.walls.append(max(wall, self.walls[-1]) if self.walls else wall)
        self.next += rows.num_rows
        self.rows += rows.num_rows
        self.bytes += rows.nbytes
        return first

    def expire(self, max_rows: int, max_bytes: int | None, cutoff: float | None) -> None:
        """Drop the oldest batches beyond the row, byte and age limits (never the newest)."""
        while self.head < len(self.tables) - 1:
            oldest = self.tables[self.head]
            over_rows = self.rows - oldest.num_rows >= max_rows
            over_bytes = max_bytes is not None and self.bytes > max_bytes
            too_old = cutoff is not None and self.born[self.head] < cutoff
            if not (over_rows or over_bytes or too_old):
                break
            self.rows -= oldest.num_rows
            self.bytes -= oldest.nbytes
            self.tables[self.head] = _RELEASED  # memory back now, not at the next compaction
            self.head += 1
        if self.head > 64 and 2 * self.head > len(self.firsts):  # amortised O(1) per drop
            del self.firsts[: self.head], self.tables[: self.head], self.born[: self.head]
            del self.walls[: self.head]
            self.head = 0

    def read(self, offset: int, max_rows: int) -> list[tuple[int, pa.Table]]:
        """Up to ``max_rows`` rows from ``offset`` on (from the first retained if older),
        as (first offset, rows) slices."""
        out: list[tuple[int, pa.Table]] = []
        if max_rows <= 0 or offset >= self.next:
            return out
        i = max(self.head, bisect_right(self.firsts, offset, self.head) - 1)
        taken = 0
        while i < len(self.tables) and taken < max_rows:
            skip = max(0, offset - self.firsts[i])
            part = self.tables[i].slice(skip, max_rows - taken)
            if part.num_rows:
                out.append((self.firsts[i] + skip, part))
                taken += part.num_rows
            i += 1
        return out

    def reset(self, next_offset: int) -> None:
        """Start an empty log whose next row gets ``next_offset`` (after a restore)."""
        self.firsts, self.tables, self.born, self.walls = [], [], [], []
        self.head = self.rows = self.bytes = 0
        self.next = next_offset

    def retained(self, start: int) -> list[tuple[int, pa.Table, float]]:
        """(first offset, rows, wall time) of the retained batches from the one holding
        ``start`` on (``start`` is a batch boundary: where the last persist ended)."""
        i = max(self.head, bisect_right(self.firsts, start, self.head) - 1)
        return [(self.firsts[j], self.tables[j], self.walls[j]) for j in range(i, len(self.tables))]

    def swap(self, first: int, rows: pa.Table) -> None:
        """Put ``rows`` (the same rows, e.g. memory-mapped from disk) in place of the batch
        that starts at ``first``, if it is still retained."""
        i = bisect_right(self.firsts, first, self.head) - 1
        if i >= self.head and self.firsts[i] == first and self.tables[i].num_rows == rows.num_rows:
            self.bytes += rows.nbytes - self.tables[i].nbytes
            self.tables[i] = rows

    def offset_at(self, wall: float) -> int:
        """The first offset of the oldest retained batch published at or after ``wall``
        (wall-clock seconds); ``next`` if none was."""
        i = bisect_left(self.walls, wall, self.head)
        return self.firsts[i] if i < len(self.firsts) else self.next


@dataclass
class GroupCursor:
    """A consumer group's state, one entry per partition."""

    position: list[int]  # next offset to hand out
    #: every offset below was handed out or counted as skipped: a group that rewinds
    #: (seek_committed) and finds its rows gone did see them, so they are not skipped again
    delivered: list[int]
    origin: list[int]  # where the group started: its commit until it commits
    committed: list[int | None]  # first offset not processed, as the group said
    skipped: list[int]  # rows retention dropped before the group was handed them
    turn: int = 0  # rotates which partition gets the leftover of an uneven poll

    def resume_at(self, p: int) -> int:
        c = self.committed[p]
        return self.origin[p] if c is None else c


def next_offsets(rows: pa.Table) -> dict[int, int]:
    """What to ``commit`` after processing ``rows`` from ``poll``: per partition in them,
    the offset after the last one (a table without ``_partition``: partition 0).

    >>> next_offsets(pa.table({"_partition": [0, 1, 0], "_offset": [4, 9, 5]}))
    {0: 6, 1: 10}
    """
    if rows.num_rows == 0:
        return {}
    offsets = rows.column(OFFSET).to_numpy()
    if PARTITION not in rows.column_names:
        return {0: int(offsets.max()) + 1}
    parts = rows.column(PARTITION).to_numpy()
    top = np.full(int(parts.max()) + 1, -1, dtype=np.int64)
    np.maximum.at(top, parts, offsets)
    return {int(p): int(top[p]) + 1 for p in np.flatnonzero(top >= 0)}
