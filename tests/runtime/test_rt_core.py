"""runtime.coordinator.runtime.Runtime in local mode: checkpoints, recovery, dedup retention, routing."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

import runtime.state.store as store_module
from runtime import App, Column, ConfigError, EntityKind, EventSchema, IteratorSource, Runtime, run
from runtime.state.store import Store


class Counter(EntityKind):
    name = "counters"
    key = "user_id"
    state = {"clicks": "int64"}

    def on_event(self, state, event):
        state["clicks"] += 1


SCHEMA = EventSchema("click", [Column("event_id", "int64"), Column("user_id", "string")])
APP = App("clicks", SCHEMA, Counter)


def clicks(first: int, n: int, users: int = 7) -> pa.Table:
    return pa.table(
        {
            "event_id": list(range(first, first + n)),
            "user_id": [f"u{i % users}" for i in range(first, first + n)],
        }
    )


def source(table: pa.Table, batch: int = 10) -> IteratorSource:
    return IteratorSource("mem", lambda: iter(table.to_batches(max_chunksize=batch)))


def stored(d: Path) -> dict[str, int]:
    return {r["user_id"]: r["clicks"] for r in Store(d).read("counters").to_pylist()}


def test_checkpoint_then_restart_continues(tmp_path):
    with Runtime(data_dir=str(tmp_path), mode="local", shards=3, checkpoint_rows=20) as rt:
        s = run(rt, APP, source(clicks(0, 70)))
    assert s.checkpoints >= 3 and s.accepted == 70
    with Runtime(data_dir=str(tmp_path), mode="local", shards=2) as rt:  # other shard count
        s = run(rt, APP, IteratorSource("other", lambda: iter([clicks(60, 30)])))
        assert Counter.ref("u1", rt).get()["clicks"] == sum(1 for i in range(90) if i % 7 == 1)
    assert s.duplicates == 10 and s.accepted == 20
    assert sum(stored(tmp_path).values()) == 90


def test_uncommitted_writes_are_rolled_back(tmp_path):
    with Runtime(data_dir=str(tmp_path), mode="local", shards=1) as rt:
        run(rt, APP, source(clicks(0, 30)))
    # a checkpoint that wrote state but died before its commit row
    store = Store(tmp_path)
    store.upsert(
        "counters", pa.table({"user_id": ["u1"], "_key_hash": [0], "clicks": [999]}), key="user_id"
    )
    with Runtime(data_dir=str(tmp_path), mode="local", shards=1) as rt:
        rt.register(Counter)
        assert Counter.ref("u1", rt).get()["clicks"] == sum(1 for i in range(30) if i % 7 == 1)
    assert stored(tmp_path)["u1"] != 999


def test_applied_ids_are_trimmed_to_capacity(tmp_path):
    cfg = {"dedup_capacity": 50, "checkpoint_rows": 10, "compact_every": 1}
    with Runtime(data_dir=str(tmp_path), mode="local", shards=1, **cfg) as rt:
        run(rt, APP, source(clicks(0, 200)))
    rows = Store(tmp_path).read("_seen")
    assert 50 <= rows.num_rows <= 60
    assert set(range(150, 200)) <= set(rows.column("event_id").to_pylist())  # the newest stay


def test_registering_twice_and_unknown_kind(tmp_path):
    with Runtime(data_dir=str(tmp_path), mode="local") as rt:
        rt.register(Counter)
        with pytest.raises(ConfigError, match="registered already"):
            rt.register(Counter)
        with pytest.raises(ConfigError, match="no entity kind 'nope'"):
            rt.send("nope", clicks(0, 1))
        with pytest.raises(ConfigError, match="key column"):
            rt.send("counters", pa.table({"x": [1]}))


def test_bad_kind_definitions_are_refused_early():
    class NoName(EntityKind):
        key = "k"

        def on_event(self, state, event):
            pass

    class NoHandler(EntityKind):
        name, key = "things", "k"

    with pytest.raises(ConfigError, match="name"):
        NoName.check()
    with pytest.raises(ConfigError, match="on_event"):
        NoHandler.check()

    class BarePreload(NoName):
        name = "things"
        preload = "sklearn.linear_model"  # a string, not a tuple

    with pytest.raises(ConfigError, match="preload must be a tuple"):
        BarePreload.check()


def test_idle_entities_are_passivated(tmp_path):
    from runtime.entities.shard import Shard
    from runtime.testing import FakeClock

    clock = FakeClock()
    shard = Shard(Counter, None, 0, 1, str(tmp_path), idle_seconds=60, clock=clock)
    from runtime.state.keys import hash_keys

    def batch(users):
        t = pa.table({"user_id": users})
        return t.append_column("_key_hash", pa.array(hash_keys(t["user_id"])))

    shard.apply(batch(["a", "b", "a"]))
    clock.advance(30)
    shard.apply(batch(["c"]))
    assert shard.stats()["passivated"] == 0  # not idle long enough yet
    clock.advance(45)
    shard.apply(batch(["c"]))
    assert shard.stats()["passivated"] == 2 and shard.stats()["active"] == 1
    assert shard.get("a")["clicks"] == 2  # back from the outbox, intact
    table = shard.drain().table
    assert sorted(table.column("user_id").to_pylist()) == ["a", "b", "c"]


def test_memory_budget_sets_the_entity_budget(tmp_path):
    with Runtime(data_dir=str(tmp_path), mode="local", shard_memory_mb=1) as rt:
        per_entity = Counter.spec().bytes_per_entity()
        assert rt.deployment.max_active(Counter) == 2**20 // per_entity
    with Runtime(data_dir=str(tmp_path), mode="local", max_active=7) as rt:
        assert rt.deployment.max_active(Counter) == 7


def test_table_versions_stay_bounded(tmp_path):
    with Runtime(
        data_dir=str(tmp_path), mode="local", shards=1, checkpoint_rows=10, compact_every=5
    ) as rt:
        run(rt, APP, source(clicks(0, 600)))
        assert rt.checkpoints.n_checkpoints >= 60
        rt.checkpoint()  # one more, after the compaction the 60th ran: a session in use
        # so do LanceDB's caches: what they held of the versions each compaction deleted
        # is forgotten with them (3.2 MB after these 61 checkpoints without, 0.03 with)
        session = store_module._SESSIONS[store_module.METADATA_CACHE_MB]
        assert session.size_bytes < 2**20
    store = Store(tmp_path)
    for name in ("counters", "_seen", "_checkpoints"):
        assert store.n_versions(name) <= 25, name
    assert store.read("_checkpoints").num_rows <= 3


def test_event_ids_are_deduplicated_per_app(tmp_path):
    """Two streams may use the same event ids: each app (entity kind) has its own dedup scope."""
    from runtime.testing import Tally

    other = App(
        "tallies", EventSchema("t", [Column("event_id", "int64"), Column("key", "string")]), Tally
    )
    tallies = pa.table({"event_id": list(range(30)), "key": ["a"] * 30})
    with Runtime(data_dir=str(tmp_path), mode="local", shards=1) as rt:
        assert run(rt, APP, source(clicks(0, 30))).duplicates == 0
        assert run(rt, other, IteratorSource("t", lambda: iter([tallies]))).duplicates == 0
    with Runtime(data_dir=str(tmp_path), mode="local", shards=1) as rt:  # remembered per app
        again = run(rt, APP, IteratorSource("again", lambda: iter([clicks(0, 30)])))
        assert again.duplicates == 30
        assert run(rt, other, IteratorSource("t2", lambda: iter([tallies]))).duplicates == 30


def test_placement_file_overrides(tmp_path):
    from runtime.cluster.placement import ActorSpec, DefaultPolicy, Placement

    f = tmp_path / "placement.toml"
    f.write_text('edge_kinds = []\n[overrides.customers]\nrole = "edge"\nsite = "eu-1"\n')
    policy = DefaultPolicy.from_file(f)
    assert policy.place(ActorSpec("shard:customers:0", "shard", "customers")) == Placement(
        "edge", "eu-1"
    )
    assert policy.place(ActorSpec("shard:devices:eu-2:0", "shard", "devices", "eu-2")) == Placement(
        "core"
    )
    bad = tmp_path / "bad.json"
    bad.write_text('{"overides": {}}')
    with pytest.raises(ConfigError, match="unknown keys"):
        DefaultPolicy.from_file(bad)
    bad.write_text('{"overrides": {"x": {"role": "moon"}}}')
    with pytest.raises(ConfigError, match="role"):
        DefaultPolicy.from_file(bad)


def test_idle_clock_stays_small_on_a_busy_shard(tmp_path):
    """One entry per second of activity, not one per batch: a long-running shard stays flat."""
    from runtime.entities.shard import Shard
    from runtime.state.keys import hash_keys
    from runtime.testing import FakeClock

    clock = FakeClock()
    shard = Shard(Counter, None, 0, 1, str(tmp_path), idle_seconds=30, clock=clock)
    t = pa.table({"user_id": ["a"]})
    t = t.append_column("_key_hash", pa.array(hash_keys(t["user_id"])))
    for _ in range(2_000):  # 2,000 batches over 100 s
        shard.apply(t)
        clock.advance(0.05)
    assert len(shard.res._clock_seq) <= 32
    shard.apply(pa.table({"user_id": ["b"], "_key_hash": pa.array(hash_keys(pa.array(["b"])))}))
    clock.advance(31)
    shard.apply(pa.table({"user_id": ["c"], "_key_hash": pa.array(hash_keys(pa.array(["c"])))}))
    assert shard.stats()["passivated"] == 2  # a and b idle for over 30 s; c is fresh
