"""Event time end to end: windows in a pipeline (in-process and on Ray) equal DuckDB over the
events that were not late, and the late ones are exactly those a plain reference of the
source watermark says, on ``late_events`` and counted; per-partition and idle watermarks;
windows kept by an entity kind; a crash mid-stream gives the clean run's window results."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import ClassVar

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from runtime import Batch, EntityKind, Runtime
from runtime.cluster.handles import resolve
from runtime.dataflow.app import run
from runtime.dataflow.builder import Pipeline
from runtime.eventtime.windows import Windows, WindowSpec
from runtime.state.store import Store
from runtime.streams.sources import IteratorSource
from runtime.testing import MemorySource

sys.path.insert(0, str(Path(__file__).parent))
from event_time_helpers import (  # noqa: E402
    MIN,
    SCHEMA,
    duck_top_items,
    duck_windows,
    kept,
    late_mask,
    stream,
    watermarks_before,
)

OOO, BATCH = 1_000, 200
TUMBLING = WindowSpec(5_000, allowed_lateness_ms=2_000)
SLIDING = WindowSpec(4_000, 1_000, allowed_lateness_ms=1_500)
ALL = 10_000_000  # read a whole topic


def window_pipeline(spec: WindowSpec, ooo: int = OOO, **event_time) -> Pipeline:
    return (
        Pipeline("readings")
        .validate(SCHEMA)
        .event_time("t", out_of_orderness_ms=ooo, **event_time)
        .key_by("k")
        .window("w", spec, value="v")
    )


def late_ids(rt: Runtime) -> list[int]:
    rows = rt.read_topic("late_events", 0, ALL)
    if rows.num_rows == 0:  # (an empty topic has no columns)
        return []
    return sorted(json.loads(r)["event_id"] for r in rows.column("row").to_pylist())


def open_runtime(mode: str, path: Path, request: pytest.FixtureRequest, **cfg) -> Runtime:
    if mode == "ray":
        request.getfixturevalue("ray_session")
        return Runtime(data_dir=str(path), shards=2, **cfg)
    return Runtime(data_dir=str(path), mode="local", shards=2, **cfg)


# -- windows with out-of-order and late events ------------------------------------------------


@pytest.mark.parametrize("spec", [TUMBLING, SLIDING], ids=["tumbling", "sliding"])
@pytest.mark.parametrize("mode", ["local", "ray"])
def test_windows_equal_sql_and_late_events_are_exactly_the_late_ones(mode, spec, tmp_path, request):
    table = stream(3_000, seed=11)
    wm = watermarks_before(table, BATCH, OOO)
    t = table.column("t").to_numpy()
    late = late_mask(t, wm, spec.size_ms, spec.slide_ms, spec.allowed_lateness_ms)
    ids = table.column("event_id").to_numpy()
    assert 0 < late.sum() < len(t) // 10, "the stream must have some late events, not many"
    with open_runtime(mode, tmp_path, request) as rt:
        source = MemorySource(table, batch_size=BATCH, id="readings")
        stats = window_pipeline(spec).source(source).run(rt)
        fired = rt.read_topic("w", 0, ALL)
        late_rows = rt.read_topic("late_events", 0, ALL)
        got_late = late_ids(rt)
    assert stats.input == stats.accepted == len(t)
    # the answer: the last emission per window, as DuckDB computes it from the events on time
    assert kept(fired) == duck_windows(
        table, wm, spec.size_ms, spec.slide_ms, spec.allowed_lateness_ms
    )
    # late events within the allowed lateness re-fired their windows
    assert {"final", "update"} <= set(fired.column("emit").to_pylist())
    # late ones: on the topic, each once, with the watermark they were judged by, and counted
    assert got_late == sorted(ids[late].tolist())
    assert stats.counters.get("w_late", 0) == int(late.sum())
    assert set(late_rows.column("step").to_pylist()) == {"w"}
    judged = dict(
        zip(
            [json.loads(r)["event_id"] for r in late_rows.column("row").to_pylist()],
            late_rows.column("watermark").to_pylist(),
            strict=True,
        )
    )
    assert judged == {int(i): int(w) for i, w in zip(ids[late], wm[late], strict=True)}
    row = json.loads(late_rows.column("row")[0].as_py())
    assert set(row) == set(SCHEMA.arrow_schema.names)  # the whole event, no internal columns


# -- per-partition watermarks -----------------------------------------------------------------


def two_sites(n: int, lag_ms: int, seed: int) -> pa.Table:
    """Sites "a" and "b" sending side by side, b's clock ``lag_ms`` behind a's."""
    table = stream(n, seed=seed, very_late=0.01)
    rng = np.random.default_rng(seed + 1)
    b = rng.random(n) < 0.4
    t = table.column("t").to_numpy().copy()
    t[b] = np.maximum(t[b] - lag_ms, 0)
    table = table.set_column(table.schema.get_field_index("t"), "t", pa.array(t))
    return table.append_column("site", pa.array(np.where(b, "b", "a")))


def test_a_lagging_partition_holds_the_watermark_back(tmp_path):
    """With the watermark per site, the lagging site's events are on time (the leading
    site's events cannot make them late); as one partition, many of them would be late."""
    table = two_sites(3_000, lag_ms=8_000, seed=4)
    spec = TUMBLING
    wm = watermarks_before(table, BATCH, OOO, partition="site")
    t = table.column("t").to_numpy()
    lateness = spec.allowed_lateness_ms
    late = late_mask(t, wm, spec.size_ms, None, lateness)
    as_one = late_mask(t, watermarks_before(table, BATCH, OOO), spec.size_ms, None, lateness)
    assert 0 < late.sum() < as_one.sum() // 5
    with Runtime(data_dir=str(tmp_path), mode="local", shards=2) as rt:
        source = MemorySource(table, batch_size=BATCH, id="sites")
        stats = window_pipeline(spec, partition="site").source(source).run(rt)
        assert late_ids(rt) == sorted(table.column("event_id").to_numpy()[late].tolist())
        want = duck_windows(table, wm, spec.size_ms, None, lateness)
        assert kept(rt.read_topic("w", 0, ALL)) == want
    assert stats.counters.get("w_late", 0) == int(late.sum())


