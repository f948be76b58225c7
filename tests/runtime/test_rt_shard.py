"""runtime.entities.shard: batch apply, handlers, passivation to the outbox and reactivation."""

from __future__ import annotations

import doctest
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import runtime.entities.residency as residency_module
import runtime.entities.shard as shard_module
from runtime.cluster.handles import spawn
from runtime.entities.grouping import group_rows
from runtime.entities.kind import Batch, EntityKind, handler
from runtime.entities.shard import Shard
from runtime.errors import ConfigError, UnknownEntityError
from runtime.state.keys import hash_keys, shard_of
from runtime.state.store import Store
from runtime.testing.procs import fresh_python
from runtime.topics.clients import TopicClient
from runtime.topics.topic import Topic


class Clicks(EntityKind):
    """Per-event kind: a count, a sum, the last event's time and tag."""

    name = "clicks"
    key = "user_id"
    state = {
        "count": "int64",
        "total": ("float64", 0.0),
        "last_ts": "timestamp",
        "tag": "string",
        "recent": ("int64", -1, 3),
    }

    def on_event(self, state: dict[str, Any], event: dict[str, Any]) -> None:
        state["count"] += 1
        state["total"] += event["amount"]
        state["last_ts"] = event["ms"]
        state["tag"] = event["tag"]
        state["recent"] = [*state["recent"][1:], event["seq"]]

    @handler
    def add(self, state: dict[str, Any], n: int) -> int:
        state["count"] += n
        return state["count"]

    @handler
    def peek(self, state: dict[str, Any]) -> tuple[int, str]:
        return state["count"], state["tag"]


class Oracle:
    """The same logic in plain Python dicts."""

    def __init__(self) -> None:
        self.s: dict[str, dict[str, Any]] = defaultdict(
            lambda: {"count": 0, "total": 0.0, "last_ts": 0, "tag": "", "recent": [-1, -1, -1]}
        )

    def apply(self, events: pa.Table) -> None:
        for e in events.to_pylist():
            st = self.s[e["user_id"]]
            st["count"] += 1
            st["total"] += e["amount"]
            st["last_ts"] = e["ms"]
            st["tag"] = e["tag"]
            st["recent"] = [*st["recent"][1:], e["seq"]]


def events(keys: list[str], seq0: int = 0, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    n = len(keys)
    t = pa.table(
        {
            "user_id": keys,
            "amount": rng.integers(1, 100, n).astype(float) / 4,  # exact in float64
            "ms": pa.array(1_700_000_000_000 + seq0 + np.arange(n), pa.int64()),
            "tag": [f"t{seq0 + i}" for i in range(n)],
            "seq": pa.array(seq0 + np.arange(n), pa.int64()),
        }
    )
    return t.append_column("_key_hash", pa.array(hash_keys(t["user_id"])))


def assert_matches(shard: Shard, oracle: Oracle, keys: list[str]) -> None:
    for k in keys:
        got = shard.get(k)
        assert got == {"user_id": k, **oracle.s[k]}, k


def test_doctests() -> None:
    assert doctest.testmod(shard_module).failed == 0


@pytest.mark.parametrize("seed", [0, 1])
def test_group_rows_against_oracle(seed: int) -> None:
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 50, 1000).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    g = group_rows(hashes)
    assert g.keys.tolist() == sorted(set(hashes.tolist()))
    assert (g.keys[g.gid] == hashes).all()
    ends = [*g.starts[1:].tolist(), len(hashes)]
    for i, (s, e) in enumerate(zip(g.starts.tolist(), ends, strict=True)):
        rows = g.order[s:e].tolist()
        assert rows == [r for r in range(len(hashes)) if hashes[r] == g.keys[i]]
        assert g.first[i] == rows[0]


def test_apply_per_event_and_get(tmp_path: Path) -> None:
    shard = Shard(Clicks, None, 0, 1, str(tmp_path))
    oracle = Oracle()
    keys = ["a", "b", "a", "c", "a", "b", "ü-日本"]
    for i in range(3):
        ev = events(keys, seq0=i * 100, seed=i)
        out = shard.apply(ev)
        oracle.apply(ev)
        assert out["rows"] == len(keys) and out["outbox"] == 0
    assert_matches(shard, oracle, sorted(set(keys)))
    assert shard.get("a")["recent"] == [200, 202, 204]
    assert shard.get("a")["tag"] == "t204"  # events of one key applied in arrival order
    st = shard.stats()
    assert st["rows"] == 21 and st["batches"] == 3 and st["active"] == 4


