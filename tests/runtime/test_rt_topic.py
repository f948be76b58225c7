"""runtime.topics.topic and runtime.streams.sinks: offsets, retention, subscribers, TableSink."""

from __future__ import annotations

import doctest
from pathlib import Path

import pyarrow as pa
import pytest

import runtime.streams.sinks as sinks_module
import runtime.topics.topic as topic_module
from runtime.cluster.handles import spawn
from runtime.state.store import Store
from runtime.streams.sinks import TableSink
from runtime.topics.clients import SubscriberClient
from runtime.topics.topic import OFFSET, Topic


class Collector:
    """A subscriber that records what it was given."""

    def __init__(self) -> None:
        self.batches: list[pa.Table] = []
        self.flushes = 0

    def on_batch(self, rows: pa.Table) -> None:
        self.batches.append(rows)

    def flush(self) -> None:
        self.flushes += 1

    def offsets(self) -> list[int]:
        return [o for b in self.batches for o in b.column(OFFSET).to_pylist()]

    def values(self) -> list[int]:
        return [v for b in self.batches for v in b.column("x").to_pylist()]


def xs(start: int, stop: int) -> pa.Table:
    return pa.table({"x": pa.array(range(start, stop), pa.int64())})


def test_doctests() -> None:
    assert doctest.testmod(topic_module).failed == 0
    assert doctest.testmod(sinks_module).failed == 0


def test_offsets_are_consecutive() -> None:
    t = Topic("t")
    assert t.end_offset() == 0
    assert t.publish(xs(0, 3)) == 3
    assert t.publish(xs(3, 3)) == 3  # empty: no offsets used
    assert t.publish(xs(3, 8)) == 8
    got = t.read(0)
    assert got.column(OFFSET).to_pylist() == list(range(8))
    assert got.column("x").to_pylist() == list(range(8))
    assert t.read(5).column("x").to_pylist() == [5, 6, 7]
    assert t.read(2, max_rows=3).column(OFFSET).to_pylist() == [2, 3, 4]
    assert t.read(8).num_rows == 0
    assert t.read(100).num_rows == 0
    assert t.end_offset() == 8


def test_read_max_rows_across_batches() -> None:
    t = Topic("t")
    for i in range(10):
        t.publish(xs(i * 10, i * 10 + 10))
    pos, seen = 0, []
    while True:
        part = t.read(pos, max_rows=7)
        if part.num_rows == 0:
            break
        assert part.num_rows <= 7
        seen += part.column("x").to_pylist()
        pos = part.column(OFFSET)[-1].as_py() + 1
    assert seen == list(range(100))


def test_retention_by_rows() -> None:
    t = Topic("t", retention_rows=10)
    for i in range(10):
        t.publish(xs(i * 4, i * 4 + 4))
    got = t.read(0)
    # at least the last 10 rows are kept, whole batches are dropped
    assert 10 <= got.num_rows < 14
    assert got.column(OFFSET)[-1].as_py() == 39
    assert got.column("x").to_pylist() == got.column(OFFSET).to_pylist()
    # reading from an offset older than retention starts where the log now starts
    first = got.column(OFFSET)[0].as_py()
    assert first > 0
    assert t.read(3).column(OFFSET)[0].as_py() == first
    assert t.read(38).column("x").to_pylist() == [38, 39]
    assert t.end_offset() == 40


def test_retention_keeps_a_single_large_batch() -> None:
    t = Topic("t", retention_rows=5)
    t.publish(xs(0, 3))
    t.publish(xs(3, 20))
    assert t.read(0).column(OFFSET).to_pylist() == list(range(3, 20))