def rows_of(site: str, key: str, times: range, first_id: int) -> list[dict]:
    return [
        {"event_id": first_id + i, "k": key, "t": t, "v": float(i % 10), "site": site}
        for i, t in enumerate(times)
    ]


def fired_so_far(rt: Runtime) -> dict:
    return kept(rt.read_topic("w", 0, ALL))


def due(rows: list[dict], watermark: int, size: int = 1_000) -> dict:
    """DuckDB's windows over ``rows`` that end at or before ``watermark`` (none are late)."""
    table = pa.Table.from_pylist(rows)
    all_windows = duck_windows(table, np.full(len(rows), MIN), size, None, 0)
    return {w: v for w, v in all_windows.items() if w[1] + size <= watermark}


def test_windows_wait_for_the_slow_partition(tmp_path):
    app = window_pipeline(WindowSpec(1_000), ooo=0, partition="site").build()
    sent: list[dict] = []

    def phase(rt: Runtime, name: str, rows: list[dict], end: bool = False):
        sent.extend(rows)
        source = MemorySource(pa.Table.from_pylist(rows), 1_000, id=name)
        return run(rt, app, source, end_of_stream=end)

    with Runtime(data_dir=str(tmp_path), mode="local", shards=2) as rt:
        # a is at 4.9 s, b at 0.4 s: as one partition 4 windows would fire; per site, none
        phase(
            rt,
            "p1",
            rows_of("a", "ka", range(0, 5_000, 100), 0)
            + rows_of("b", "kb", range(0, 500, 100), 100),
        )
        assert fired_so_far(rt) == {}
        # b reaches 2.4 s: the windows ending by then fire, for both sites, and no others
        phase(
            rt,
            "p2",
            rows_of("a", "ka", range(5_000, 6_000, 100), 200)
            + rows_of("b", "kb", range(500, 2_500, 100), 300),
        )
        assert fired_so_far(rt) == due(sent, 2_400) and len(due(sent, 2_400)) == 4
        # b catches up with a
        phase(rt, "p3", rows_of("b", "kb", range(2_500, 6_000, 100), 400))
        assert fired_so_far(rt) == due(sent, 5_900) and len(due(sent, 5_900)) == 10
        stats = phase(rt, "p4", [], end=True)  # the end of the stream fires the rest
        assert fired_so_far(rt) == due(sent, 2**62)
        assert late_ids(rt) == []
    assert "w_late" not in stats.counters


