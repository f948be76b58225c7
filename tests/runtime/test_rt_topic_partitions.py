"""runtime.topics.topic: partitions, fair polling, groups behind retention, bounded push, snapshots."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from runtime.cluster.handles import Handle, LocalFuture
from runtime.errors import ConfigError
from runtime.topics.clients import SubscriberClient
from runtime.topics.topic import MAX_PENDING, OFFSET, PARTITION, Topic, next_offsets

# Where the stable hash puts these keys among 3 partitions: pinned literally, so a change
# of hash (which would move every key of a restarted runtime) fails here.
KEY_PARTITION = {"a": 2, "b": 1, "c": 1, "f": 0}


def keyed(keys: str, start: int) -> pa.Table:
    """One row per character of ``keys``, with x counting up from ``start``."""
    return pa.table({"k": list(keys), "x": pa.array(range(start, start + len(keys)), pa.int64())})


def xs(start: int, stop: int) -> pa.Table:
    return pa.table({"x": pa.array(range(start, stop), pa.int64())})


def by_partition(rows: pa.Table) -> dict[int, list[tuple[int, int]]]:
    """(offset, x) pairs per partition, in the order they came."""
    out: dict[int, list[tuple[int, int]]] = {}
    for r in rows.select([PARTITION, OFFSET, "x"]).to_pylist():
        out.setdefault(r[PARTITION], []).append((r[OFFSET], r["x"]))
    return out


# -- partitioning ----------------------------------------------------------------------------
def test_keyed_rows_go_to_their_partition_in_order() -> None:
    t = Topic("t", partitions=3, partition_key="k")
    assert t.publish(keyed("abfab", 0)) == 5
    assert t.publish(keyed("cfa", 5)) == 8
    assert t.publish(keyed("ff", 8)) == 10  # all in one partition: published as is
    assert t.end_offsets() == {0: 4, 1: 3, 2: 3}
    assert t.end_offset() == 10
    for p in range(3):
        got = t.read(0, partition=p)
        assert got.column(PARTITION).to_pylist() == [p] * got.num_rows
        assert got.column(OFFSET).to_pylist() == list(range(got.num_rows))
        assert {KEY_PARTITION[k] for k in got.column("k").to_pylist()} == {p}
    # the rows of each partition in publish order
    assert t.read(0, partition=0).column("x").to_pylist() == [2, 6, 8, 9]
    assert t.read(0, partition=1).column("x").to_pylist() == [1, 4, 5]
    assert t.read(0, partition=2).column("x").to_pylist() == [0, 3, 7]
    assert t.read(1, max_rows=1, partition=0).column("x").to_pylist() == [6]
    assert t.first_offsets() == {0: 0, 1: 0, 2: 0}


def test_integer_keys_hash_like_their_text() -> None:
    t = Topic("t", partitions=3, partition_key="k")
    t.publish(pa.table({"k": pa.array([7, 7, 11], pa.int64()), "x": [0, 1, 2]}))
    s = Topic("s", partitions=3, partition_key="k")
    s.publish(pa.table({"k": ["7", "7", "11"], "x": [0, 1, 2]}))
    assert t.end_offsets() == s.end_offsets()
    assert sum(t.end_offsets().values()) == 3


def test_without_a_key_batches_go_round_robin_whole() -> None:
    t = Topic("t", partitions=3)
    for i in range(4):
        t.publish(xs(i * 10, i * 10 + 2 + i))
    assert t.end_offsets() == {0: 2 + 5, 1: 3, 2: 4}
    assert t.read(0, partition=0).column("x").to_pylist() == [0, 1, 30, 31, 32, 33, 34]
    assert t.read(0, partition=0).column(OFFSET).to_pylist() == list(range(7))
    assert t.read(0, partition=2).column("x").to_pylist() == [20, 21, 22, 23]


def test_one_partition_adds_only_offsets_and_republished_offsets_are_replaced() -> None:
    t = Topic("t", partition_key="k")
    t.publish(keyed("ab", 0))
    got = t.read(0)
    assert got.column_names == ["k", "x", OFFSET]
    other = Topic("o", partitions=2)
    other.publish(xs(0, 1))
    other.publish(t.read(0))  # carries _offset from t: the topic gives its own
    assert other.read(0, partition=1).column_names == ["k", "x", PARTITION, OFFSET]
    assert other.read(0, partition=1).column(OFFSET).to_pylist() == [0, 1]


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ConfigError, match="partitions"):
        Topic("t", partitions=0)
    t = Topic("t", partitions=2, partition_key="k")
    with pytest.raises(ConfigError, match="'k'"):
        t.publish(xs(0, 1))
    assert t.end_offset() == 0  # nothing half-published
    with pytest.raises(ConfigError, match="0..1"):
        t.read(0, partition=2)
    with pytest.raises(ConfigError, match="0..1"):
        t.commit("g", {5: 1})
    with pytest.raises(ConfigError, match="0..1"):
        t.poll("g", partitions=[3])
    with pytest.raises(ConfigError, match="earliest"):
        t.poll("g", start="middle")


def test_retention_applies_to_each_partition() -> None:
    t = Topic("t", retention_rows=5, partitions=2)  # round robin: batch i to i % 2
    for i in range(8):
        t.publish(xs(i * 3, i * 3 + 3))
    st = t.stats()
    # each partition got 4 batches of 3 (offsets 0..11) and keeps the last 2 (6 rows >= 5)
    for p in (0, 1):
        assert st["partitions"][p] == {
            "end_offset": 12,
            "first_offset": 6,
            "retained_rows": 6,
            "retained_bytes": st["partitions"][p]["retained_bytes"],
            "batches": 2,
        }
        assert t.read(0, partition=p).column(OFFSET).to_pylist() == list(range(6, 12))
    assert t.read(0, partition=1).column("x").to_pylist() == [15, 16, 17, 21, 22, 23]
    assert (st["end_offset"], st["first_offset"], st["retained_rows"]) == (24, 12, 12)
    assert st["retained_bytes"] == sum(st["partitions"][p]["retained_bytes"] for p in (0, 1))


# -- consumer groups -------------------------------------------------------------------------
def three_partitions(sizes: tuple[int, int, int]) -> Topic:
    """Partition p holds x = 100 * p + offset, for offsets below sizes[p]."""
    t = Topic("t", partitions=3)
    for p, n in enumerate(sizes):
        t.publish(xs(100 * p, 100 * p + n))
    return t


def test_poll_shares_max_rows_fairly_and_rotates_the_remainder() -> None:
    t = three_partitions((10, 10, 10))
    assert by_partition(t.poll("g", 6)) == {
        0: [(0, 0), (1, 1)],
        1: [(0, 100), (1, 101)],
        2: [(0, 200), (1, 201)],
    }
    # 4 over 3 partitions: the extra row goes to partition 1 this time, then 2, then 0
    assert {p: len(v) for p, v in by_partition(t.poll("g", 4)).items()} == {0: 1, 1: 2, 2: 1}
    assert {p: len(v) for p, v in by_partition(t.poll("g", 4)).items()} == {0: 1, 1: 1, 2: 2}
    assert {p: len(v) for p, v in by_partition(t.poll("g", 4)).items()} == {0: 2, 1: 1, 2: 1}
    assert t.groups()["g"]["partitions"][0]["position"] == 6
    # only partition 2, then what is left everywhere
    assert by_partition(t.poll("g", 100, partitions=[2]))[2] == [(o, 200 + o) for o in range(6, 10)]
    rest = by_partition(t.poll("g", 100))
    assert rest == {0: [(o, o) for o in range(6, 10)], 1: [(o, 100 + o) for o in range(6, 10)]}
    assert t.poll("g").num_rows == 0
    assert t.poll("g").column_names == [PARTITION, OFFSET]


def test_poll_gives_a_short_partitions_share_to_the_others() -> None:
    t = three_partitions((10, 10, 1))
    got = by_partition(t.poll("g", 9))
    assert {p: len(v) for p, v in got.items()} == {0: 4, 1: 4, 2: 1}
    assert got[0] == [(o, o) for o in range(4)]  # in offset order within a partition
    assert t.poll("g", 0).num_rows == 0


def test_commit_and_seek_committed_per_partition() -> None:
    t = three_partitions((5, 5, 5))
    got = t.poll("g", 9)
    assert next_offsets(got) == {0: 3, 1: 3, 2: 3}
    t.commit("g", {0: 2, 1: 3})  # partition 2 not committed: it resumes where it started
    t.commit("g", 1)  # an int is partition 0; commits never go back
    assert t.committed("g", 0) == 2 and t.committed("g", 2) is None
    assert t.seek_committed("g") == 2 + 3 + 0
    again = by_partition(t.poll("g", 100))
    assert [o for o, _ in again[0]] == [2, 3, 4]
    assert [o for o, _ in again[1]] == [3, 4]
    assert [o for o, _ in again[2]] == [0, 1, 2, 3, 4]
    g = t.groups()["g"]
    assert g["partitions"][0] == {"position": 5, "committed": 2, "lag": 3, "skipped": 0}
    assert g["partitions"][2] == {"position": 5, "committed": 0, "lag": 5, "skipped": 0}
    assert (g["position"], g["committed"], g["lag"], g["skipped"]) == (15, 5, 10, 0)
    # a group that commits before it ever polls resumes at its commits
    t.commit("h", {1: 4})
    assert by_partition(t.poll("h", 100, partitions=[1])) == {1: [(4, 104)]}


def test_latest_group_starts_at_each_partitions_end() -> None:
    t = three_partitions((2, 3, 4))
    assert t.poll("live", start="latest").num_rows == 0
    t.publish(xs(50, 51))  # round robin: partition 0
    assert by_partition(t.poll("live")) == {0: [(2, 50)]}
    assert t.groups()["live"]["lag"] == 1  # committed defaults to where it started


def test_group_behind_retention_is_moved_and_counts_skipped() -> None:
    batch = keyed("ab" * 4, 0)  # 4 rows to partition 2 ('a'), 4 to partition 1 ('b')
    limit_bytes = 3 * batch.take([0, 2, 4, 6]).nbytes
    t = Topic("t", retention_rows=10, retention_bytes=limit_bytes, partitions=3, partition_key="k")
    t.publish(batch)
    t.poll("slow", 100)  # got offsets 0..3 of partitions 1 and 2, committed nothing
    t.commit("slow", {1: 4, 2: 2})
    t.poll("fast", 100)
    for i in range(1, 200):
        t.publish(keyed("ab" * 4, i * 8))
        t.poll("fast", 100)  # keeps up: never skips
        st = t.stats()["partitions"]
        for p in (1, 2):
            # retained rows and bytes stay within the limits (at most one batch over rows)
            assert st[p]["retained_rows"] <= 10 + 4 - 1
            assert st[p]["retained_bytes"] <= limit_bytes
            assert len(t._logs[p].firsts) <= 2 * 65  # dropped slots are compacted away
            assert len(t._logs[p].chunks) <= 2 * 65
    firsts = t.first_offsets()
    assert firsts[1] == firsts[2] == 800 - 12  # 200 batches of 4, the last 3 retained
    slow = t.groups()["slow"]
    # moved to the log start as soon as retention passed it, rows in between counted
    assert slow["partitions"][1] == {
        "position": 788,
        "committed": 4,
        "lag": 796,
        "skipped": 788 - 4,
    }
    assert slow["partitions"][2]["skipped"] == 788 - 4
    assert slow["partitions"][0]["skipped"] == 0  # nothing was ever there
    assert slow["skipped"] == 2 * 784
    assert t.groups()["fast"]["skipped"] == 0
    got = by_partition(t.poll("slow", 100))
    assert [o for o, _ in got[1]] == list(range(788, 800))
    # rewinding to a commit before the log start: those rows were handed out (or counted)
    # already, so they are not counted again
    assert t.seek_committed("slow") == 0 + 788 + 788
    assert t.groups()["slow"]["skipped"] == 2 * 784


def test_rewind_after_retention_does_not_count_rows_already_handed_out() -> None:
    t = Topic("t", retention_rows=10)
    t.publish(xs(0, 10))
    assert t.poll("g", 100).num_rows == 10
    t.publish(xs(10, 20))  # drops offsets 0..9, which g was handed but never committed
    assert t.groups()["g"]["skipped"] == 0
    assert t.seek_committed("g") == 10
    assert t.poll("g", 100).column(OFFSET).to_pylist() == list(range(10, 20))
    assert t.groups()["g"] == {
        "position": 20,
        "committed": 0,
        "lag": 20,
        "skipped": 0,
        "partitions": {0: {"position": 20, "committed": 0, "lag": 20, "skipped": 0}},
    }


# -- push subscribers ------------------------------------------------------------------------
class _ThreadFuture(LocalFuture):
    """A call running on an actor's thread; ``result()`` waits for it."""

    def __init__(self, future: Future[Any]) -> None:
        super().__init__()
        self.future = future

    def result(self) -> Any:
        return self.future.result()