def test_subscribers_get_every_batch_in_order() -> None:
    t = Topic("t")
    a = SubscriberClient(spawn(Collector, name="a", mode="local"))
    b = SubscriberClient(spawn(Collector, name="b", mode="local"))
    t.subscribe("a", a)
    t.publish(xs(0, 2))
    t.subscribe("b", b)  # no backlog: only what comes next
    for i in range(1, 40):  # more than MAX_PENDING batches
        t.publish(xs(i * 2, i * 2 + 2))
    assert t.flush() == 80
    assert a.handle.target.offsets() == list(range(80))
    assert b.handle.target.offsets() == list(range(2, 80))
    assert a.handle.target.flushes == b.handle.target.flushes == 1


def test_subscribe_with_backlog() -> None:
    t = Topic("t")
    t.publish(xs(0, 5))
    t.publish(xs(5, 9))
    sub = SubscriberClient(spawn(Collector, name="s", mode="local"))
    t.subscribe("s", sub, from_offset=3)
    t.publish(xs(9, 12))
    t.flush()
    assert sub.handle.target.offsets() == list(range(3, 12))
    assert sub.handle.target.values() == list(range(3, 12))


def test_subscribe_with_backlog_when_retention_holds_more_rows() -> None:
    t = Topic("t", retention_rows=10)
    t.publish(xs(0, 7))
    t.publish(xs(7, 14))  # both batches retained: 14 rows
    sub = SubscriberClient(spawn(Collector, name="s", mode="local"))
    t.subscribe("s", sub, from_offset=0)
    t.publish(xs(14, 15))
    t.flush()
    assert sub.handle.target.offsets() == list(range(15))


def test_subscriber_error_surfaces_at_flush() -> None:
    class Broken(Collector):
        def on_batch(self, rows: pa.Table) -> None:
            raise ValueError("sink is down")

    t = Topic("t")
    t.subscribe("x", SubscriberClient(spawn(Broken, name="x", mode="local")))
    t.publish(xs(0, 1))
    with pytest.raises(ValueError, match="sink is down"):
        t.flush()


# -- TableSink -------------------------------------------------------------------------------
def test_table_sink_upsert_by_key_is_idempotent(tmp_path: Path) -> None:
    data = str(tmp_path)
    sink = TableSink(data, "alerts", key="event_id", flush_rows=1_000)
    t = Topic("alerts")
    t.subscribe("sink", SubscriberClient(spawn(lambda: sink, name="sink", mode="local")))
    batch = pa.table({"event_id": [1, 2, 3], "score": [0.1, 0.2, 0.3]})
    t.publish(batch)
    assert t.flush() == 3
    assert sink.flush() == 3
    # a redelivery after a restart, and an update of one key inside one flush
    sink.on_batch(batch)
    sink.on_batch(pa.table({"event_id": [3, 4, 3], "score": [0.5, 0.4, 0.9]}))
    assert sink.flush() == 4
    got = Store(data).read("alerts")
    assert OFFSET not in got.column_names
    assert dict(zip(got["event_id"].to_pylist(), got["score"].to_pylist(), strict=True)) == {
        1: 0.1,
        2: 0.2,
        3: 0.9,
        4: 0.4,
    }
    # a new sink on the same table (another process) continues idempotently
    again = TableSink(data, "alerts", key="event_id")
    again.on_batch(t.read(0))
    assert again.flush() == 4


def test_table_sink_flushes_by_rows_and_appends_without_key(tmp_path: Path) -> None:
    sink = TableSink(str(tmp_path), "log", flush_rows=5)
    assert sink.flush() == 0  # nothing written yet, no table
    sink.on_batch(pa.table({"x": [1, 2, 3], OFFSET: [0, 1, 2]}))
    assert not Store(tmp_path).exists("log")
    sink.on_batch(pa.table({"x": [3, 4], OFFSET: [3, 4]}))  # 5 rows: written
    assert Store(tmp_path).read("log").num_rows == 5
    sink.on_batch(pa.table({"x": [5], OFFSET: [5]}))
    assert sink.flush() == 6  # without a key, repeats are kept
    assert sink.written == 6
    assert sorted(Store(tmp_path).read("log").column("x").to_pylist()) == [1, 2, 3, 3, 4, 5]


