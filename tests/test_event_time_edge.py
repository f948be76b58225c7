"""Event time at the edge: each site's ingest stage tracks its own watermark and sends it
with its batches, so windows of site-partitioned kinds fire at the edge; a restart
resumes each site's watermark from the commit."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest

from runtime import Column, EventSchema, Runtime
from runtime.dataflow.app import App, EventTime
from runtime.eventtime.windows import WindowSpec
from runtime.ingest.sites import run_sites
from runtime.operators.windowed import window_kind
from runtime.testing import MemorySource

SCHEMA = EventSchema(
    "reading",
    [
        Column("event_id", "int64"),
        Column("device", "string"),
        Column("site", "string"),
        Column("t", "int64"),
        Column("temp", "float64"),
    ],
)
SITES = ("eu-1", "eu-2")


def site_windows() -> type:
    """Defined in a function, so Ray's workers get the class itself, not this test module."""
    base = window_kind("per_device", WindowSpec(1_000), key="device", time="t", value="temp")

    class SiteWindows(base):  # type: ignore[valid-type,misc]
        site_key = "site"  # shards per site, at that site's edge

    return SiteWindows


def readings(site: str, n: int, first_id: int) -> list[dict]:
    # each site on its own clock; a few events 300 ms out of order
    rows = []
    for i in range(n):
        t = i * 37 + (300 if i % 50 == 7 else 0) + (5_000 if site == "eu-2" else 0)
        rows.append(
            {
                "event_id": first_id + i,
                "device": f"{site}-d{i % 4}",
                "site": site,
                "t": t,
                "temp": float(i % 11),
            }
        )
    return rows


def app() -> App:
    return App(
        "telemetry",
        SCHEMA,
        site_windows(),
        sites=SITES,
        event_time=EventTime("t", out_of_orderness_ms=400),
    )


def oracle(rows: list[dict]) -> list[tuple]:
    con = duckdb.connect()
    con.register("r", pa.Table.from_pylist(rows))
    return sorted(
        con.sql(
            "SELECT device, (t // 1000) * 1000, count(*), round(sum(temp), 6) FROM r GROUP BY ALL"
        ).fetchall()
    )


def answer(table: pa.Table) -> list[tuple]:
    last = {}
    for r in table.to_pylist():
        last[(r["device"], r["window_start"])] = (r["count"], round(r["sum"], 6))
    return sorted((k[0], k[1], *v) for k, v in last.items())


@pytest.mark.parametrize("mode", ["local", "ray"])
def test_site_windows_fire_at_the_edge_and_equal_sql(mode, tmp_path, request):
    if mode == "ray":
        request.getfixturevalue("ray_session")
    data = {s: readings(s, 900, 10_000 * (i + 1)) for i, s in enumerate(SITES)}
    sources = {s: MemorySource(rows, batch_size=100, id=s) for s, rows in data.items()}
    with Runtime(data_dir=str(tmp_path), mode=mode, shards=1) as rt:
        stats = run_sites(rt, app(), sources, step_rows=200)
        fired = rt.read_topic("per_device", 0, 100_000)
        late = rt.read_topic("late_events", 0, 100_000)
    assert stats.accepted == 1_800 and late.num_rows == 0  # disorder within the bound
    assert answer(fired) == oracle(data["eu-1"] + data["eu-2"])
    # windows fired as each site's time moved on, not only at the end of the stream
    keys = zip(fired["device"].to_pylist(), fired["window_start"].to_pylist(), strict=True)
    assert len(fired) == len(set(keys))  # one final emission per window, nothing refired


def test_site_watermarks_resume_from_the_commit(tmp_path):
    data = {s: readings(s, 600, 10_000 * (i + 1)) for i, s in enumerate(SITES)}
    late_one = {"event_id": 99_999, "device": "eu-1-d0", "site": "eu-1", "t": 10, "temp": 1.0}
    with Runtime(data_dir=str(tmp_path), mode="local", shards=1) as rt:
        sources = {s: MemorySource(rows, batch_size=100, id=s) for s, rows in data.items()}
        run_sites(rt, app(), sources, end_of_stream=False)
        marks = {k: m.current() for k, m in rt.checkpoints.watermarks.items()}
        fired = rt.read_topic("per_device", 0, 100_000)
    assert set(marks) == {"per_device@eu-1", "per_device@eu-2"}
    assert marks["per_device@eu-2"] > marks["per_device@eu-1"] > 0
    # the stream did not end: exactly the windows each site's watermark passed have fired
    due = [
        w
        for w in oracle(data["eu-1"] + data["eu-2"])
        if w[1] + 1_000 <= marks[f"per_device@{w[0][:4]}"]
    ]
    assert due and answer(fired) == due
    with Runtime(data_dir=str(tmp_path), mode="local", shards=1) as rt:
        # a second run on the same folder: the event at t=10 is late for eu-1 because
        # the site's watermark came back from the commit
        more = {
            "eu-1": MemorySource([late_one], id="eu-1-more"),
            "eu-2": MemorySource([], id="none"),
        }
        stats = run_sites(rt, app(), more)
        late = rt.read_topic("late_events", 0, 100)
    assert late.num_rows == 1 == stats.counters["per_device_late"]
    assert late.to_pylist()[0]["watermark"] == marks["per_device@eu-1"]
