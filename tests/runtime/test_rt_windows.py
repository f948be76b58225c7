"""runtime.windows against DuckDB and a plain reference: tumbling, sliding, late data, restart."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from runtime.windows import Windows, WindowSpec


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