def test_retention_by_bytes_and_age():
    from runtime.testing import FakeClock

    clock = FakeClock()
    t = Topic(
        "t",
        retention_rows=10**9,
        retention_bytes=3 * pa.table({"x": [0] * 100}).nbytes,
        clock=clock,
    )
    for i in range(10):
        t.publish(pa.table({"x": [i] * 100}))
    assert t.stats()["retained_bytes"] <= 3 * pa.table({"x": [0] * 100}).nbytes
    assert t.first_offset() == 700 and t.read(0).column(OFFSET)[0].as_py() == 700
    aged = Topic("a", retention_seconds=60, clock=clock)
    aged.publish(pa.table({"x": [1]}))
    clock.advance(61)
    aged.publish(pa.table({"x": [2]}))
    assert aged.read(0).column("x").to_pylist() == [2]


def test_consumer_groups_are_independent_and_at_least_once():
    t = Topic("t")
    t.publish(pa.table({"x": list(range(10))}))
    assert t.poll("a", 4).column("x").to_pylist() == [0, 1, 2, 3]
    assert t.poll("b", 100).column("x").to_pylist() == list(range(10))  # its own position
    assert t.poll("a", 4).column("x").to_pylist() == [4, 5, 6, 7]
    t.commit("a", 6)
    assert t.seek_committed("a") == 6  # a crash after offset 7: 6 and 7 come again
    assert t.poll("a", 100).column("x").to_pylist() == [6, 7, 8, 9]
    want = {"position": 10, "committed": 6, "lag": 4, "skipped": 0}
    assert t.groups()["a"] == {**want, "partitions": {0: want}}
    assert t.committed("a") == 6 and t.committed("b") is None
    late = Topic("l")
    late.publish(pa.table({"x": [1]}))
    assert late.poll("new", start="latest").num_rows == 0
    late.publish(pa.table({"x": [2]}))
    assert late.poll("new").column("x").to_pylist() == [2]


def test_group_behind_retention_moves_on_and_counts_what_it_missed():
    t = Topic("t", retention_rows=10)
    t.publish(xs(0, 10))
    assert t.poll("g", 3).column(OFFSET).to_pylist() == [0, 1, 2]
    t.publish(xs(10, 20))  # drops offsets 0..9: g never got 3..9
    assert t.groups()["g"]["position"] == 10 and t.groups()["g"]["skipped"] == 7
    assert t.poll("g", 100).column(OFFSET).to_pylist() == list(range(10, 20))
    assert t.groups()["g"]["skipped"] == 7  # counted once
    assert t.stats()["retained_rows"] == 10 and t.first_offset() == 10
    assert "_partition" not in t.read(0).column_names  # one partition: columns as before


def test_a_lingering_subscriber_gets_batches_together_and_nothing_is_held_back() -> None:
    from runtime.testing import FakeClock

    clock = FakeClock()
    t = Topic("t", clock=clock)
    eager, lazy = (
        SubscriberClient(spawn(Collector, name="e", mode="local")),
        SubscriberClient(spawn(Collector, name="l", mode="local")),
    )
    t.subscribe("eager", eager)
    t.subscribe("lazy", lazy, linger_s=0.2)
    for i in range(5):
        t.publish(xs(i, i + 1))
        clock.advance(0.03)
    assert len(eager.handle.target.batches) == 5 and lazy.handle.target.batches == []
    clock.advance(0.1)
    t.publish(xs(5, 6))  # the oldest held waited 0.22 s: all go out as one batch
    assert [len(b) for b in lazy.handle.target.batches] == [6]
    t.publish(xs(6, 7))
    t.snapshot()  # a checkpoint leaves nothing held
    assert lazy.handle.target.values() == list(range(7))
    t.publish(xs(7, 8))
    t.flush()
    assert lazy.handle.target.values() == eager.handle.target.values() == list(range(8))
    assert lazy.handle.target.offsets() == list(range(8))
