"""Write-ahead log: what an ingest gate acknowledged is on disk before the acknowledgement.

A log is a folder of segment files named by the sequence number of their first record
(``00000000000000000042.wal``). A record is an Arrow table with a small JSON header::

    magic "ECW1" | length u32 | crc32 u32 | seq u64 | header length u32 | header | Arrow IPC

``append`` writes a group of records with one ``write`` and ``sync`` makes them durable
with one ``fdatasync`` (group commit: one disk flush covers every request taken together).
A crash can leave the last record half written; :meth:`WriteAheadLog.open` finds the end
of the log by the first record whose magic, length or checksum is wrong and cuts the
file there. Segments whose records a checkpoint covers are deleted with
:meth:`~WriteAheadLog.truncate_before`.

>>> import tempfile, pyarrow as pa
>>> log = WriteAheadLog(tempfile.mkdtemp())
>>> log.append([({"type": "events"}, pa.table({"x": [1, 2]})), ({"type": "dead"}, pa.table({"y": ["?"]}))])
[0, 1]
>>> log.sync()
>>> [(seq, meta["type"], t.num_rows) for seq, meta, t in log.replay(0)]
[(0, 'events', 2), (1, 'dead', 1)]
>>> log.close()
>>> again = WriteAheadLog(log.path)        # a restart finds the log as it was
>>> again.next_seq, [seq for seq, _, _ in again.replay(1)]
(2, [1])
"""

from __future__ import annotations

import functools
import json
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from runtime.errors import StoreError
from runtime.state.fsync import fsync_dir

MAGIC = b"ECW1"
_HEAD = struct.Struct("<4sIIQ")  # magic, length of what follows the head, crc32 of it, seq
_META = struct.Struct("<I")
SUFFIX = ".wal"
SEGMENT_BYTES = 64 * 2**20