def test_get_of_unknown_key_raises(tmp_path: Path) -> None:
    shard = Shard(Clicks, None, 0, 1, str(tmp_path))
    shard.apply(events(["a"]))
    with pytest.raises(UnknownEntityError, match="click 'nobody' is not known to kind 'clicks'"):
        shard.get("nobody")
    with pytest.raises(KeyError):
        shard.get("")
    assert shard.stats()["active"] == 1  # a failed get does not create the entity


def test_call_handlers(tmp_path: Path) -> None:
    shard = Shard(Clicks, None, 0, 1, str(tmp_path))
    shard.apply(events(["a", "a"]))
    assert shard.call("a", "add", (5,)) == 7
    assert shard.call("a", "peek", ()) == (7, "t1")
    # a call creates an entity that does not exist yet
    assert shard.call("new", "add", (3,)) == 3
    assert shard.get("new")["count"] == 3
    with pytest.raises(ConfigError, match="no handler 'nope'.*\\['add', 'peek'\\]"):
        shard.call("a", "nope", ())
    # handler changes are written at the next drain
    table = shard.drain().table
    got = dict(zip(table["user_id"].to_pylist(), table["count"].to_pylist(), strict=True))
    assert got == {"a": 7, "new": 3}


def test_vectorized_apply_and_emit(tmp_path: Path) -> None:
    class Totals(EntityKind):
        name, key, state, topics = "totals", "user_id", {"sum": ("float64", 0.0)}, ("big",)

        def apply(self, batch: Batch) -> None:
            amount = batch.events["amount"].to_numpy()
            np.add.at(batch.state.cols["sum"], batch.slots, amount)
            big = batch.state.cols["sum"][batch.slots] > 100
            batch.emit("big", batch.events.filter(pa.array(big)).select(["user_id"]))
            batch.count("seen", len(amount))

    topic = Topic("big")
    shard = Shard(
        Totals,
        None,
        0,
        1,
        str(tmp_path),
        topics={"big": TopicClient(spawn(lambda: topic, name="big", mode="local"))},
    )
    ev = pa.table({"user_id": ["a", "b", "a"], "amount": [60.0, 1.0, 50.0]})
    ev = ev.append_column("_key_hash", pa.array(hash_keys(ev["user_id"])))
    out = shard.apply(ev)
    assert out["seen"] == 3
    assert shard.get("a")["sum"] == 110.0 and shard.get("b")["sum"] == 1.0
    assert topic.read(0)["user_id"].to_pylist() == ["a", "a"]

    undeclared = Shard(Totals, None, 0, 1, str(tmp_path / "other"))
    with pytest.raises(ConfigError, match="without topic 'big'"):
        undeclared.apply(ev)