def test_an_idle_partition_stops_holding_the_watermark_back(tmp_path):
    app = window_pipeline(WindowSpec(1_000), ooo=0, partition="site", idle_ms=200).build()

    def phase(rt: Runtime, name: str, rows: list[dict]):
        return run(
            rt, app, MemorySource(pa.Table.from_pylist(rows), 1_000, id=name), end_of_stream=False
        )

    a1 = rows_of("a", "ka", range(0, 3_000, 100), 0)
    b1 = rows_of("b", "kb", range(0, 500, 100), 100)
    a2 = rows_of("a", "ka", range(3_000, 6_000, 100), 200)
    b3 = rows_of("b", "kb", range(500, 1_500, 100), 300)
    with Runtime(data_dir=str(tmp_path), mode="local", shards=2) as rt:
        phase(rt, "p1", a1 + b1)
        assert fired_so_far(rt) == {}  # b (at 0.4 s) holds the watermark back
        time.sleep(0.35)  # b sends nothing for longer than idle_ms
        phase(rt, "p2", a2)
        assert fired_so_far(rt) == due(a1 + b1 + a2, 5_900)
        assert ("kb", 0) in fired_so_far(rt)  # b's window fired without b moving
        # b comes back: the watermark does not go back, b's events for closed windows are late
        stats = phase(rt, "p3", b3)
        assert late_ids(rt) == [r["event_id"] for r in b3]
        assert fired_so_far(rt) == due(a1 + b1 + a2, 5_900)  # late rows changed nothing
    assert stats.counters["w_late"] == len(b3)


# -- windows kept by an entity kind ------------------------------------------------------------


class Meter(EntityKind):
    """Per key a running count, total and latest time (entity state), and 2 s tumbling windows
    of the same events kept per shard, fired by the watermark that comes with the batches."""

    name = "meters"
    key = "k"
    state: ClassVar = {"n": "int64", "total": "float64", "last_t": "int64"}
    topics = ("meter_windows",)
    snapshot_scope = "shard"
    window = WindowSpec(2_000, allowed_lateness_ms=500)

    def __init__(self, config=None) -> None:
        super().__init__(config)
        self.windows = Windows(self.window, "k", "t", "v")

    def apply(self, batch: Batch) -> None:
        cols, ev = batch.state.cols, batch.events
        np.add.at(cols["n"], batch.slots, 1)
        np.add.at(cols["total"], batch.slots, ev.column("v").to_numpy())
        np.maximum.at(cols["last_t"], batch.slots, ev.column("t").to_numpy())
        out = self.windows.process(ev.select(["k", "t", "v"]), watermark=batch.watermark)
        batch.emit("meter_windows", out.fired)
        batch.count("meter_late", out.late.num_rows)

    def on_watermark(self, batch: Batch) -> None:
        if batch.watermark is not None:
            batch.emit("meter_windows", self.windows.advance(batch.watermark))

    def snapshot(self) -> bytes:
        return self.windows.snapshot()

    def restore(self, blob: bytes) -> None:
        self.windows = Windows.restore(blob)


