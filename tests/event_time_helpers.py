"""Plain references for the event-time tests: a disordered stream, the source watermark the
runtime promises (per batch, per partition), which events are late, windows in DuckDB, and
what a consumer of a window topic keeps."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa

from runtime import Column, EventSchema

MIN = int(np.iinfo(np.int64).min)

SCHEMA = EventSchema(
    "readings",
    [
        Column("event_id", "int64"),
        Column("k", "string"),
        Column("t", "int64"),
        Column("v", "float64"),
        Column("site", "string", required=False),
        Column("item", "string", required=False),
    ],
)


def stream(
    n: int,
    keys: int = 5,
    span_ms: int = 60_000,
    disorder_ms: int = 1_500,
    very_late: float = 0.03,
    very_late_ms: int = 12_000,
    seed: int = 1,
) -> pa.Table:
    """Events in roughly increasing time, each up to ``disorder_ms`` behind, and a share
    ``very_late`` of them far behind (sure to be late for small lateness)."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, span_ms, n)) - rng.integers(0, disorder_ms + 1, n)
    far = rng.random(n) < very_late
    t[far] -= rng.integers(very_late_ms // 2, very_late_ms, int(far.sum()))
    return pa.table(
        {
            "event_id": np.arange(n, dtype=np.int64),
            "k": [f"k{i}" for i in rng.integers(0, keys, n)],
            "t": np.maximum(t, 0).astype(np.int64),
            # whole numbers: sums are exact whatever the order they are added in
            "v": rng.integers(0, 100, n).astype(np.float64),
            "item": [f"i{i}" for i in rng.zipf(1.6, n) % 7],
        }
    )


def watermarks_before(
    table: pa.Table, batch: int, out_of_orderness_ms: int, partition: str | None = None
) -> np.ndarray:
    """For each row, the source watermark before its batch: max event time seen per
    partition, least over the partitions seen, minus the out-of-orderness, never going back."""
    t = table.column("t").to_numpy()
    parts = table.column(partition).to_pylist() if partition else ["all"] * len(t)
    wm, maxes = MIN, {}
    out = np.empty(len(t), dtype=np.int64)
    for lo in range(0, len(t), batch):
        hi = min(lo + batch, len(t))
        out[lo:hi] = wm
        for p, ti in zip(parts[lo:hi], t[lo:hi], strict=True):
            maxes[p] = max(maxes.get(p, MIN), int(ti))
        wm = max(wm, min(maxes.values()) - out_of_orderness_ms)
    return out


def late_mask(
    t: np.ndarray, wm_before: np.ndarray, size: int, slide: int | None, lateness: int
) -> np.ndarray:
    """Late: every window of the event (the last one closes last) is past its lateness."""
    step = slide or size
    return (t // step) * step + size + lateness <= wm_before


def duck_windows(
    table: pa.Table, wm_before: np.ndarray, size: int, slide: int | None, lateness: int
) -> dict[tuple[str, int], tuple]:
    """(key, window_start) -> (count, sum, min, max) by SQL, each event in each of its windows
    still open when its batch came (a sliding window's event may be late for some only)."""
    step = slide or size
    con = duckdb.connect()
    con.register("ev", table.append_column("wm", pa.array(wm_before, pa.int64())))
    rows = con.sql(
        f"""WITH w AS (SELECT k, v, wm, (t // {step}) * {step} - j * {step} AS ws
                       FROM ev, range(0, {size // step}) AS r(j))
            SELECT k, ws, count(*), sum(v), min(v), max(v) FROM w
            WHERE ws + {size} + {lateness} > wm GROUP BY k, ws"""
    ).fetchall()
    return {(k, ws): (c, s, mn, mx) for k, ws, c, s, mn, mx in rows}


def kept(*runs: pa.Table, key: str = "k", columns: tuple[str, ...] = ()) -> dict:
    """What a consumer keeps from a window topic read in one or more runs (in that order):
    the last row per (key, window_start), by offset within a run, deleted by a ``retract``;
    values (count, sum, min, max, *columns)."""
    out: dict = {}
    for rows in runs:
        if "_offset" in rows.column_names:
            rows = rows.sort_by("_offset")
        for r in rows.to_pylist():
            w = (r[key], r["window_start"])
            if r["emit"] == "retract":
                assert w in out, f"a retract of {w}, which was not shown"
                del out[w]
                continue
            extra = tuple(_frozen(r[c]) for c in columns)
            out[w] = (r["count"], r["sum"], r["min"], r["max"], *extra)
    return out


def _frozen(v):
    if isinstance(v, list):
        return tuple(_frozen(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _frozen(x)) for k, x in v.items()))
    return v


def duck_top_items(
    table: pa.Table, wm_before: np.ndarray, size: int, slide: int | None, lateness: int, k: int
) -> dict[tuple[str, int], tuple]:
    """(key, window_start) -> its ``k`` most frequent items as ((item, count), ...), most
    frequent first, ties by the smaller item; over the same events as :func:`duck_windows`."""
    step = slide or size
    con = duckdb.connect()
    con.register("ev", table.append_column("wm", pa.array(wm_before, pa.int64())))
    rows = con.sql(
        f"""WITH w AS (SELECT k, item, wm, (t // {step}) * {step} - j * {step} AS ws
                       FROM ev, range(0, {size // step}) AS r(j)),
                 c AS (SELECT k, ws, item, count(*) AS n FROM w
                       WHERE ws + {size} + {lateness} > wm AND item IS NOT NULL
                       GROUP BY k, ws, item),
                 r AS (SELECT *, row_number() OVER (PARTITION BY k, ws ORDER BY n DESC, item)
                       AS rn FROM c)
            SELECT k, ws, list(item ORDER BY rn), list(n ORDER BY rn) FROM r
            WHERE rn <= {k} GROUP BY k, ws"""
    ).fetchall()
    return {(key, ws): tuple(zip(items, ns, strict=True)) for key, ws, items, ns in rows}
