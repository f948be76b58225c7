"""A partition's log on disk: written behind at each checkpoint, loaded back at a restart.

**Written behind.** :meth:`PartitionFiles.persist` runs when the topic's snapshot is
taken for a checkpoint (the cut): the batches published since the last persist become
one segment file (:mod:`runtime.topics.segments`), fsynced and renamed into place
*before* the checkpoint's ``_checkpoints`` row is committed; the snapshot records the
end it made durable. A small last segment (under ``roll_bytes``, younger than
``roll_seconds``) is rewritten with the new batches instead of being followed by another
small file, so a quiet topic does not leave a file per checkpoint; the extra writing is
bounded by ``roll_bytes`` per checkpoint. Afterwards the in-memory batches are swapped
for the same rows memory-mapped from the file: what is persisted lives in the page cache,
not in the process's heap, so the retention limits bound the disk, not the memory.

**Loaded back.** :meth:`PartitionFiles.load` maps the segments up to the committed end
and removes or cuts what lies past it (written by a checkpoint whose commit never landed:
the runtime's replay publishes those offsets again). The log kept is contiguous up to
the committed end: a corrupt, truncated or foreign segment file is renamed to
``*.corrupt`` with a warning, and the log starts after it (the rows before it count as
``skipped`` for groups that had not read them, as rows dropped by retention do); the
runtime does not refuse to start over a derived log.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import pyarrow as pa

from runtime.topics.log import PartitionLog
from runtime.topics.segments import (
    Segment,
    SegmentError,
    read_segment,
    remove_temporaries,
    segment_files,
    write_segment,
)

#: a last segment smaller than this takes the next checkpoint's batches too
ROLL_BYTES = 4 * 2**20
#: ... unless its first batch is older than this (age retention deletes whole segments)
ROLL_SECONDS = 600.0


def _schema_runs(
    batches: list[tuple[int, pa.Table, float]],
) -> list[list[tuple[int, pa.Table, float]]]:
    """Consecutive batches whose schemas unify (a file has one schema)."""
    runs: list[list[tuple[int, pa.Table, float]]] = []
    schema: pa.Schema | None = None
    for b in batches:
        try:
            if schema is None:
                raise pa.ArrowInvalid("first")
            schema = pa.unify_schemas([schema, b[1].schema], promote_options="default")
            runs[-1].append(b)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            schema = b[1].schema
            runs.append([b])
    return runs


class PartitionFiles:
    """The segment files of one partition of a topic, and what of its log they hold."""

    def __init__(
        self,
        folder: Path,
        topic: str,
        partition: int,
        roll_bytes: int = ROLL_BYTES,
        roll_seconds: float = ROLL_SECONDS,
    ) -> None:
        self.folder, self.topic, self.partition = folder, topic, partition
        self.roll_bytes, self.roll_seconds = roll_bytes, roll_seconds
        self.segments: list[Segment] = []
        self.persisted: int | None = None  # None: the folder was not opened yet

    # -- writing ------------------------------------------------------------------------------
    def persist(self, log: PartitionLog, now_wall: float) -> int:
        """Write what ``log`` holds past the last persist; delete the segments retention
        dropped entirely. Returns the durable end (``log.next``)."""
        if self.persisted is None:  # no commit knows of this partition: nothing on disk counts
            self._discard_all()
            self.persisted = log.first()
        start = max(self.persisted, log.first())
        new = log.retained(start) if start < log.next else []
        if new:
            last = self.segments[-1] if self.segments else None
            prefix: list[tuple[int, pa.Table, float]] = []
            if (
                last is not None
                and last.end == new[0][0]
                and last.size < self.roll_bytes
                and now_wall - last.batches[0][2] < self.roll_seconds
            ):
                prefix = self._batches_of(last)
            for run in _schema_runs(prefix + new):
                seg = write_segment(self.folder, self.topic, self.partition, run)
                if self.segments and self.segments[-1].first == seg.first:
                    self.segments[-1] = seg  # rewritten with the new batches
                else:
                    self.segments.append(seg)
                self._map(seg, log)
        self.persisted = log.next
        self._drop_expired(log.first())
        return log.next

    def _batches_of(self, seg: Segment) -> list[tuple[int, pa.Table, float]]:
        _, table = read_segment(seg.path)
        return [(f, table.slice(f - seg.first, n), w) for f, n, w in seg.batches]

    def _map(self, seg: Segment, log: PartitionLog) -> None:
        """Swap the log's batches of ``seg`` for the rows memory-mapped from its file."""
        _, table = read_segment(seg.path)
        log.attach(seg.first, table)

    def _drop_expired(self, first: int) -> None:
        while len(self.segments) > 0 and self.segments[0].end <= first:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.segments.pop(0).path)

    def _discard_all(self) -> None:
        remove_temporaries(self.folder)
        for path in segment_files(self.folder):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self.segments = []

    # -- loading ------------------------------------------------------------------------------
    def load(
        self,
        log: PartitionLog,
        end: int,
        first: int,
        now: float,
        now_wall: float,
    ) -> None:
        """Fill the (reset) ``log``, whose next offset is the committed ``end``, with the
        segments' batches from ``first`` (the snapshot's log start) to ``end``. ``now``
        and ``now_wall``: the topic's clock and the wall clock, to give loaded batches
        their age on the topic's clock."""
        remove_temporaries(self.folder)
        kept: list[tuple[Segment, pa.Table]] = []
        for path in segment_files(self.folder):
            try:
                seg, table = read_segment(path)
            except FileNotFoundError:
                continue
            except SegmentError as err:
                self._set_aside(
                    path, f"{err}; the log of partition {self.partition} starts after it"
                )
                self._forget(kept)
                continue
            if seg.first >= end:  # past the commit: replay publishes these offsets again
                os.unlink(path)
                continue
            at = kept[-1][0].end if kept else None
            if at is not None and seg.first < at and seg.end <= at:
                os.unlink(path)  # left by a crash while a rewrite with more batches landed
                continue
            if at is not None and seg.first != at:
                warnings.warn(
                    f"topic {self.topic!r} partition {self.partition}: offsets {at}..{seg.first} "
                    f"are missing on disk; the log starts at {seg.first}",
                    stacklevel=2,
                )
                self._forget(kept)
            if seg.end > end:  # cut back to the commit (a batch boundary)
                seg, table = self._cut(seg, table, end)
            kept.append((seg, table))
        if kept and kept[-1][0].end != end:
            warnings.warn(
                f"topic {self.topic!r} partition {self.partition}: the segments on disk end at "
                f"{kept[-1][0].end}, the last commit at {end}; the log starts at {end}",
                stacklevel=2,
            )
            self._forget(kept)
        self.segments = [s for s, _ in kept]
        log.reset(end)
        for seg, table in kept:
            # retention had dropped the batches before the snapshot's start
            batches = [b for b in seg.batches if b[0] + b[1] > first]
            if batches:
                born = [now - (now_wall - w) for _, _, w in batches]
                log.load(table.slice(batches[0][0] - seg.first), batches, born)
        log.next = log.open_first = end
        self.persisted = end

    def _cut(self, seg: Segment, table: pa.Table, end: int) -> tuple[Segment, pa.Table]:
        batches = [
            (f, table.slice(f - seg.first, min(n, end - f)), w)
            for f, n, w in seg.batches
            if f < end
        ]
        seg = write_segment(self.folder, self.topic, self.partition, batches)
        return read_segment(seg.path)

    def _forget(self, kept: list[tuple[Segment, pa.Table]]) -> None:
        """Drop the segments before a break in the log (it must be contiguous)."""
        for seg, _ in kept:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(seg.path)
        kept.clear()

    def _set_aside(self, path: Path, why: str) -> None:
        warnings.warn(f"topic {self.topic!r}: {why}; moved to {path.name}.corrupt", stacklevel=3)
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, path.with_name(path.name + ".corrupt"))
