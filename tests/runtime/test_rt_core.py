"""runtime.core.Runtime in local mode: checkpoints, recovery, dedup retention, routing."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from runtime import App, Column, ConfigError, EntityKind, EventSchema, IteratorSource, Runtime, run
from runtime.store import Store


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
