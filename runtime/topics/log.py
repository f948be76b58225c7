"""A topic's storage: each partition's retained batches, and each consumer group's cursor.

>>> import pyarrow as pa
>>> log = PartitionLog()
>>> log.append(pa.table({"x": [1, 2]}), born=0.0), log.append(pa.table({"x": [3]}), born=1.0)
(0, 2)
>>> [(first, rows.num_rows) for first, rows in log.read(1, 10)]
[(1, 2)]
>>> [(first, rows.column("x").to_pylist()) for first, rows in log.read(0, 10)]
[(0, [1, 2, 3])]
>>> log.expire(max_rows=1, max_bytes=None, cutoff=None); log.first(), log.batches()
(2, 1)
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

OFFSET = "_offset"
PARTITION = "_partition"

#: small batches are copied together into chunks of up to this many rows or bytes: every
#: Arrow table costs ~2-5 KB of C++ and Python objects however few its rows, and a shard
#: publishing a few alerts per apply held tens of thousands (311 MB of RSS for 18.5 MB of
#: rows in the soak); a larger batch is kept as it is, without a copy
CHUNK_ROWS = 8_192
CHUNK_BYTES = 256 * 1024
#: the open chunk's pieces are copied into one table once there are this many
_PIECES = 32

_RELEASED = pa.table({})  # stands in for a dropped chunk until the list is compacted


class PartitionLog:
    """One partition: its retained batches in offset order, and their accounting.

    Two layers. The *index* has one entry per published batch (its first offset, bytes,
    and publish times, in compact arrays searched with ``bisect``): retention and ages
    work per batch, as published. The *rows* live in chunks, each the rows of one or more
    consecutive batches; a chunk is released when retention has dropped all its batches.
    Dropped slots of both are removed in bulk now and then, so dropping the oldest
    batch stays O(1) however many are retained.
    """

    def __init__(self) -> None:
        self.firsts = array("q")  # first offset of each batch
        self.sizes = array("q")  # its bytes
        self.born = array("d")  # when each batch was published, for age retention
        #: the same on the wall clock (never decreasing), for ``--since`` and for the age
        #: of rows on disk, which must survive a restart
        self.walls = array("d")
        self.head = 0  # batches before this index were dropped
        self.next = 0  # the offset the next row gets
        self.rows = 0  # rows retained
        self.bytes = 0  # bytes retained
        self.chunk_firsts: list[int] = []  # contiguous, up to ``open_first``
        self.chunks: list[pa.Table] = []
        self.chunk_head = 0
        self.open: list[pa.Table] = []  # pieces of the chunk being filled, from open_first
        self.open_first = 0
        self.open_rows = self.open_bytes = 0

    def first(self) -> int:
        """The oldest offset still retained (``next`` when nothing is)."""
        return self.firsts[self.head] if self.head < len(self.firsts) else self.next

    def batches(self) -> int:
        return len(self.firsts) - self.head

    def chunk_count(self) -> int:
        """Tables held for the retained rows (what the memory overhead scales with)."""
        return len(self.chunks) - self.chunk_head + (1 if self.open else 0)

    # -- writing ------------------------------------------------------------------------------
    def append(self, rows: pa.Table, born: float, wall: float = 0.0) -> int:
        first, n, size = self.next, rows.num_rows, rows.nbytes
        large = n >= CHUNK_ROWS or size >= CHUNK_BYTES
        if large or (self.open and not rows.schema.equals(self.open[0].schema)):
            # a chunk has one schema (its first batch's metadata); a large batch is one alone
            self._seal()
        self._index(first, size, born, wall)
        self.next += n
        self.rows += n
        self.bytes += size
        if large:
            self._add_chunk(first, rows)
            self.open_first = self.next
            return first
        self.open.append(rows)
        self.open_rows += n
        self.open_bytes += size
        if self.open_rows >= CHUNK_ROWS or self.open_bytes >= CHUNK_BYTES:
            self._seal()
        elif len(self.open) >= _PIECES:
            self.open = [self._combined()]
        return first

    def _index(self, first: int, size: int, born: float, wall: float) -> None:
        self.firsts.append(first)
        self.sizes.append(size)
        self.born.append(born)
        self.walls.append(max(wall, self.walls[-1]) if len(self.walls) else wall)

    def _combined(self) -> pa.Table:
        if len(self.open) == 1:
            return self.open[0]
        return pa.concat_tables(self.open).combine_chunks()

    def _seal(self) -> None:
        """Close the open chunk (its pieces copied into one table)."""
        if self.open:
            self._add_chunk(self.open_first, self._combined())
        self.open, self.open_rows, self.open_bytes = [], 0, 0
        self.open_first = self.next

    def _add_chunk(self, first: int, rows: pa.Table) -> None:
        self.chunk_firsts.append(first)
        self.chunks.append(rows)

    def expire(self, max_rows: int, max_bytes: int | None, cutoff: float | None) -> None:
        """Drop the oldest batches beyond the row, byte and age limits (never the newest)."""
        last = len(self.firsts) - 1
        while self.head < last:
            n = self.firsts[self.head + 1] - self.firsts[self.head]
            over_rows = self.rows - n >= max_rows
            over_bytes = max_bytes is not None and self.bytes > max_bytes
            too_old = cutoff is not None and self.born[self.head] < cutoff
            if not (over_rows or over_bytes or too_old):
                break
            self.rows -= n
            self.bytes -= self.sizes[self.head]
            self.head += 1
        self._release(self.first())
        if self.head > 64 and 2 * self.head > len(self.firsts):  # amortised O(1) per drop
            for a in (self.firsts, self.sizes, self.born, self.walls):
                del a[: self.head]
            self.head = 0

    def _release(self, first: int) -> None:
        """Let go of the chunks whose every row is before ``first``."""
        c, chunks = self.chunk_head, self.chunks
        while c < len(chunks) and self.chunk_firsts[c] + chunks[c].num_rows <= first:
            chunks[c] = _RELEASED  # memory back now, not at the next compaction
            c += 1
        self.chunk_head = c
        if c > 64 and 2 * c > len(chunks):
            del self.chunk_firsts[:c], self.chunks[:c]
            self.chunk_head = 0

    # -- reading ------------------------------------------------------------------------------
    def read(self, offset: int, max_rows: int) -> list[tuple[int, pa.Table]]:
        """Up to ``max_rows`` rows from ``offset`` on (from the first retained if older),
        as (first offset, rows) slices."""
        offset = max(offset, self.first())
        return self._rows(offset, min(self.next, offset + max(0, max_rows)))

    def _rows(self, start: int, end: int) -> list[tuple[int, pa.Table]]:
        out: list[tuple[int, pa.Table]] = []
        if start >= end:
            return out
        c = max(self.chunk_head, bisect_right(self.chunk_firsts, start, self.chunk_head) - 1)
        # walk only the chunks the range spans (a read or a persist touches the newest few)
        while c < len(self.chunks) and self.chunk_firsts[c] < end:
            self._slice_into(out, self.chunk_firsts[c], self.chunks[c], start, end)
            c += 1
        if self.open and end > self.open_first:
            self.open = [self._combined()]
            self._slice_into(out, self.open_first, self.open[0], start, end)
        return out

    @staticmethod
    def _slice_into(
        out: list[tuple[int, pa.Table]], f: int, t: pa.Table, start: int, end: int
    ) -> None:
        lo, hi = max(start, f), min(end, f + t.num_rows)
        if hi > lo:
            out.append((lo, t.slice(lo - f, hi - lo)))

    def reset(self, next_offset: int) -> None:
        """Start an empty log whose next row gets ``next_offset`` (after a restore)."""
        self.__init__()  # type: ignore[misc]
        self.next = self.open_first = next_offset

    def retained(self, start: int) -> list[tuple[int, pa.Table, float]]:
        """(first offset, rows, wall time) of the retained batches from the one holding
        ``start`` on (``start`` is a batch boundary: where the last persist ended)."""
        i = max(self.head, bisect_right(self.firsts, start, self.head) - 1)
        out = []
        for j in range(i, len(self.firsts)):
            end = self.firsts[j + 1] if j + 1 < len(self.firsts) else self.next
            got = self._rows(self.firsts[j], end)
            rows = got[0][1] if len(got) == 1 else pa.concat_tables([t for _, t in got])
            out.append((self.firsts[j], rows, self.walls[j]))
        return out

    def attach(self, first: int, rows: pa.Table) -> None:
        """Hold ``rows`` (the same rows as offsets ``first``.., e.g. memory-mapped from disk)
        in place of the copies in memory; the index is unchanged."""
        end = first + rows.num_rows
        if end > self.next or rows.num_rows == 0:
            return
        self._seal()
        kept: list[tuple[int, pa.Table]] = []  # what lies outside first..end
        live = zip(
            self.chunk_firsts[self.chunk_head :], self.chunks[self.chunk_head :], strict=True
        )
        for f, t in live:
            e = f + t.num_rows
            if f < first:
                kept.append((f, t if e <= first else t.slice(0, first - f)))
            if e > end:
                s = max(f, end)
                kept.append((s, t.slice(s - f)))
        kept.append((first, rows))
        kept.sort(key=lambda ft: ft[0])
        self.chunk_firsts = [f for f, _ in kept]
        self.chunks = [t for _, t in kept]
        self.chunk_head = 0

    def load(
        self, rows: pa.Table, batches: list[tuple[int, int, float]], born: list[float]
    ) -> None:
        """Add ``rows`` read back from disk (offsets ``batches[0]``.. on, contiguous with
        ``next``) as one chunk: ``batches`` are (first offset, rows, wall time), ``born`` their
        publish times on the topic's clock."""
        if not batches:
            return
        self._seal()
        for (f, n, w), b in zip(batches, born, strict=True):
            self._index(f, rows.slice(f - batches[0][0], n).nbytes, b, w)
            self.rows += n
            self.bytes += self.sizes[-1]
        self._add_chunk(batches[0][0], rows)
        self.next = self.open_first = batches[-1][0] + batches[-1][1]

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
