"""Segment files of a durable topic log: Arrow IPC files, one per run of a partition.

A partition's folder holds ``<first offset, 20 digits>.arrow`` files. Each is an Arrow
IPC *file* (not compressed, so it is memory-mapped without a copy) whose schema carries
one JSON entry, ``edgecore.segment``: the format version, the topic and partition, the
first offset, and per batch its first offset, its rows and its wall-clock publish time
(seconds since the epoch: monotonic clocks do not survive a restart). A file is written
to a hidden temporary name, fsynced, renamed into place, and the folder is fsynced: a
crash leaves the old file or the new one, never half of one.

>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> seg = write_segment(folder, "alerts", 0, [(0, pa.table({"x": [1, 2]}), 10.0), (2, pa.table({"x": [3]}), 11.5)])
>>> seg.path.name, seg.first, seg.end, seg.batches
('00000000000000000000.arrow', 0, 3, [(0, 2, 10.0), (2, 1, 11.5)])
>>> again, rows = read_segment(seg.path)
>>> rows.column("x").to_pylist(), again.batches == seg.batches
([1, 2, 3], True)
>>> [s.name for s in segment_files(folder)]
['00000000000000000000.arrow']
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload
from urllib.parse import quote

import pyarrow as pa
import pyarrow.ipc as ipc

from runtime.errors import EdgecoreError
from runtime.state.fsync import fsync_dir

#: the version of the ``edgecore.segment`` JSON a segment file carries
FORMAT = 1
META_KEY = b"edgecore.segment"
SUFFIX = ".arrow"
_NAME = re.compile(r"^(\d{20})\.arrow$")
#: the folder of every topic's segments, inside the data folder
TOPICS_DIR = "_topics"


class SegmentError(EdgecoreError, ValueError):
    """A segment file is not a segment this version wrote (truncated, corrupt, foreign)."""


class BatchIndex(Sequence[tuple[int, int, float]]):
    """(first offset, rows, wall-clock publish time) of each batch of a segment, held in
    three flat arrays (24 bytes a batch). A topic of small batches retains hundreds of
    thousands (the soak's alerts averaged 3.4 rows a batch): as a list of tuples they
    took 72 bytes each written, ~130 read back (the ints and floats parsed from JSON),
    and, long-lived, scattered small blocks over the heap of the shard hosting the
    topic, which a trim cannot return.

    >>> ix = BatchIndex([(0, 2, 10.0), (2, 1, 11.5)])
    >>> ix[-1], len(ix), ix.rows_total, ix == [(0, 2, 10.0), (2, 1, 11.5)]
    ((2, 1, 11.5), 2, 3, True)
    """

    __slots__ = ("firsts", "rows", "walls", "rows_total")

    def __init__(self, batches: Iterable[tuple[int, int, float]] = ()) -> None:
        self.firsts, self.rows, self.walls = array("q"), array("q"), array("d")
        for f, n, w in batches:
            self.firsts.append(f)
            self.rows.append(n)
            self.walls.append(w)
        self.rows_total = sum(self.rows)

    def __len__(self) -> int:
        return len(self.firsts)

    @overload
    def __getitem__(self, i: int) -> tuple[int, int, float]: ...
    @overload
    def __getitem__(self, i: slice) -> list[tuple[int, int, float]]: ...
    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return list(zip(self.firsts[i], self.rows[i], self.walls[i], strict=True))
        return self.firsts[i], self.rows[i], self.walls[i]

    def __iter__(self) -> Iterator[tuple[int, int, float]]:
        return zip(self.firsts, self.rows, self.walls, strict=True)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return len(self) == len(other) and all(
            a == tuple(b) for a, b in zip(self, other, strict=True)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable arrays inside

    def __repr__(self) -> str:
        return repr(list(self))


@dataclass
class Segment:
    """A segment file on disk: the offsets it holds and each batch's publish time."""

    path: Path
    first: int
    #: (first offset, rows, wall-clock publish time) of each batch, in offset order
    batches: BatchIndex
    size: int  # bytes on disk

    @property
    def end(self) -> int:
        """The offset after its last row."""
        return self.first + self.batches.rows_total

    @property
    def newest(self) -> float:
        """When its last batch was published (wall clock)."""
        return self.batches[-1][2]


def topic_dir(root: str | Path, topic: str, partition: int) -> Path:
    """The folder of ``topic``'s ``partition`` under ``root`` (``<data>/_topics``); any topic
    name is a safe folder name (quoted, dots too, so ``..`` cannot climb).

    >>> topic_dir("/d/_topics", "alerts", 2).as_posix(), topic_dir("/d/_topics", "../x", 0).name
    ('/d/_topics/alerts/2', '0')
    >>> topic_dir("/d/_topics", "../x", 0).parent.name
    '%2E%2E%2Fx'
    """
    return Path(root) / quote(topic, safe="").replace(".", "%2E") / str(int(partition))


def segment_name(first: int) -> str:
    return f"{first:020d}{SUFFIX}"


def segment_files(folder: Path) -> list[Path]:
    """The segment files of a partition folder, in offset order (others are ignored)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return sorted(folder / n for n in names if _NAME.match(n))


def remove_temporaries(folder: Path) -> None:
    """Drop what a crash left half written (never renamed into place)."""
    with contextlib.suppress(FileNotFoundError):
        for n in os.listdir(folder):
            if n.startswith(".") and n.endswith(".tmp"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(folder / n)


def write_segment(
    folder: Path, topic: str, partition: int, batches: list[tuple[int, pa.Table, float]]
) -> Segment:
    """Write ``batches`` ((first offset, rows, wall time), contiguous) as the segment named
    by the first offset, atomically (replacing a file of that name). Their schemas must
    unify (columns missing in some batches become nulls there); ArrowInvalid or
    ArrowTypeError if they do not."""
    folder.mkdir(parents=True, exist_ok=True)
    first = batches[0][0]
    # one record batch per segment, not one per published batch: reading a file back
    # builds heap objects per record batch and column (~KBs each), which for a log of
    # small batches outweighed the rows themselves (the soak's shard grew with them)
    table = pa.concat_tables([t for _, t, _ in batches], promote_options="default")
    table = table.combine_chunks()
    info = {
        "format": FORMAT,
        "topic": topic,
        "partition": partition,
        "first": first,
        "rows": table.num_rows,
        "batches": [[f, t.num_rows, w] for f, t, w in batches],
    }
    meta = {**(table.schema.metadata or {}), META_KEY: json.dumps(info).encode()}
    table = table.replace_schema_metadata(meta)
    path = folder / segment_name(first)
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as fh:
            with ipc.new_file(fh, table.schema) as writer:
                writer.write_table(table)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(folder)
    index = BatchIndex((f, t.num_rows, w) for f, t, w in batches)
    return Segment(path, first, index, path.stat().st_size)


def read_segment(path: Path) -> tuple[Segment, pa.Table]:
    """A segment and its rows, memory-mapped (zero copy: the rows stay on disk and in the
    page cache, the file handle is closed at once, the mapping lives as long as the rows).
    SegmentError for a file that is not a whole, consistent segment."""
    m = _NAME.match(path.name)
    if m is None:
        raise SegmentError(f"{path}: not a segment file name")
    try:
        source = pa.memory_map(str(path))
        try:
            table = ipc.open_file(source).read_all()
        finally:
            source.close()
        meta = dict(table.schema.metadata or {})
        info = json.loads(meta.pop(META_KEY))
    except (OSError, pa.ArrowException, KeyError, ValueError, TypeError) as err:
        raise SegmentError(f"topic segment {path} is unreadable ({err})") from err
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        got = info.get("format") if isinstance(info, dict) else None
        raise SegmentError(f"topic segment {path}: unknown format {got!r} (this version: {FORMAT})")
    try:  # (offsets past int64, which the index's arrays cannot hold, are malformed too)
        batches = BatchIndex((int(f), int(n), float(w)) for f, n, w in info["batches"])
        first = int(info["first"])
    except (KeyError, TypeError, ValueError, OverflowError) as err:
        raise SegmentError(f"topic segment {path}: malformed batch list ({err})") from err
    at = first
    for f, n, _ in batches:
        if f != at or n <= 0:
            raise SegmentError(f"topic segment {path}: batches are not contiguous at offset {f}")
        at += n
    if first != int(m.group(1)) or not batches or at - first != table.num_rows:
        raise SegmentError(
            f"topic segment {path}: holds {table.num_rows} rows, its index says offsets "
            f"{first}..{at} (file name {path.name})"
        )
    table = table.replace_schema_metadata(meta or None)
    return Segment(path, first, batches, path.stat().st_size), table