@pytest.mark.parametrize("in_list_max", [20_000, 0], ids=["in-filter", "one-scan"])
def test_passivation_drain_and_reactivation_from_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_list_max: int
) -> None:
    """Stored entities come back the same whether read by an IN filter (a few) or by
    one scan of the table (many: runtime.entities.residency.IN_LIST_MAX)."""
    monkeypatch.setattr(residency_module, "IN_LIST_MAX", in_list_max)
    data = str(tmp_path / "data")
    max_active = 8
    shard = Shard(Clicks, None, 0, 1, data, max_active=max_active)
    oracle = Oracle()
    rng = np.random.default_rng(42)
    universe = [f"c{i}" for i in range(120)]
    seq = 0

    def feed(n_batches: int, target: Shard) -> None:
        nonlocal seq
        for _ in range(n_batches):
            keys = rng.choice(universe, size=int(rng.integers(1, 7))).tolist()
            ev = events(keys, seq0=seq, seed=seq)
            seq += len(keys)
            target.apply(ev)
            oracle.apply(ev)
            # only the keys of the batch may keep the shard above its budget
            assert target.state.n_active <= max(max_active, len(set(keys)))

    feed(150, shard)
    assert shard.stats()["passivated"] > 50
    assert shard.stats()["outbox"] > 0
    # values stay right: get brings entities back from the outbox (and passivates none)
    sample = rng.choice(sorted(oracle.s), size=20, replace=False).tolist()
    assert_matches(shard, oracle, sample)
    feed(30, shard)  # entities taken back from the outbox are counted on, not reset

    # drain hands over every changed entity once: the live dirty ones and the outbox
    table, snapshot = shard.drain()[:2]
    assert snapshot is None
    assert sorted(table["user_id"].to_pylist()) == sorted(oracle.s)
    assert shard.stats()["outbox"] == 0
    Store(data).upsert(Clicks.name, table, key=Clicks.key)
    assert shard.drain()[:3] == (None, None, {})  # nothing changed since

    # clean entities are now released without writing; they come back from the store
    feed(60, shard)
    assert_matches(shard, oracle, sorted(oracle.s))
    table = shard.drain().table
    Store(data).upsert(Clicks.name, table, key=Clicks.key)
    stored = Store(data).read(Clicks.name)
    assert stored.num_rows == len(oracle.s)
    assert stored.schema.field("recent").type == pa.list_(pa.int64(), 3)

    # a new shard on the same data dir (a restart): too many profiles to preload
    again = Shard(Clicks, None, 0, 1, data, max_active=max_active)
    assert again.stats()["active"] == 0
    with pytest.raises(UnknownEntityError):
        again.get("never-seen")
    assert_matches(again, oracle, sorted(oracle.s))
    # many at once (a stream-state join's lookup): one read, values as stored
    third = Shard(Clicks, None, 0, 1, data, max_active=max_active)
    every = sorted(oracle.s)
    found = third.lookup(pa.array([*every, "never-seen"]))
    at = found.schema.get_field_index("last_ts")
    got = found.set_column(at, "last_ts", found["last_ts"].cast(pa.int64())).to_pylist()
    assert got[:-1] == [{"user_id": k, **oracle.s[k]} for k in every]
    assert got[-1]["user_id"] is None and third.stats()["loaded"] == len(every)
    feed(40, again)
    assert_matches(again, oracle, sorted(oracle.s))
    table = again.drain().table
    Store(data).upsert(Clicks.name, table, key=Clicks.key)

    # a restart with room for all: the profiles are loaded at start
    roomy = Shard(Clicks, None, 0, 1, data)
    assert roomy.stats()["loaded"] == roomy.stats()["active"] == len(oracle.s)
    assert_matches(roomy, oracle, sorted(oracle.s))


def test_warm_start_loads_only_own_keys(tmp_path: Path) -> None:
    data = str(tmp_path)
    keys = [f"k{i}" for i in range(200)]
    ev = events(keys)
    one = Shard(Clicks, None, 0, 1, data)
    one.apply(ev)
    table = one.drain().table
    Store(data).upsert(Clicks.name, table, key=Clicks.key)

    owner = shard_of(hash_keys(pa.array(keys)), 2)
    shards = [Shard(Clicks, None, i, 2, data) for i in range(2)]
    for i, s in enumerate(shards):
        assert s.stats()["loaded"] == int((owner == i).sum())
    k0 = keys[int(np.flatnonzero(owner == 0)[0])]
    assert shards[0].get(k0)["count"] == 1
    with pytest.raises(UnknownEntityError):
        shards[1].get(k0)


def test_events_between_a_drain_and_its_commit_build_on_what_was_drained(tmp_path: Path) -> None:
    """A checkpoint drains the shards, the feeders resume, then the commit writes LanceDB:
    an entity passivated before the drain and asked for in that gap must come back as the
    drain handed it, not as LanceDB still has it (an older row, or none): else its next
    checkpoint overwrites what the first one wrote, and events are lost."""
    data = str(tmp_path / "data")
    shard = Shard(Clicks, None, 0, 1, data, max_active=4)
    oracle = Oracle()
    seq = 0

    def feed(keys: list[str]) -> None:
        nonlocal seq
        ev = events(keys, seq0=seq, seed=seq)
        seq += len(keys)
        shard.apply(ev)
        oracle.apply(ev)

    feed(["a", "a", "b"])
    Store(data).upsert(Clicks.name, shard.drain().table, key=Clicks.key)  # a committed: 2
    feed(["a"])  # a: 3, dirty
    for i in range(12):  # a is passivated (to the outbox)
        feed([f"x{i}"])
    assert shard.state.lookup(hash_keys(pa.array(["a"])))[0] < 0
    handed = shard.drain().table  # the outbox goes to the checkpoint ...
    assert "a" in handed["user_id"].to_pylist()
    feed(["a", "b"])  # ... events arrive before it is written (a new: 4)
    assert_matches(shard, oracle, ["a", "b"])
    Store(data).upsert(Clicks.name, handed, key=Clicks.key)  # the commit lands
    for i in range(12, 24):  # a is passivated again, then committed and read back
        feed([f"x{i}"])
    Store(data).upsert(Clicks.name, shard.drain().table, key=Clicks.key)
    assert_matches(shard, oracle, sorted(oracle.s))
    again = Shard(Clicks, None, 0, 1, data)
    assert_matches(again, oracle, sorted(oracle.s))


