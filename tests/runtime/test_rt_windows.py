"""runtime.eventtime.windows against DuckDB and a plain reference: tumbling, sliding, late data, restart."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from runtime.eventtime.windows import Windows, WindowSpec


def stream(n: int = 5_000, keys: int = 7, disorder: int = 0, seed: int = 1) -> pa.Table:
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, 100_000, n)) + (rng.integers(0, disorder + 1, n) if disorder else 0)
    return pa.table(
        {
            "k": [f"k{i}" for i in rng.integers(0, keys, n)],
            "t": t,
            "v": rng.normal(10, 3, n).round(3),
        }
    )


def run(w: Windows, table: pa.Table, batch: int) -> tuple[pa.Table, int]:
    fired, late = [], 0
    for b in table.to_batches(max_chunksize=batch):
        out = w.process(pa.Table.from_batches([b]))
        fired.append(out.fired)
        late += out.late.num_rows
    fired.append(w.close())
    return pa.concat_tables(fired), late


def last_per_window(fired: pa.Table) -> dict:
    out = {}
    for r in fired.to_pylist():  # later emissions (updates) replace earlier ones
        out[(r["k"], r["window_start"])] = (r["count"], round(r["sum"], 6), r["min"], r["max"])
    return out


def duck(table: pa.Table, size: int, slide: int | None) -> dict:
    step = slide or size
    sql = f"""
        WITH w AS (SELECT k, v, (floor(t / {step}) * {step} - j * {step})::BIGINT AS ws
                   FROM tab, range(0, {size // step}) AS r(j))
        SELECT k, ws, count(*) AS c, sum(v) AS s, min(v) AS mn, max(v) AS mx FROM w GROUP BY k, ws"""
    con = duckdb.connect()
    con.register("tab", table)
    return {(k, ws): (c, round(s, 6), mn, mx) for k, ws, c, s, mn, mx in con.sql(sql).fetchall()}


@pytest.mark.parametrize("slide", [None, 2_500])
def test_in_order_windows_equal_sql(slide):
    table = stream()
    fired, late = run(Windows(WindowSpec(10_000, slide), "k", "t", "v"), table, batch=333)
    assert late == 0
    assert (pc_emit := set(fired.column("emit").to_pylist())) == {"final"}, pc_emit
    assert last_per_window(fired) == duck(table, 10_000, slide)


def reference(table: pa.Table, spec: WindowSpec, batch: int) -> tuple[dict, int]:
    """Event by event, with the watermark of the batch start: what the operator promises."""
    wm, late, accepted = np.iinfo(np.int64).min, 0, []
    for b in table.to_batches(max_chunksize=batch):
        rows = b.to_pylist()
        for r in rows:
            base = r["t"] // spec.step * spec.step
            starts = [base - j * spec.step for j in range(spec.size_ms // spec.step)]
            ok = [s for s in starts if s + spec.size_ms + spec.allowed_lateness_ms > wm]
            late += not ok
            accepted += [(r["k"], s, r["v"]) for s in ok]
        wm = max(wm, max(r["t"] for r in rows) - spec.out_of_orderness_ms)
    agg: dict = {}
    for k, s, v in accepted:
        c, sm, mn, mx = agg.get((k, s), (0, 0.0, np.inf, -np.inf))
        agg[(k, s)] = (c + 1, sm + v, min(mn, v), max(mx, v))
    return {key: (c, round(sm, 6), mn, mx) for key, (c, sm, mn, mx) in agg.items()}, late


@pytest.mark.parametrize("lateness", [0, 3_000])
def test_out_of_order_and_late_events(lateness):
    spec = WindowSpec(5_000, None, allowed_lateness_ms=lateness, out_of_orderness_ms=1_000)
    table = stream(disorder=8_000, seed=3)
    w = Windows(spec, "k", "t", "v")
    fired, late = run(w, table, batch=200)
    want, want_late = reference(table, spec, batch=200)
    assert late == want_late == w.late_count and late > 0  # counted, not dropped silently
    assert last_per_window(fired) == want
    if lateness:  # late events within the allowed lateness re-fired their windows
        assert "update" in set(fired.column("emit").to_pylist())


def test_restart_from_snapshot_gives_identical_results():
    spec = WindowSpec(5_000, 1_000, allowed_lateness_ms=2_000, out_of_orderness_ms=500)
    table = stream(disorder=3_000, seed=5)
    clean, _ = run(Windows(spec, "k", "t", "v"), table, batch=250)
    w = Windows(spec, "k", "t", "v")
    first, second = table.slice(0, 2_500), table.slice(2_500)
    part1 = [
        w.process(pa.Table.from_batches([b])).fired for b in first.to_batches(max_chunksize=250)
    ]
    w = Windows.restore(w.snapshot())  # as after a crash right after a checkpoint
    part2, _ = run(w, second, batch=250)
    assert last_per_window(pa.concat_tables([*part1, part2])) == last_per_window(clean)


def test_bad_specs_are_refused():
    from runtime import ConfigError

    with pytest.raises(ConfigError, match="multiple"):
        WindowSpec(10_000, 3_000)
    with pytest.raises(ConfigError, match="size"):
        WindowSpec(0)


# -- sessions, top-k, early firing, external watermarks ------------------------------------


@pytest.fixture(params=["bulk", "eager"])
def purge(request, monkeypatch):
    """Run a test as is (purging rarely, in bulk) and purging whenever anything is past
    retention: compaction renumbers windows and their item counts."""
    if request.param == "eager":
        monkeypatch.setattr(Windows, "purge_after", 0)
    return request.param


def apply(fired: pa.Table, key: str = "k") -> dict:
    """What a consumer keeps: the last row per (key, window_start); a retract deletes it.
    Checks on the way that nothing fires early once final, and that a retract takes back
    a row that was emitted."""
    out: dict = {}
    final: set = set()
    for r in fired.to_pylist():
        assert r["emit"] != "early" or (r[key], r["window_start"]) not in final
        if r["emit"] == "final":
            final.add((r[key], r["window_start"]))
        if r["emit"] == "retract":
            del out[(r[key], r["window_start"])]
            final.discard((r[key], r["window_start"]))
        else:
            top = [(x["item"], x["count"]) for x in r["top_items"]] if "top_items" in r else None
            out[(r[key], r["window_start"])] = (
                r["window_end"],
                r["count"],
                round(r["sum"], 6),
                r["min"],
                r["max"],
                top,
            )
    return out


def sessionize(events: list[tuple], gap: int, top_k: int | None = None) -> dict:
    """Sessions of (k, t, v, item) events: sorted per key, split where a gap opens."""
    out: dict = {}
    for k in {e[0] for e in events}:
        evs = sorted((e for e in events if e[0] == k), key=lambda e: e[1])
        cut = [0] + [i for i in range(1, len(evs)) if evs[i][1] - evs[i - 1][1] >= gap]
        for lo, hi in zip(cut, [*cut[1:], len(evs)], strict=True):
            part = evs[lo:hi]
            vs = [e[2] for e in part]
            top = None
            if top_k:
                counts: dict = {}
                for e in part:
                    counts[e[3]] = counts.get(e[3], 0) + 1
                top = sorted(counts.items(), key=lambda x: (-x[1], x[0]))[:top_k]
            end = part[-1][1] + gap
            out[(k, part[0][1])] = (end, len(vs), round(sum(vs), 6), min(vs), max(vs), top)
    return out


def session_reference(table: pa.Table, spec: WindowSpec, batch: int, top_k=None):
    """Event by event, with the watermark of the batch start: an event is late if its own
    session [t, t + gap) is past end + lateness, or it is within a gap of a session that is."""
    gap, lateness = spec.gap_ms, spec.allowed_lateness_ms
    wm, late, accepted = np.iinfo(np.int64).min, 0, []
    for b in table.to_batches(max_chunksize=batch):
        closed = [(k, s, e) for (k, s), (e, *_) in sessionize(accepted, gap).items()]
        closed = [(k, s, e) for k, s, e in closed if e + lateness <= wm]
        rows = b.to_pylist()
        for r in rows:
            touches_closed = any(k == r["k"] and s - gap < r["t"] < e for k, s, e in closed)
            if r["t"] + gap + lateness <= wm or touches_closed:
                late += 1
            else:
                accepted.append((r["k"], r["t"], r["v"], r.get("item")))
        wm = max(wm, max(r["t"] for r in rows) - spec.out_of_orderness_ms)
    return sessionize(accepted, gap, top_k), late


def with_items(table: pa.Table, kinds: int = 9, seed: int = 2, as_int: bool = False) -> pa.Table:
    items = np.random.default_rng(seed).zipf(1.6, table.num_rows) % kinds
    return table.append_column("item", pa.array(items if as_int else [f"i{i}" for i in items]))


@pytest.mark.parametrize(
    "disorder, lateness, early", [(0, 0, None), (2_000, 0, None), (4_000, 1_500, 1)]
)
def test_sessions_equal_sorted_reference(disorder, lateness, early, purge):
    from runtime.testing import FakeClock

    spec = WindowSpec.session(
        700, allowed_lateness_ms=lateness, out_of_orderness_ms=300, early_fire_ms=early
    )
    table = with_items(stream(n=3_000, disorder=disorder, seed=11))
    clock = FakeClock()
    w = Windows(spec, "k", "t", "v", top_k=3, item="item", clock=clock)
    folds = []  # count the merges of two open sessions by a bridging event
    fold = w._fold
    w._fold = lambda src, dst: (folds.append(len(src)), fold(src, dst))
    fired, late = [], 0
    for b in table.to_batches(max_chunksize=150):
        clock.advance(0.01)
        out = w.process(pa.Table.from_batches([b]))
        fired.append(out.fired)
        late += out.late.num_rows
    fired = pa.concat_tables([*fired, w.close()])
    want, want_late = session_reference(table, spec, batch=150, top_k=3)
    assert apply(fired) == want
    assert late == want_late == w.late_count
    emits = set(fired.column("emit").to_pylist())
    if disorder:  # late events were counted, and out-of-order ones merged sessions
        assert late > 0 and sum(folds) > 0
    else:
        assert late == 0 and emits == {"final"}
    if lateness:  # sessions that fired and then moved took back what they emitted
        assert "retract" in emits and "update" in emits
    if early:
        assert "early" in emits


def test_bridging_event_merges_two_fired_sessions_and_retracts_them():
    spec = WindowSpec.session(10, allowed_lateness_ms=100)
    w = Windows(spec, "k", "t", "v", top_k=1, item="item")
    batches = [
        {"k": ["a", "a", "b"], "t": [0, 3, 1], "v": [1.0, 2.0, 3.0], "item": ["x", "y", "y"]},
        {"k": ["a", "a"], "t": [20, 40], "v": [4.0, 5.0], "item": ["y", "z"]},  # fires 2
        {"k": ["a"], "t": [12], "v": [6.0], "item": ["y"]},  # bridges {0, 3} and {20}
        {"k": ["a"], "t": [-95], "v": [7.0], "item": ["z"]},  # its own session is past lateness
    ]
    fired = [w.process(pa.table(b)).fired for b in batches] + [w.close()]
    rows = pa.concat_tables(fired).to_pylist()
    assert [(r["window_start"], r["emit"]) for r in rows if r["k"] == "a"][:4] == [
        (0, "final"),
        (20, "final"),
        (20, "retract"),
        (0, "update"),
    ]
    events = [(k, t, v, i) for b in batches[:3] for k, t, v, i in zip(*b.values(), strict=True)]
    assert apply(pa.concat_tables(fired)) == sessionize(events, 10, top_k=1)
    assert apply(pa.concat_tables(fired))[("a", 0)][:2] == (20 + 10, 4)  # {0, 3, 12, 20}
    assert w.late_count == 1


def test_event_that_would_join_a_closed_session_is_late():
    w = Windows(WindowSpec.session(10), "k", "t", "v")
    one = lambda t: pa.table({"k": ["a"], "t": [t], "v": [float(t)]})  # noqa: E731
    assert w.process(one(0)).fired.num_rows == 0
    assert w.process(one(15)).fired.column("window_end").to_pylist() == [10]  # {0}: closed
    out = w.process(one(6))  # its own session [6, 16) is open, but it would join {0}
    assert out.late.column("t").to_pylist() == [6] and out.fired.num_rows == 0
    assert w.process(one(12)).late.num_rows == 0  # past {0}'s end: joins {15} instead
    rows = w.close().to_pylist()
    assert [(r["window_start"], r["window_end"], r["count"]) for r in rows] == [(12, 25, 2)]


def duck_top(table: pa.Table, size: int, slide: int | None, k: int) -> dict:
    step = slide or size
    sql = f"""
        WITH w AS (SELECT k, item, (floor(t / {step}) * {step} - j * {step})::BIGINT AS ws
                   FROM tab, range(0, {size // step}) AS r(j)),
             c AS (SELECT k, ws, item, count(*) AS n FROM w GROUP BY k, ws, item),
             r AS (SELECT *, row_number() OVER (PARTITION BY k, ws ORDER BY n DESC, item) AS rn
                   FROM c)
        SELECT k, ws, item, n FROM r WHERE rn <= {k} ORDER BY k, ws, rn"""
    con = duckdb.connect()
    con.register("tab", table)
    out: dict = {}
    for key, ws, item, n in con.sql(sql).fetchall():
        out.setdefault((key, ws), []).append((item, n))
    return out


@pytest.mark.parametrize("slide, as_int", [(None, False), (2_500, False), (None, True)])
def test_top_k_equals_sql(slide, as_int, purge):
    table = with_items(stream(n=4_000), as_int=as_int)
    w = Windows(WindowSpec(10_000, slide), "k", "t", "v", top_k=3, item="item")
    fired, late = run(w, table, batch=500)
    got = {key: top for key, (*_, top) in apply(fired).items()}
    want = duck_top(table, 10_000, slide, 3)
    assert late == 0 and got == want
    assert any(len(top) == 3 for top in got.values())
    assert last_per_window(fired) == duck(table, 10_000, slide)  # aggregates still exact


def test_early_firing_emits_partial_results_and_exact_finals():
    from runtime.testing import FakeClock

    clock = FakeClock()
    spec = WindowSpec(10_000, early_fire_ms=1_000)
    w = Windows(spec, "k", "t", "v", clock=clock)
    table = stream(n=3_000)
    seen, early_at, fired = 0, [], []
    for i, b in enumerate(table.to_batches(max_chunksize=100)):
        clock.advance(0.4)  # an early firing every third batch
        out = w.process(pa.Table.from_batches([b])).fired
        seen += b.num_rows
        early = out.filter(pc.equal(out.column("emit"), "early"))
        if early.num_rows:
            early_at.append(i)
            so_far = duck(table.slice(0, seen), 10_000, None)  # what the window had then
            for r in early.to_pylist():
                key = (r["k"], r["window_start"])
                assert (r["count"], round(r["sum"], 6), r["min"], r["max"]) == so_far[key]
        fired.append(out)
    fired = pa.concat_tables([*fired, w.close()])
    assert early_at and all(i % 3 == 2 for i in early_at)
    assert last_per_window(fired) == duck(table, 10_000, None)
    rows = fired.to_pylist()
    final_at = {(r["k"], r["window_start"]): n for n, r in enumerate(rows) if r["emit"] == "final"}
    last_early: dict = {}
    for n, r in enumerate(rows):
        if r["emit"] == "early":
            key = (r["k"], r["window_start"])
            assert n < final_at[key]  # never early once final
            assert last_early.get(key) != r["count"]  # repeated only with new data
            last_early[key] = r["count"]


def test_early_firing_repeats_a_window_only_with_new_data():
    from runtime.testing import FakeClock

    clock = FakeClock()
    w = Windows(WindowSpec(100, early_fire_ms=500), "k", "t", "v", clock=clock)
    batch = pa.table({"k": ["a", "b"], "t": [1, 2], "v": [1.0, 2.0]})
    assert w.process(batch).fired.num_rows == 0  # not yet time
    clock.advance(0.5)
    early = w.advance().sort_by("k")
    assert early.select(["k", "count", "emit"]).to_pylist() == [
        {"k": "a", "count": 1, "emit": "early"},
        {"k": "b", "count": 1, "emit": "early"},
    ]
    clock.advance(0.5)
    assert w.advance().num_rows == 0  # nothing new since
    w.process(pa.table({"k": ["a"], "t": [3], "v": [5.0]}))
    clock.advance(0.5)
    assert w.advance().select(["k", "count", "sum"]).to_pylist() == [
        {"k": "a", "count": 2, "sum": 6.0}
    ]
    assert w.advance(100).column("emit").to_pylist() == ["final", "final"]
    w.process(pa.table({"k": ["a"], "t": [150], "v": [1.0]}))
    back = Windows.restore(w.snapshot(), clock=clock)  # early firing goes on with a new clock
    clock.advance(0.5)
    assert back.advance().select(["k", "window_start", "emit"]).to_pylist() == [
        {"k": "a", "window_start": 100, "emit": "early"}
    ]


def test_external_watermark_fires_windows_without_new_data():
    w = Windows(WindowSpec(10), "k", "t", "v")
    out = w.process(pa.table({"k": ["b"] * 3, "t": [1, 4, 5], "v": [1.0, 2.0, 3.0]}))
    assert out.fired.num_rows == 0
    # the batch's own times would close [0, 10); the given watermark (5) does not
    out = w.process(pa.table({"k": ["b"], "t": [100], "v": [1.0]}), watermark=5)
    assert out.fired.num_rows == 0 and w.watermark == 5
    fired = w.advance(12)  # a shard that got no rows: only the watermark moves
    assert fired.select(["k", "window_start", "count", "emit"]).to_pylist() == [
        {"k": "b", "window_start": 0, "count": 3, "emit": "final"}
    ]
    assert w.advance(3).num_rows == 0 and w.watermark == 12  # never goes back
    assert w.process(pa.table({"k": ["b"], "t": [2], "v": [1.0]})).late.num_rows == 1


@pytest.mark.parametrize("spec", [WindowSpec(2_000, 500), WindowSpec.session(800)])
def test_shards_with_source_watermarks_equal_one_operator(spec):
    from runtime.eventtime.watermarks import Watermarks
    from runtime.state.keys import hash_keys, shard_of

    table = stream(n=2_000, keys=4, disorder=3_000, seed=7)
    whole = Windows(spec, "k", "t", "v")
    shards = [Windows(spec, "k", "t", "v") for _ in range(3)]
    source = Watermarks(out_of_orderness_ms=0)
    want, got, advanced = [], [], 0
    for b in table.to_batches(max_chunksize=6):
        part = pa.Table.from_batches([b])
        want.append(whole.process(part).fired)  # derives the same watermark from the batch
        source.observe_table(part, "t")
        mark = source.current()
        shard = shard_of(hash_keys(part.column("k")), 3)
        for i, w in enumerate(shards):
            rows = part.filter(pa.array(shard == i))
            if rows.num_rows:
                got.append(w.process(rows, watermark=mark).fired)
            else:
                got.append(w.advance(mark))
                advanced += got[-1].num_rows
    want.append(whole.close())
    got += [w.close() for w in shards]
    assert advanced > 0  # some shards fired windows with no rows of their own
    assert apply(pa.concat_tables(got)) == apply(pa.concat_tables(want))
    assert sum(w.late_count for w in shards) == whole.late_count > 0


@pytest.mark.parametrize(
    "spec",
    [
        WindowSpec.session(600, allowed_lateness_ms=1_000, out_of_orderness_ms=200),
        WindowSpec(5_000, 1_000, allowed_lateness_ms=2_000, out_of_orderness_ms=500),
    ],
)
def test_restart_mid_stream_keeps_sessions_and_top_k(spec, purge):
    table = with_items(stream(disorder=3_000, seed=5))
    make = lambda: Windows(spec, "k", "t", "v", top_k=2, item="item")  # noqa: E731
    clean, _ = run(make(), table, batch=250)
    w = make()
    first, second = table.slice(0, 2_500), table.slice(2_500)
    part1 = [w.process(pa.Table.from_batches([b])).fired for b in first.to_batches(250)]
    w = Windows.restore(w.snapshot())
    part2, _ = run(w, second, batch=250)
    resumed = pa.concat_tables([*part1, part2])
    assert resumed.equals(clean)  # the very same rows, in the same order
    assert apply(resumed) == apply(clean) and w.open_windows() == 0


def test_bad_session_and_top_k_settings_are_refused():
    from runtime import ConfigError

    with pytest.raises(ConfigError, match="gap"):
        WindowSpec.session(0)
    with pytest.raises(ConfigError, match="session"):
        WindowSpec(10_000, gap_ms=100)
    with pytest.raises(ConfigError, match="early_fire_ms"):
        WindowSpec(10_000, early_fire_ms=0)
    with pytest.raises(ConfigError, match="lateness"):
        WindowSpec(10_000, allowed_lateness_ms=-1)
    with pytest.raises(ConfigError, match="top_k"):
        Windows(WindowSpec(10_000), "k", "t", "v", top_k=3)
    assert WindowSpec(gap_ms=5) == WindowSpec.session(5)