def _locked(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def run(self: WriteAheadLog, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return run


def encode(seq: int, meta: dict[str, Any], table: pa.Table) -> bytes:
    """One record, as it is written to a segment."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    header = json.dumps(meta, separators=(",", ":")).encode()
    body = _META.pack(len(header)) + header + sink.getvalue().to_pybytes()
    return _HEAD.pack(MAGIC, len(body), zlib.crc32(body), seq) + body


def _decode(body: bytes) -> tuple[dict[str, Any], pa.Table]:
    (n,) = _META.unpack_from(body)
    meta = json.loads(body[_META.size : _META.size + n])
    table = pa.ipc.open_stream(pa.py_buffer(body[_META.size + n :])).read_all()
    return meta, table


def _scan(path: Path) -> Iterator[tuple[int, int, int, bytes]]:
    """(offset, end offset, seq, body) of each sound record of a segment, in order; stops
    at the first record that is cut short or whose checksum is wrong."""
    data = path.read_bytes()
    at = 0
    while at + _HEAD.size <= len(data):
        magic, length, crc, seq = _HEAD.unpack_from(data, at)
        end = at + _HEAD.size + length
        if magic != MAGIC or end > len(data):
            return
        body = data[at + _HEAD.size : end]
        if zlib.crc32(body) != crc:
            return
        yield at, end, seq, body
        at = end


class WriteAheadLog:
    """An append-only log of Arrow tables in segment files; one writer at a time."""

    def __init__(self, path: str | Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.path = Path(path)
        self.segment_bytes = segment_bytes
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(
                f"cannot create the write-ahead log folder {self.path}: {err}"
            ) from err
        # appends and syncs come from the thread that commits, deletions of covered segments
        # from the one the checkpoint calls in
        self._lock = threading.RLock()
        self._fd: int | None = None
        self._size = 0
        self._dirty = False
        #: first seq of each segment, oldest first
        self._segments: list[int] = []
        self.next_seq = 0
        self._open()

    # -- opening and finding the end ------------------------------------------------------
    def _name(self, first: int) -> Path:
        return self.path / f"{first:020d}{SUFFIX}"

    def _open(self) -> None:
        firsts = sorted(int(p.stem) for p in self.path.glob(f"*{SUFFIX}") if p.stem.isdigit())
        self._segments = firsts
        if not firsts:
            return
        # older segments were closed whole (synced before the next began): only the
        # newest can end in a torn record
        last = self._name(firsts[-1])
        end, next_seq = 0, firsts[-1]
        for _, stop, seq, _ in _scan(last):
            end, next_seq = stop, seq + 1
        if end < last.stat().st_size:  # a record the crash cut short: the log ends before it
            with open(last, "r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
        self.next_seq = next_seq
        self._fd = os.open(last, os.O_WRONLY | os.O_APPEND)
        self._size = end

    @_locked
    def skip_to(self, seq: int) -> None:
        """Number the next record ``seq`` at least: a checkpoint committed positions up to
        ``seq``, so a log that lost its files (or never had them) must not reuse them."""
        if seq > self.next_seq:
            self.next_seq = seq
            self._size = self.segment_bytes  # the next append starts a segment named by it

    def _roll(self) -> None:
        """Start a new segment named by the next seq (the first record goes there)."""
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
        name = self._name(self.next_seq)
        self._fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = 0
        if not self._segments or self._segments[-1] != self.next_seq:
            self._segments.append(self.next_seq)
        fsync_dir(self.path)

    # -- writing ---------------------------------------------------------------------------
    @_locked
    def append(self, records: list[tuple[dict[str, Any], pa.Table]]) -> list[int]:
        """Write ``records`` (not durable until :meth:`sync`); returns their seqs.

        On a failed write the segment is cut back to where it was, so the log never holds
        a partial group in its middle; the error is raised as :class:`StoreError`.
        """
        if not records:
            return []
        if self._fd is None or self._size >= self.segment_bytes:
            self._roll()
        first = self.next_seq
        blob = b"".join(encode(first + i, m, t) for i, (m, t) in enumerate(records))
        assert self._fd is not None
        try:
            written = os.write(self._fd, blob)
            if written != len(blob):
                raise OSError(f"short write ({written} of {len(blob)} bytes)")
        except OSError as err:
            self._cut_back()
            raise StoreError(f"cannot write to the write-ahead log in {self.path}: {err}") from err
        self._size += len(blob)
        self.next_seq += len(records)
        self._dirty = True
        return list(range(first, self.next_seq))

    def _cut_back(self) -> None:
        try:
            assert self._fd is not None
            os.ftruncate(self._fd, self._size)
        except OSError:
            pass  # the next open() ends the log at the first unsound record anyway

    @_locked
    def sync(self) -> None:
        """Make every appended record durable (one ``fdatasync``)."""
        if self._fd is None or not self._dirty:
            return
        try:
            os.fdatasync(self._fd)
        except OSError as err:
            raise StoreError(f"cannot flush the write-ahead log in {self.path}: {err}") from err
        self._dirty = False

    # -- reading and trimming --------------------------------------------------------------
    def replay(self, from_seq: int) -> Iterator[tuple[int, dict[str, Any], pa.Table]]:
        """Every record with seq >= ``from_seq``, in order."""
        firsts = list(self._segments)
        for i, first in enumerate(firsts):
            if i + 1 < len(firsts) and firsts[i + 1] <= from_seq:
                continue  # wholly before from_seq
            name = self._name(first)
            if not name.exists():
                continue
            for _, _, seq, body in _scan(name):
                if seq >= from_seq:
                    meta, table = _decode(body)
                    yield seq, meta, table

    @_locked
    def truncate_before(self, seq: int) -> int:
        """Delete segments whose records all have seqs below ``seq``; returns how many."""
        dropped = 0
        while len(self._segments) > 1 and self._segments[1] <= seq:
            self._name(self._segments.pop(0)).unlink(missing_ok=True)
            dropped += 1
        if dropped:
            fsync_dir(self.path)
        return dropped

    def segments(self) -> list[Path]:
        return [self._name(f) for f in self._segments]

    @_locked
    def close(self) -> None:
        if self._fd is not None:
            self.sync()
            os.close(self._fd)
            self._fd = None
