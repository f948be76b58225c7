"""The write-ahead log: round trips, torn tails, segments, and records acknowledged before a kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pyarrow as pa
import pytest

from runtime.errors import StoreError
from runtime.ingest.wal import WriteAheadLog


def rows(lo: int, n: int) -> pa.Table:
    return pa.table({"event_id": list(range(lo, lo + n)), "key": [f"k{i % 7}" for i in range(n)]})


def seqs(log: WriteAheadLog, start: int = 0) -> list[int]:
    return [s for s, _, _ in log.replay(start)]


def test_round_trip_keeps_tables_meta_and_order(tmp_path):
    log = WriteAheadLog(tmp_path)
    a, b = rows(0, 3), rows(3, 2)
    assert log.append([({"type": "events", "counts": {"input": 3}}, a)]) == [0]
    assert log.append([({"type": "events"}, b), ({"type": "dead"}, pa.table({"r": ["x"]}))]) == [
        1,
        2,
    ]
    log.sync()
    got = list(log.replay(0))
    assert [s for s, _, _ in got] == [0, 1, 2]
    assert got[0][1] == {"type": "events", "counts": {"input": 3}}
    assert got[0][2].equals(a) and got[1][2].equals(b)
    assert seqs(log, 2) == [2]
    log.close()
    again = WriteAheadLog(tmp_path)
    assert again.next_seq == 3
    assert again.append([({}, rows(5, 1))]) == [3]
    again.sync()
    assert seqs(again) == [0, 1, 2, 3]


def test_a_torn_last_record_ends_the_log_wherever_the_cut_falls(tmp_path):
    log = WriteAheadLog(tmp_path / "w")
    log.append([({}, rows(0, 10)), ({}, rows(10, 10))])
    log.sync()
    log.close()
    (segment,) = (tmp_path / "w").glob("*.wal")
    whole = segment.read_bytes()
    # where the second record starts: the size of a log holding only the first
    one = WriteAheadLog(tmp_path / "one")
    one.append([({}, rows(0, 10))])
    one.close()
    first_len = next((tmp_path / "one").glob("*.wal")).stat().st_size
    for cut in range(first_len, len(whole), 37):
        segment.write_bytes(whole[:cut])
        reopened = WriteAheadLog(tmp_path / "w")
        assert seqs(reopened) == [0], cut
        assert segment.stat().st_size == first_len  # the torn bytes are gone
        # and the log goes on from there
        assert reopened.append([({}, rows(99, 1))]) == [1]
        reopened.close()
        assert [
            t.column("event_id")[0].as_py() for _, _, t in WriteAheadLog(tmp_path / "w").replay(0)
        ] == [0, 99]


def test_a_flipped_byte_in_the_last_record_is_caught_by_the_checksum(tmp_path):
    log = WriteAheadLog(tmp_path)
    log.append([({}, rows(0, 5)), ({}, rows(5, 5))])
    log.close()
    (segment,) = tmp_path.glob("*.wal")
    data = bytearray(segment.read_bytes())
    data[-3] ^= 0xFF
    segment.write_bytes(bytes(data))
    assert seqs(WriteAheadLog(tmp_path)) == [0]


def test_segments_roll_and_only_wholly_covered_ones_are_deleted(tmp_path):
    log = WriteAheadLog(tmp_path, segment_bytes=2_000)
    for i in range(20):
        log.append([({}, rows(i * 10, 10))])
    log.sync()
    segments = log.segments()
    assert len(segments) > 3
    firsts = [int(p.stem) for p in segments]
    assert seqs(log, 7) == list(range(7, 20))
    cut = firsts[2] + 1  # inside the third segment: the first two go, the third stays
    assert log.truncate_before(cut) == 2
    assert [int(p.stem) for p in log.segments()] == firsts[2:]
    assert seqs(log, cut) == list(range(cut, 20))
    # the newest segment is never deleted, even when everything is covered
    log.truncate_before(10**9)
    assert len(log.segments()) == 1
    log.close()
    assert WriteAheadLog(tmp_path, segment_bytes=2_000).next_seq == 20


def test_skip_to_never_reuses_committed_positions(tmp_path):
    log = WriteAheadLog(tmp_path)  # the folder was lost, but a checkpoint committed 500
    log.skip_to(500)
    assert log.append([({}, rows(0, 1))]) == [500]
    log.close()
    again = WriteAheadLog(tmp_path)
    assert again.next_seq == 501 and seqs(again, 500) == [500]


def test_a_failed_write_is_a_store_error_and_leaves_the_log_sound(tmp_path, monkeypatch):
    """A full disk cannot be made on demand here, so os.write is made to fail once."""
    log = WriteAheadLog(tmp_path)
    log.append([({}, rows(0, 3))])
    real = os.write

    def full(fd, data):
        real(fd, data[: len(data) // 2])  # half of it reaches the file, as on ENOSPC
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(StoreError, match="write-ahead log"):
        log.append([({}, rows(3, 3))])
    monkeypatch.setattr(os, "write", real)
    assert log.append([({}, rows(6, 3))]) == [1]
    log.close()
    got = [t.column("event_id").to_pylist() for _, _, t in WriteAheadLog(tmp_path).replay(0)]
    assert got == [[0, 1, 2], [6, 7, 8]]


def test_records_synced_before_a_kill_9_are_all_there(tmp_path):
    """A writer process prints each seq after sync(); it is SIGKILLed mid-stream: every
    seq it printed is in the log when it is opened again."""
    code = textwrap.dedent(
        f"""
        import sys, pyarrow as pa
        from runtime.ingest.wal import WriteAheadLog
        log = WriteAheadLog({str(tmp_path)!r}, segment_bytes=50_000)
        i = 0
        while True:
            got = log.append([({{"n": i}}, pa.table({{"x": list(range(i, i + 50))}})) for _ in range(3)])
            log.sync()
            print(got[-1], flush=True)
            i += 1
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    acked = -1
    deadline = time.monotonic() + 30
    while acked < 600 and time.monotonic() < deadline:
        acked = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    log = WriteAheadLog(tmp_path, segment_bytes=50_000)
    got = seqs(log)
    assert got == list(range(len(got)))  # no gaps, in order
    assert got[-1] >= acked