def test_an_entity_kind_keeps_windows_next_to_its_state(tmp_path):
    table = stream(2_000, keys=6, seed=21)
    pipeline = (
        Pipeline("meters")
        .source(MemorySource(table, batch_size=BATCH, id="meters"))
        .validate(SCHEMA)
        .event_time("t", out_of_orderness_ms=OOO)
        .key_by("k")
        .to_entity("meters", Meter)
    )
    wm = watermarks_before(table, BATCH, OOO)
    late = late_mask(table.column("t").to_numpy(), wm, 2_000, None, 500)
    assert late.sum() > 0
    with Runtime(data_dir=str(tmp_path), mode="local", shards=2) as rt:
        stats = pipeline.run(rt)
        assert kept(rt.read_topic("meter_windows", 0, ALL)) == duck_windows(
            table, wm, 2_000, None, 500
        )
        live = {k: Meter.ref(k).get() for k in set(table.column("k").to_pylist())}
    assert stats.counters["meter_late"] == int(late.sum())
    # the entity state counts every event, late for the windows or not
    con = duckdb.connect()
    con.register("ev", table)
    want = {
        k: (n, total, last)
        for k, n, total, last in con.sql(
            "SELECT k, count(*), sum(v), max(t) FROM ev GROUP BY k"
        ).fetchall()
    }
    assert {k: (r["n"], r["total"], r["last_t"]) for k, r in live.items()} == want
    stored = Store(tmp_path).read("meters").to_pylist()
    assert {r["k"]: (r["n"], r["total"], r["last_t"]) for r in stored} == want


# -- a crash mid-stream -------------------------------------------------------------------------

N, CRASH_BATCH, CRASH_AT = 4_000, 250, 2_500


class Crash(Exception):
    pass


def crash_then_resume(pipeline: Pipeline, table: pa.Table, path: Path, topic: str):
    """Run until the source dies at row 2500 (checkpoints every 1000 rows: the last commit
    is at 2000, 500 rows applied and published after it), then resume in a new runtime on
    the same folder. Returns both runs' topic rows and the committed position."""

    def dying():
        for lo in range(0, N, CRASH_BATCH):
            if lo >= CRASH_AT:
                raise Crash
            yield table.slice(lo, CRASH_BATCH)

    with Runtime(data_dir=str(path), mode="local", shards=2, checkpoint_rows=1_000) as rt:
        with pytest.raises(Crash):
            run(rt, pipeline.build(), IteratorSource("readings", dying))
        committed = rt.checkpoints.committed.positions["readings"]
        before = rt.read_topic(topic, 0, ALL)
        rt.stop(checkpoint=False)
    assert committed == 2_000
    wm = watermarks_before(table, CRASH_BATCH, 500)
    with Runtime(data_dir=str(path), mode="local", shards=2) as rt:
        scope = pipeline.build().kind.name
        assert (
            rt.checkpoints.watermarks[scope].current() == wm[committed]
        )  # the source's, from the commit
        start = resolve([rt.topic(topic).end_offsets()])[0]  # where the commit left it
        kept_rows = rt.read_topic(topic, 0, ALL)
        source = MemorySource(table, batch_size=CRASH_BATCH, id="readings")
        stats = run(rt, pipeline.build(), source)
        after = since(rt.read_topic(topic, 0, ALL), start)
    assert stats.resumed_from == committed
    # the durable topic log gave back every row the commit covered, as first published
    assert published(kept_rows) == published(before.filter(pa.array(
        [o.as_py() < start[p.as_py()] for p, o in zip(before["_partition"], before["_offset"], strict=True)]
    )))  # fmt: skip
    return before, after, committed


def clean_run(pipeline: Pipeline, table: pa.Table, path: Path, topic: str):
    """The same stream without a crash; also where the topic ended after each batch."""
    published_by = {}  # in-process, a batch is applied and published when run() moves on
    with Runtime(data_dir=str(path), mode="local", shards=2) as rt:

        def note(stats) -> None:  # each partition's end (the kind's shards host one each)
            published_by[stats.input] = resolve([rt.topic(topic).end_offsets()])[0]

        source = MemorySource(table, batch_size=CRASH_BATCH, id="readings")
        stats = run(rt, pipeline.build(), source, progress=note)
        return rt.read_topic(topic, 0, ALL), published_by, stats


