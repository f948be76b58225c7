"""Topics inside a runtime: offsets and consumer groups survive a restart, partitioned
topics on Ray, dead letters and late events published as topics."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from runtime import Column, EventSchema, Runtime
from runtime.cluster.handles import resolve
from runtime.dataflow.builder import Pipeline
from runtime.eventtime.windows import WindowSpec
from runtime.testing import MemorySource
from runtime.topics.topic import next_offsets

SCHEMA = EventSchema(
    "e",
    [
        Column("event_id", "int64"),
        Column("key", "string"),
        Column("t", "int64"),
        Column("v", "float64", min=0),
    ],
)


def events(n: int, start: int = 0) -> list[dict]:
    return [
        {"event_id": i, "key": f"k{i % 5}", "t": i * 10, "v": float(i % 7)}
        for i in range(start, start + n)
    ]


def pipeline(rows: list[dict]) -> Pipeline:
    return (
        Pipeline("p")
        .source(MemorySource(rows, batch_size=50, id="mem"))
        .validate(SCHEMA)
        .event_time("t")
        .key_by("key")
        .window("w", WindowSpec(100), value="v")
    )


@pytest.mark.parametrize("durable", [True, False], ids=["log-on-disk", "log-in-memory"])
@pytest.mark.parametrize("asked_first", [False, True], ids=["in-shards", "topic-asked-first"])
def test_offsets_and_groups_go_on_after_a_restart(tmp_path, asked_first, durable):
    """The window topic lives in the kind's two shards, a partition each. After a restart
    its offsets and the group's commits go on, whether the shards host it again or the
    topic is asked for before the kind registers (then an actor of its own continues it).
    With the log on disk (the default) the group gets every row after its commit again;
    with ``topic_log=False`` those rows are gone and counted as skipped."""
    settings = {"mode": "local", "shards": 2, "topic_log": durable}
    with Runtime(data_dir=str(tmp_path), **settings) as rt:
        pipeline(events(500)).run(rt, end_of_stream=False)  # the next run goes on
        topic = rt.topic("w")
        ends = resolve([topic.end_offsets()])[0]
        got = resolve([topic.poll("reader", 30)])[0]
        assert got.num_rows == 30 and set(got.column("_partition").to_pylist()) == {0, 1}
        committed = next_offsets(got)
        resolve([topic.commit("reader", committed)])
        before = rt.read_topic("w")
        rt.checkpoint()
    assert len(ends) == 2 and sum(ends.values()) > 30
    with Runtime(data_dir=str(tmp_path), **settings) as rt:
        if asked_first:
            topic = rt.topic("w")
            # new rows continue the offsets, the group resumes
            assert resolve([topic.end_offsets()])[0] == ends
            assert resolve([topic.groups()])[0]["reader"]["committed"] == 30
            if durable:
                assert rt.read_topic("w").equals(before)
        pipeline(events(200, start=500)).run(rt)
        topic = rt.topic("w")
        rows = resolve([topic.poll("reader", 10_000)])[0]
        for p, end in ends.items():
            mine = rows.filter(pc.equal(rows["_partition"], p)).column("_offset").to_pylist()
            if durable:  # from the commit on, without a gap
                assert mine[: end - committed[p]] == list(range(committed[p], end))
            else:  # what was retained before is gone, counted
                assert mine and mine[0] >= end
        groups = resolve([topic.groups()])[0]
        assert groups["reader"]["skipped"] == (0 if durable else sum(ends.values()) - 30)


def test_partitioned_topic_and_dead_letters_topic_on_ray(tmp_path, ray_session):
    rows = events(400) + [{"event_id": 10_000, "key": "k1", "t": 5, "v": -1.0}]  # v < min
    with Runtime(data_dir=str(tmp_path), shards=2, topic_partitions={"w": (3, "key")}) as rt:
        stats = pipeline(rows).run(rt)
        assert stats.dead_lettered == 1
        out = rt.topic("w")
        ends = resolve([out.end_offsets()])[0]
        assert len(ends) == 3 and sum(ends.values()) == resolve([out.end_offset()])[0]
        every = resolve([out.poll("all", 100_000)])[0]
        assert every.num_rows == sum(ends.values())
        # a key's windows all sit in one partition, in order
        for key in {r["key"] for r in every.select(["key"]).to_pylist()}:
            mine = every.filter(pc.equal(every["key"], key))
            assert len(set(mine.column("_partition").to_pylist())) == 1
            offs = mine.column("_offset").to_pylist()
            assert offs == sorted(offs)
        dead = rt.read_topic("dead_letters")
        assert dead.num_rows == 1 and "v" in dead.column("reason")[0].as_py()


def test_late_events_are_a_topic(tmp_path):
    rows = events(300) + [{"event_id": 5_000, "key": "k0", "t": 1, "v": 1.0}]  # far too late
    with Runtime(data_dir=str(tmp_path), mode="local", shards=2) as rt:
        stats = pipeline(rows).run(rt)
        late = rt.read_topic("late_events")
    assert late.num_rows == 1 == stats.counters["w_late"]
    row = late.to_pylist()[0]
    assert (row["step"], row["key"], row["event_time"]) == ("w", "k0", 1)
    assert row["watermark"] > 100 and '"event_id": 5000' in row["row"]
    assert isinstance(pa.table({"x": [1]}), pa.Table)


@pytest.mark.parametrize("partitions", [2, 4])
def test_bad_partition_settings_are_refused(tmp_path, partitions):
    from runtime.errors import ConfigError

    with (
        Runtime(
            data_dir=str(tmp_path), mode="local", topic_partitions={"w": (partitions, "nope")}
        ) as rt,
        pytest.raises(ConfigError, match="nope"),
    ):
        pipeline(events(100)).run(rt)


def test_window_results_upserted_by_key_and_window(tmp_path):
    """A window's later emission (an update for a late event) replaces its earlier row."""
    import duckdb

    from runtime.state.store import Store

    rows = events(400) + [{"event_id": 7_000, "key": "k2", "t": 2_985, "v": 6.0}]
    flow = (
        Pipeline("p")
        .source(MemorySource(rows, batch_size=50, id="mem"))
        .validate(SCHEMA)
        .event_time("t")
        .key_by("key")
        .window("w", WindowSpec(100, allowed_lateness_ms=1_000), value="v")
        .sink("w", "per_window", key=("key", "window_start"))
    )
    with Runtime(data_dir=str(tmp_path), mode="local", shards=2) as rt:
        stats = flow.run(rt)
    assert stats.counters.get("w_late", 0) == 0  # within lateness: an update, not late
    stored = Store(str(tmp_path)).read("per_window")
    con = duckdb.connect()
    con.register("ev", pa.Table.from_pylist(rows))
    want = con.sql(
        "SELECT key, (t // 100) * 100 AS ws, count(*), sum(v) FROM ev GROUP BY ALL"
    ).fetchall()
    got = [(r["key"], r["window_start"], r["count"], r["sum"]) for r in stored.to_pylist()]
    assert sorted(got) == sorted(want)
    assert "update" in stored.column("emit").to_pylist()