def test_a_clean_entity_leaving_memory_before_the_commit_comes_back_as_drained(
    tmp_path: Path,
) -> None:
    """The same gap for an entity drained while in memory (now clean), then passivated
    before the commit lands: it leaves without writing, and must not come back as the
    older stored row."""
    data = str(tmp_path / "data")
    shard = Shard(Clicks, None, 0, 1, data, max_active=4)
    oracle = Oracle()
    seq = 0

    def feed(keys: list[str]) -> None:
        nonlocal seq
        ev = events(keys, seq0=seq, seed=seq)
        seq += len(keys)
        shard.apply(ev)
        oracle.apply(ev)

    feed(["a"])
    Store(data).upsert(Clicks.name, shard.drain().table, key=Clicks.key)  # a: 1 stored
    feed(["a"])  # a: 2, in memory
    handed = shard.drain().table  # a drained while in memory: clean now
    for i in range(12):  # a leaves memory, clean: nothing goes to the outbox
        feed([f"x{i}"])
    feed(["a"])  # before the commit: must build on 2, not the stored 1
    Store(data).upsert(Clicks.name, handed, key=Clicks.key)
    assert_matches(shard, oracle, ["a"])
    for i in range(12, 24):
        feed([f"x{i}"])
    Store(data).upsert(Clicks.name, shard.drain().table, key=Clicks.key)
    assert_matches(Shard(Clicks, None, 0, 1, data), oracle, sorted(oracle.s))


FRESH_SHARD = r"""
import sys
import pyarrow as pa
from runtime.entities.kind import EntityKind
from runtime.entities.shard import Shard
from runtime.state.keys import hash_keys
from runtime.state.store import Store

class Counter(EntityKind):
    name, key, state = "counters", "user_id", {"clicks": "int64"}
    def on_event(self, state, event):
        state["clicks"] += 1

ev = pa.table({"user_id": ["a", "b", "a"]})
ev = ev.append_column("_key_hash", pa.array(hash_keys(ev["user_id"])))
if sys.argv[2] == "stored":  # a profile committed before: the shard must read it back
    Store(sys.argv[1]).upsert("counters", ev.slice(0, 1).append_column(
        "clicks", pa.array([40], pa.int64())), key="user_id")
    del sys.modules["lancedb"]  # what the shard imports from here on
shard = Shard(Counter, None, 0, 1, sys.argv[1])
shard.apply(ev)
print(shard.get("a")["clicks"], "lancedb" in sys.modules)
"""


@pytest.mark.parametrize(("folder", "expect"), [("fresh", "2 False"), ("stored", "42 True")])
def test_a_shard_reads_lancedb_only_when_there_is_a_table(tmp_path: Path, folder, expect):
    """LanceDB costs a process ~100 MB and ~1 s to import: a shard starting on a fresh folder
    (every replay's and benchmark's first run) has nothing to read and does without it."""
    got = fresh_python(FRESH_SHARD, str(tmp_path), folder, root=Path(__file__).resolve().parents[2])
    assert " ".join(got) == expect


def test_a_kinds_preload_is_imported_as_its_shard_starts_and_a_missing_one_is_no_error(
    tmp_path,
):
    """A kind names the modules its first batches import (a learner's library): the
    shard imports them in the background as it starts, so the first batch that needs one
    does not stall on it; a module that cannot be imported fails where it is used."""
    import time

    probe = "runtime.testing.preload_probe"
    sys.modules.pop(probe, None)

    class Learner(Clicks):
        preload = ("no_such_module_for_edgecore", probe)

    shard = Shard(Learner, None, 0, 1, str(tmp_path))
    deadline = time.monotonic() + 10
    while probe not in sys.modules and time.monotonic() < deadline:
        time.sleep(0.01)
    assert probe in sys.modules
    assert shard.ping() == 0