class ThreadedHandle(Handle):
    """Like a Ray actor: calls run one at a time on the actor's own thread and return a
    future at once (a plain local Handle would run them inside ``call``). Counts the calls
    sent but not yet finished: the deliveries the topic has pending."""

    def __init__(self, name: str, target: Any) -> None:
        super().__init__(name, "local", target)
        self.pool = ThreadPoolExecutor(1)
        self.lock = threading.Lock()
        self.outstanding = 0
        self.max_outstanding = 0

    def call(self, method: str, *args: Any, **kwargs: Any) -> _ThreadFuture:
        with self.lock:
            self.outstanding += 1
            self.max_outstanding = max(self.max_outstanding, self.outstanding)

        def run() -> Any:
            try:
                return getattr(self.target, method)(*args, **kwargs)
            finally:
                with self.lock:
                    self.outstanding -= 1

        return _ThreadFuture(self.pool.submit(run))


class SlowSubscriber:
    """Takes ``delay`` per batch, and waits while ``gate`` is closed."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.gate = threading.Event()
        self.gate.set()
        self.batches: list[pa.Table] = []
        self.flushes = 0

    def on_batch(self, rows: pa.Table) -> None:
        self.gate.wait(timeout=30)
        time.sleep(self.delay)
        self.batches.append(rows)

    def flush(self) -> None:
        self.flushes += 1


def test_slow_subscriber_bounds_pending_and_gets_everything_in_order() -> None:
    n_batches = 60
    t = Topic("t", partitions=3, partition_key="k")
    slow = SlowSubscriber(delay=0.002)
    sub = ThreadedHandle("slow", slow)
    t.subscribe("slow", SubscriberClient(sub))
    slow.gate.clear()  # the subscriber is stuck until the test opens the gate

    def publish_all() -> None:
        for i in range(n_batches):
            t.publish(keyed("abcf", i * 4))

    publisher = threading.Thread(target=publish_all)
    publisher.start()
    try:
        deadline = time.monotonic() + 10
        while sub.outstanding < MAX_PENDING + 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(0.1)  # room to overrun the bound, if the topic did not hold back
        # the publisher is held back: one delivery over the bound is queued (the topic
        # appends, then waits), and it published nothing more
        assert publisher.is_alive()
        assert sub.outstanding == MAX_PENDING + 1
        assert t.end_offset() == 4 * (MAX_PENDING + 1)
    finally:  # open the gate, also when an assertion failed: nothing may stay stuck
        slow.gate.set()
    publisher.join(timeout=30)
    assert not publisher.is_alive()
    assert t.flush() == 4 * n_batches
    sub.pool.shutdown()
    assert sub.max_outstanding == MAX_PENDING + 1  # never more, also once it ran slowly
    assert t.stats()["max_pending_seen"] == MAX_PENDING + 1
    assert t.stats()["pending"] == 0
    got = pa.concat_tables(slow.batches)
    assert got.num_rows == 4 * n_batches and slow.flushes == 1
    per = by_partition(got)
    assert [o for o, _ in per[0]] == list(range(n_batches))  # 'f'
    assert [o for o, _ in per[1]] == list(range(2 * n_batches))  # 'b', 'c'
    assert [x for _, x in per[2]] == [i * 4 for i in range(n_batches)]  # 'a', in order
    assert [x for _, x in per[1]] == [i * 4 + j for i in range(n_batches) for j in (1, 2)]


def test_partitioned_push_with_backlog_per_partition() -> None:
    t = Topic("t", partitions=2)  # round robin
    for i in range(4):
        t.publish(xs(i * 2, i * 2 + 2))

    class Keep:
        def __init__(self) -> None:
            self.batches: list[pa.Table] = []

        def on_batch(self, rows: pa.Table) -> None:
            self.batches.append(rows)

        def flush(self) -> None:
            pass

    everything, part = Keep(), Keep()
    t.subscribe("all", SubscriberClient(Handle("all", "local", everything)), from_offset=0)
    t.subscribe("part", SubscriberClient(Handle("part", "local", part)), from_offset={1: 3})
    t.publish(xs(8, 10))  # partition 0
    t.flush()
    assert by_partition(pa.concat_tables(everything.batches)) == {
        0: [(0, 0), (1, 1), (2, 4), (3, 5), (4, 8), (5, 9)],
        1: [(0, 2), (1, 3), (2, 6), (3, 7)],
    }
    assert by_partition(pa.concat_tables(part.batches)) == {1: [(3, 7)], 0: [(4, 8), (5, 9)]}


# -- snapshots -------------------------------------------------------------------------------
def test_snapshot_restore_continues_offsets_and_groups() -> None:
    t = Topic("t", partitions=3, partition_key="k", retention_rows=4)
    t.publish(keyed("abcf" * 3, 0))  # partition 0: 3 rows, 1: 6 rows, 2: 3 rows
    t.poll("done", 100)
    t.commit("done", next_offsets(t.read(0, partition=1)) | {0: 3, 2: 3})
    t.poll("half", 2)  # one row from two partitions, the third gets none
    t.commit("half", {0: 1, 1: 1})
    t.poll("new", start="latest")  # never committed: resumes where it started
    snap = t.snapshot()
    assert snap == json.loads(json.dumps(snap))  # JSON-able as it is
    assert snap["partitions"] == [
        {"next": 3, "first": 0},
        {"next": 6, "first": 0},
        {"next": 3, "first": 0},
    ]
    assert snap["groups"]["half"]["committed"] == [1, 1, 0]
    assert snap["groups"]["new"]["committed"] == [3, 6, 3]

    r = Topic("t", partitions=3, partition_key="k", retention_rows=4)
    r.restore(json.loads(json.dumps(snap)))
    assert r.end_offsets() == {0: 3, 1: 6, 2: 3} and r.end_offset() == 12
    assert r.first_offsets() == {0: 3, 1: 6, 2: 3}  # the log itself is not restored
    assert r.read(0, partition=1).num_rows == 0
    # before any new row: groups resume from their commits, what is gone is counted
    g = r.groups()
    assert g["done"]["skipped"] == 0 and g["new"]["skipped"] == 0
    assert g["half"]["partitions"][1] == {"position": 6, "committed": 1, "lag": 5, "skipped": 5}
    assert g["half"]["skipped"] == 2 + 5 + 3
    assert r.publish(keyed("fab", 100)) == 15
    assert r.end_offsets() == {0: 4, 1: 7, 2: 4}
    for name in ("done", "half", "new"):
        assert by_partition(r.poll(name, 100)) == {
            0: [(3, 100)],
            1: [(6, 102)],
            2: [(3, 101)],
        }
    # the restored state goes into the next snapshot as well
    again = r.snapshot()
    assert again["groups"]["half"]["skipped"] == [2, 5, 3]
    assert again["partitions"][1] == {"next": 7, "first": 6}


def test_restore_round_robin_and_partition_count_changes() -> None:
    t = Topic("t", partitions=2)
    t.publish(xs(0, 3))
    t.poll("g", 100)
    t.commit("g", {0: 3})
    snap = t.snapshot()
    same = Topic("t", partitions=2)
    same.restore(snap)
    same.publish(xs(3, 4))  # the round robin continues: partition 1
    assert same.end_offsets() == {0: 3, 1: 1}
    grown = Topic("t", partitions=3)
    grown.restore(snap)  # a new partition starts at 0
    assert grown.end_offsets() == {0: 3, 1: 0, 2: 0}
    assert grown.groups()["g"]["partitions"][2]["committed"] == 0
    with pytest.raises(ConfigError, match="would be lost"):
        Topic("t", partitions=1).restore(snap)
    with pytest.raises(ConfigError, match="before the first publish"):
        t.restore(snap)
    with pytest.raises(ConfigError, match="version"):
        Topic("t", partitions=2).restore({**snap, "version": 99})


def test_next_offsets() -> None:
    assert next_offsets(pa.table({OFFSET: pa.array([], pa.int64())})) == {}
    assert next_offsets(pa.table({"x": [1, 2], OFFSET: [7, 8]})) == {0: 9}
    rows = pa.table({PARTITION: np.array([2, 2, 0]), OFFSET: np.array([3, 4, 0])})
    assert next_offsets(rows) == {0: 1, 2: 5}