def test_rows_a_step_leaves_without_time_are_dead_lettered(tmp_path):
    def blank_odd_times(t: pa.Table) -> pa.Table:
        odd = pc.equal(pc.bit_wise_and(t["event_id"], 1), 1)
        times = pc.if_else(odd, pa.scalar(None, pa.int64()), t["t"])
        return t.set_column(t.schema.get_field_index("t"), "t", times)

    flow = (
        Pipeline("p")
        .source(MemorySource(events(100), batch_size=50, id="mem"))
        .validate(SCHEMA)
        .event_time("t")
        .map("blank", blank_odd_times)
        .key_by("key")
        .window("w", WindowSpec(100), value="v")
    )
    with Runtime(data_dir=str(tmp_path), mode="local") as rt:
        stats = flow.run(rt)
        dead = rt.read_topic("dead_letters")
        fired = rt.read_topic("w")
    assert stats.dead_lettered == 50 == dead.num_rows and stats.accepted == 50
    assert set(dead.column("step").to_pylist()) == {"event_time"}
    assert sum(fired.column("count").to_pylist()) == 50


def test_a_window_on_a_missing_column_is_a_clear_error(tmp_path):
    from runtime.errors import ConfigError

    flow = (
        Pipeline("p")
        .source(MemorySource(events(100), batch_size=50, id="mem"))
        .validate(SCHEMA)
        .event_time("t")
        .key_by("key")
        .window("w", WindowSpec(100), value="price")
    )
    with (
        Runtime(data_dir=str(tmp_path), mode="local") as rt,
        pytest.raises(ConfigError, match=r"step 'w' reads columns \['price'\]"),
    ):
        flow.run(rt)