def published(rows: pa.Table) -> list[str]:
    return sorted(str(r) for r in rows.drop_columns(["_offset", "_partition"]).to_pylist())


def since(rows: pa.Table, ends: dict[int, int]) -> pa.Table:
    """The rows each partition got after it had ``ends[partition]`` rows."""
    after = [
        p.as_py() is not None and o.as_py() >= ends[p.as_py()]
        for p, o in zip(rows["_partition"], rows["_offset"], strict=True)
    ]
    return rows.filter(pa.array(after))


SESSION = WindowSpec.session(gap_ms=600, allowed_lateness_ms=1_000)


@pytest.mark.parametrize("case", ["sliding_top_k", "session"])
def test_restart_mid_stream_gives_the_clean_window_results(case, tmp_path):
    """A new runtime resumes from the last commit. Topics are at-least-once: the union of
    both runs' outputs, read as a consumer does (last row per window, retracts delete), is
    the clean run's answer; and from the commit on, the resumed run published exactly what
    the clean run did."""
    if case == "session":  # sparse keys: many sessions, which late events extend and merge
        table, spec, options = stream(N, keys=40, seed=8), SESSION, {}
        columns: tuple[str, ...] = ("window_end",)
    else:
        table, spec, options = stream(N, seed=8), SLIDING, {"top_k": 2, "item": "item"}
        columns = ("top_items",)
    pipeline = (
        Pipeline("readings")
        .validate(SCHEMA)
        .event_time("t", out_of_orderness_ms=500)
        .key_by("k")
        .window("w", spec, value="v", **options)
    )
    before, after, committed = crash_then_resume(pipeline, table, tmp_path / "crashed", "w")
    clean, published_by, clean_stats = clean_run(pipeline, table, tmp_path / "clean", "w")
    want = kept(clean, columns=columns)
    assert want and kept(before, after, columns=columns) == want
    assert published(after) == published(since(clean, published_by[committed]))
    emits = set(clean.column("emit").to_pylist())
    if case == "session":
        assert {"update", "retract"} <= emits  # sessions did move and merge
        # every event on time is in exactly one session
        assert sum(v[0] for v in want.values()) == N - clean_stats.counters["w_late"]
    else:
        assert "update" in emits
        wm, size, slide = watermarks_before(table, CRASH_BATCH, 500), 4_000, 1_000
        sql = duck_windows(table, wm, size, slide, spec.allowed_lateness_ms)
        assert {w: v[:4] for w, v in want.items()} == sql
        top = duck_top_items(table, wm, size, slide, spec.allowed_lateness_ms, 2)
        got_top = {
            w: tuple((dict(d)["item"], dict(d)["count"]) for d in v[4]) for w, v in want.items()
        }
        assert got_top == top


def test_an_entity_kinds_state_and_windows_survive_a_restart(tmp_path):
    """Entity state (a table) and the windows kept per shard (a snapshot) come back from
    the same commit: the resumed run's windows and profiles are the clean run's."""
    table = stream(N, keys=6, seed=9)
    pipeline = (
        Pipeline("meters")
        .validate(SCHEMA)
        .event_time("t", out_of_orderness_ms=500)
        .key_by("k")
        .to_entity("meters", Meter)
    )
    before, after, _ = crash_then_resume(pipeline, table, tmp_path / "crashed", "meter_windows")
    clean, _, _ = clean_run(pipeline, table, tmp_path / "clean", "meter_windows")
    assert kept(before, after) == kept(clean)
    profiles = [
        sorted(Store(tmp_path / d).read("meters").drop_columns(["_key_hash"]).to_pylist(), key=str)
        for d in ("crashed", "clean")
    ]
    assert profiles[0] == profiles[1] and len(profiles[0]) == 6
