"""The edge's durable forward log: what an edge shard sends to the core, kept on its disk.

Each entry is one forwarded batch under a sequence number (consecutive from 1), as an
Arrow IPC stream with the sender's event-time watermark, in segment files of a folder
(``<data>/_edge/<site>/<shard>-<topic>/seg-<first seq>.log``). A record is a fixed
header (magic, seq, payload length, CRC-32 of the payload, watermark) and the payload;
a record cut short by a crash (a torn tail) is dropped when the log is opened.

Which entries a restart keeps comes from the last checkpoint, not from the files:
everything after ``keep_from`` (what the core committed) up to ``keep_to`` (what the
edge committed). Entries past ``keep_to`` were made after the cut; the edge makes them
again when its source replays, so they are cut off. An entry the cut relies on that is
missing or corrupt is refused with :class:`~runtime.errors.EdgeLogError`: never skipped.

>>> import tempfile, pyarrow as pa
>>> log = ForwardLog(tempfile.mkdtemp())
>>> log.append(pa.table({"x": [1, 2]}), watermark=None).seq, log.append(None, 5).seq
(1, 2)
>>> log.sync()
>>> again = ForwardLog(log.path, keep_from=0, keep_to=2)
>>> [(e.seq, e.rows, e.watermark) for e in again.entries]
[(1, 2, None), (2, 0, 5)]
>>> read_payload(again.entries[0].payload).column("x").to_pylist()
[1, 2]
>>> [e.seq for e in ForwardLog(log.path, keep_from=1, keep_to=1).entries]  # the cut: 1..1
[]
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from runtime.errors import EdgeLogError
from runtime.state.fsync import fsync_dir

MAGIC = b"ECF1"
#: magic, seq, payload length, crc32 of the payload, has watermark, watermark
HEADER = struct.Struct("<4sQIIBq")
SEGMENT_BYTES = 16 * 2**20


@dataclass(frozen=True)
class Entry:
    seq: int
    payload: bytes  # Arrow IPC stream; b"" for a watermark-only entry
    watermark: int | None
    rows: int


def to_payload(table: pa.Table | None) -> bytes:
    if table is None:
        return b""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def read_payload(payload: bytes) -> pa.Table | None:
    return pa.ipc.open_stream(payload).read_all() if payload else None


class ForwardLog:
    """Append-only, sequence-numbered batches in segment files; see the module docstring."""

    def __init__(self, path: str | Path, keep_from: int = 0, keep_to: int = 0) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file: object | None = None
        self._dirty = False
        self.disk_bytes = 0
        #: entries after keep_from and up to keep_to, read back at open
        self.entries: list[Entry] = self._load(keep_from, keep_to)
        # the next entry follows the edge's cut: one it makes again after a replay gets
        # its old number, and the core drops it if it applied it before (see Inbox)
        self.last = keep_to
        self.trim(keep_from)

    # -- opening -----------------------------------------------------------------------------
    def _segments(self) -> list[Path]:
        return sorted(self.path.glob("seg-*.log"))

    def _load(self, keep_from: int, keep_to: int) -> list[Entry]:
        kept: list[Entry] = []
        cut: tuple[Path, int] | None = None  # where the log must end (file, offset)
        later: list[Path] = []  # whole segments after the cut
        for seg in self._segments():
            if cut is not None:
                later.append(seg)
                continue
            data = seg.read_bytes()
            at = 0
            while at < len(data):
                entry, end = _record(data, at)
                if entry is None or entry.seq > keep_to:
                    cut = (seg, at)  # a torn tail, or past the committed cut
                    break
                if entry.seq > keep_from:
                    kept.append(entry)
                at = end
        want = list(range(keep_from + 1, keep_to + 1))
        if [e.seq for e in kept] != want:  # checked before anything is cut off
            have = {e.seq for e in kept}
            missing = [s for s in want if s not in have]
            raise EdgeLogError(
                f"edge forward log {self.path} lacks entries the last checkpoint relies on "
                f"({len(missing)} of {keep_from + 1}..{keep_to}, first {missing[:1]}); they "
                "cannot be sent to the core. Restore the folder from a backup, or delete it "
                "to accept losing them"
            )
        for seg in later:
            seg.unlink()  # after the cut: made again by the replay
        if cut is not None:
            with open(cut[0], "r+b") as f:
                f.truncate(cut[1])
                os.fsync(f.fileno())
        return kept

    # -- writing -----------------------------------------------------------------------------
    def append(self, table: pa.Table | None, watermark: int | None) -> Entry:
        """Write the next entry (not synced: :meth:`sync` makes it durable)."""
        payload = to_payload(table)
        with self._lock:
            seq = self.last + 1
            entry = Entry(seq, payload, watermark, table.num_rows if table is not None else 0)
            head = HEADER.pack(
                MAGIC,
                seq,
                len(payload),
                zlib.crc32(payload),
                watermark is not None,
                watermark if watermark is not None else 0,
            )
            f = self._writer(seq)
            f.write(head + payload)  # type: ignore[attr-defined]
            self.last = seq
            self._dirty = True
            self.disk_bytes += len(head) + len(payload)
            return entry

    def _writer(self, seq: int) -> object:
        f = self._file
        if f is not None and f.tell() >= SEGMENT_BYTES:  # type: ignore[attr-defined]
            f.flush()  # type: ignore[attr-defined]
            os.fsync(f.fileno())  # type: ignore[attr-defined]
            f.close()  # type: ignore[attr-defined]
            f = None
        if f is None:
            segs = self._segments()
            # append to the newest segment unless it is full (a restart continues it)
            if segs and segs[-1].stat().st_size < SEGMENT_BYTES:
                f = open(segs[-1], "ab", buffering=0)  # noqa: SIM115 - kept open
            else:
                f = open(self.path / f"seg-{seq:020d}.log", "ab", buffering=0)  # noqa: SIM115
                fsync_dir(self.path)
            self._file = f
        return f

    def sync(self) -> None:
        """Make every entry appended so far durable (one fsync for all of them)."""
        with self._lock:
            if self._dirty and self._file is not None:
                os.fsync(self._file.fileno())  # type: ignore[attr-defined]
            self._dirty = False

    def trim(self, upto: int) -> int:
        """Drop the segments whose every entry is at or before ``upto`` (committed at the
        core); returns the bytes freed. The newest segment is always kept."""
        with self._lock:
            segs = self._segments()
            freed = 0
            for seg, nxt in zip(segs, segs[1:], strict=False):
                if _first_seq(nxt) - 1 <= upto:
                    freed += seg.stat().st_size
                    seg.unlink()
            self.disk_bytes = sum(p.stat().st_size for p in self._segments())
            return freed

    def close(self) -> None:
        self.sync()
        with self._lock:
            if self._file is not None:
                self._file.close()  # type: ignore[attr-defined]
                self._file = None


def _first_seq(seg: Path) -> int:
    return int(seg.stem.split("-", 1)[1])


def _record(data: bytes, at: int) -> tuple[Entry | None, int]:
    """The record at ``at`` and where the next starts; None if torn or corrupt."""
    end = at + HEADER.size
    if end > len(data):
        return None, at
    magic, seq, length, crc, has_wm, wm = HEADER.unpack_from(data, at)
    payload = data[end : end + length]
    if magic != MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
        return None, at
    rows = read_payload(payload).num_rows if payload else 0
    return Entry(seq, payload, wm if has_wm else None, rows), end + length
