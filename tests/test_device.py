"""Tests for the device telemetry generator and the edge-side Device kind (local mode, no Ray)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from actors.devices.app import TELEMETRY, device_app
from actors.devices.kind import Device, DeviceConfig
from actors.devices.telemetry import (
    TELEMETRY_SCHEMA,
    TelemetryConfig,
    TelemetryGenerator,
    TelemetrySource,
)
from runtime import RunStats, Runtime, run, setup
from runtime.errors import ConfigError
from runtime.state.store import Store
from runtime.streams.sources import rows_to_table
from runtime.testing import MemorySource

# 400 devices, 10% failing within the first 40 min; 300 ticks of 10 s = 50 min of stream
CFG = TelemetryConfig(n_devices=400, failing_share=0.1, horizon_ms=40 * 60_000, seed=5)
N = 400 * 300


def _events(config: TelemetryConfig = CFG, n: int = N, batch_size: int = 50_000) -> pa.Table:
    return pa.Table.from_batches(
        list(TelemetryGenerator(config).batches(n, batch_size)), schema=TELEMETRY_SCHEMA
    )


def _run(
    data_dir: Path,
    sources: list,
    config: DeviceConfig | None = None,
) -> list[RunStats]:
    with Runtime(data_dir=data_dir, mode="local", shards=2) as rt:
        return [run(rt, device_app(config), src) for src in sources]


def _tables(data_dir: Path) -> dict[str, pa.Table]:
    store = Store(data_dir)
    return {
        "devices": store.read("devices").drop_columns(["_key_hash"]).sort_by("device_id"),
        "device_health": store.read("device_health").sort_by(
            [("device_id", "ascending"), ("window_start", "ascending")]
        ),
        "maintenance": store.read("maintenance").sort_by("event_id"),
    }


@pytest.fixture(scope="module")
def events() -> pa.Table:
    return _events()


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunStats, dict[str, pa.Table]]:
    """The fleet's stream in 50k-row batches: the run most tests look at."""
    d = tmp_path_factory.mktemp("whole")
    (stats,) = _run(d, [TelemetrySource(CFG, N, batch_size=50_000)])
    return stats, _tables(d)


# -- the generator -------------------------------------------------------------------------------
def test_stream_shape(events: pa.Table) -> None:
    assert events.num_rows == N and events.schema == TELEMETRY_SCHEMA
    assert events["event_id"].to_pylist() == list(range(N))
    ts = events["ts"].cast(pa.int64()).to_numpy()
    assert (np.diff(ts) >= 0).all()
    ids = events["device_id"].unique()
    assert len(ids) == CFG.n_devices
    assert pc.all(pc.match_substring_regex(ids, r"^d-eu-[12]-\d{5}$")).as_py()
    # each device belongs to one site, and its id says which
    con = duckdb.connect()
    con.register("ev", events)
    assert con.execute(
        "SELECT count(*) FROM (SELECT device_id, count(DISTINCT site) AS s, any_value(site) AS a "
        "FROM ev GROUP BY 1) WHERE s <> 1 OR device_id NOT LIKE 'd-' || a || '-%'"
    ).fetchone() == (0,)
    # one reading per device every 10 s
    df = events.select(["device_id", "ts"]).to_pandas().sort_values(["device_id", "ts"])
    gaps = df.groupby("device_id")["ts"].diff().dropna().unique()
    assert [g.total_seconds() for g in gaps] == [10.0]
    assert TELEMETRY.validate(events)[1].num_rows == 0  # all valid


def test_deterministic_resumable_and_independent_of_batch_size(events: pa.Table) -> None:
    assert _events(batch_size=7_001).equals(events)
    assert not _events(TelemetryConfig(n_devices=400, seed=6), 10_000).equals(
        events.slice(0, 10_000)
    )
    src = TelemetrySource(CFG, N, batch_size=9_000)
    resumed = list(src.batches(start=12_345))
    assert resumed[0][1] == 21_345 and resumed[-1][1] == N
    assert pa.concat_tables([b for b, _ in resumed]).equals(events.slice(12_345))


def test_site_streams_partition_the_fleet(events: pa.Table) -> None:
    parts = []
    for site in CFG.sites:
        src = TelemetrySource(CFG, N // 2, batch_size=11_000, site=site)
        assert src.id.endswith(f":site={site}")
        part = pa.concat_tables([b for b, _ in src.batches()])
        assert pc.all(pc.equal(part["site"], site)).as_py()
        # resumable on its own positions
        tail = pa.concat_tables([b for b, _ in src.batches(start=5_000)])
        assert tail.equals(part.slice(5_000))
        parts.append(part)
    # the same events, with the same ids, as the whole fleet's stream
    assert pa.concat_tables(parts).sort_by("event_id").equals(events)
    with pytest.raises(ConfigError, match="unknown site"):
        TelemetrySource(CFG, 10, site="us-9")


def test_failure_label_and_degradation(events: pa.Table) -> None:
    fleet = TelemetryGenerator(CFG).devices()
    failing = set(fleet.filter(pc.is_valid(fleet["fails_at"]))["device_id"].to_pylist())
    assert len(failing) == round(CFG.n_devices * CFG.failing_share)
    con = duckdb.connect()
    con.register("ev", events)
    con.register("fleet", fleet)
    # the label is exactly "fails within the next hour"
    assert con.execute(
        "SELECT count(*) FROM ev JOIN fleet USING (device_id) WHERE failure <> coalesce("
        "ts < fails_at AND ts >= fails_at - INTERVAL 1 HOUR, false)"
    ).fetchone() == (0,)
    labelled = {
        r[0] for r in con.execute("SELECT DISTINCT device_id FROM ev WHERE failure").fetchall()
    }
    assert labelled == failing  # all fail within the stream
    # degrading readings run hotter and shake harder; healthy devices are stationary
    hot, calm = con.execute(
        "SELECT avg(vibration) FILTER (failure), avg(vibration) FILTER (NOT failure) FROM ev"
    ).fetchone()
    assert hot > 2 * calm
    drift = con.execute(
        "SELECT max(abs(a - b)) FROM (SELECT device_id, avg(temperature) FILTER "
        "(ts < TIMESTAMP '2026-01-01 00:25:00') a, avg(temperature) FILTER (ts >= "
        "TIMESTAMP '2026-01-01 00:25:00') b FROM ev WHERE device_id NOT IN (SELECT device_id "
        "FROM fleet WHERE fails_at IS NOT NULL) GROUP BY 1)"
    ).fetchone()[0]
    assert drift < 0.25


def test_generation_speed() -> None:
    gen = TelemetryGenerator(TelemetryConfig())
    t0 = time.perf_counter()
    rows = sum(b.num_rows for b in gen.batches(2_000_000))
    assert rows == 2_000_000 and time.perf_counter() - t0 < 3.0


# -- the Device kind through the runtime ----------------------------------------------------------
def test_counts_reconcile_and_profiles_match_groupby(whole, events: pa.Table) -> None:
    stats, tables = whole
    assert (stats.input, stats.accepted, stats.dead_lettered, stats.duplicates) == (N, N, 0, 0)
    assert stats.app["raw_rows"] == N
    con = duckdb.connect()
    con.register("ev", events)
    oracle = con.sql(
        "SELECT device_id, any_value(site) AS site, count(*) AS count, max(ts) AS last_ts "
        "FROM ev GROUP BY 1 ORDER BY 1"
    ).to_arrow_table()
    got = tables["devices"].select(["device_id", "site", "count", "last_ts"])
    assert got.equals(oracle.cast(got.schema))
    # anomalies in the profiles add up to the alerts
    assert pc.sum(tables["devices"]["anomalies"]).as_py() == tables["maintenance"].num_rows
    assert stats.app["maintenance_rows"] == tables["maintenance"].num_rows
    assert stats.app["summary_rows"] == tables["device_health"].num_rows


def _reference(events: pa.Table, cfg: DeviceConfig) -> tuple[dict[int, float], dict[str, tuple]]:
    """A plain per-reading loop of the same detector: anomalous event ids -> z, final EWMAs."""
    state: dict[str, list[float]] = {}
    alerts: dict[int, float] = {}
    floors = (cfg.temp_min_std**2, cfg.vib_min_std**2)
    for eid, dev, temp, vib in zip(
        *(events[c].to_pylist() for c in ("event_id", "device_id", "temperature", "vibration")),
        strict=True,
    ):
        s = state.setdefault(dev, [0, 0.0, 0.0, 0.0, 0.0])  # count, tm, tv, vm, vv
        zs = []
        for j, x in enumerate((temp, vib)):
            mu, v = s[1 + 2 * j], s[2 + 2 * j]
            std = math.sqrt(max(v, floors[j]))
            scored = s[0] >= cfg.warmup
            z = (x - mu) / std if scored else 0.0
            zs.append(z)
            d = x - mu
            if scored:
                d = min(max(d, -cfg.z_threshold * std), cfg.z_threshold * std)
            if s[0] == 0:
                s[1 + 2 * j], s[2 + 2 * j] = x, 0.0
            else:
                s[1 + 2 * j] = mu + cfg.alpha * d
                s[2 + 2 * j] = (1 - cfg.alpha) * (v + cfg.alpha * d * d)
        if max(abs(z) for z in zs) > cfg.z_threshold:
            alerts[eid] = max(zs, key=abs)
        s[0] += 1
    return alerts, {k: tuple(v) for k, v in state.items()}


def test_detector_matches_a_per_reading_loop(whole, events: pa.Table) -> None:
    _, tables = whole
    alerts, state = _reference(events, DeviceConfig())
    m = tables["maintenance"]
    assert m["event_id"].to_pylist() == sorted(alerts)
    assert m["z"].to_pylist() == pytest.approx([alerts[i] for i in sorted(alerts)], rel=1e-12)
    for row in tables["devices"].to_pylist():
        n, tm, tv, vm, vv = state[row["device_id"]]
        assert row["count"] == n
        got = (row["temp_mean"], row["temp_var"], row["vib_mean"], row["vib_var"])
        assert got == pytest.approx((tm, tv, vm, vv), rel=1e-12)


def test_summaries_are_the_closed_event_time_windows(whole, events: pa.Table) -> None:
    _, tables = whole
    con = duckdb.connect()
    w = pc.divide(pc.cast(events["ts"], pa.int64()), 60_000)  # the event-time window
    con.register("ev", events.append_column("w", w))
    con.register("m", tables["maintenance"].select(["event_id"]))
    # every 60 s window of a device except its newest (still open at the edge)
    oracle = con.sql(
        """SELECT device_id, any_value(site) AS site, w * 60000 AS ws, count(*) AS n,
                  avg(temperature) AS temp_mean, max(temperature) AS temp_max,
                  avg(vibration) AS vib_mean, max(vibration) AS vib_max,
                  count(m.event_id) AS anomalies
           FROM (SELECT *, max(w) OVER (PARTITION BY device_id) AS wmax FROM ev) e
           LEFT JOIN m USING (event_id)
           WHERE w < wmax GROUP BY device_id, w ORDER BY device_id, w"""
    ).to_arrow_table()
    got = tables["device_health"]
    assert got.num_rows == oracle.num_rows
    assert got["device_id"].equals(oracle["device_id"])
    assert got["site"].equals(oracle["site"])
    assert pc.cast(got["window_start"], pa.int64()).to_pylist() == oracle["ws"].to_pylist()
    assert pc.all(
        pc.equal(
            pc.subtract(
                pc.cast(got["window_end"], pa.int64()), pc.cast(got["window_start"], pa.int64())
            ),
            60_000,
        )
    ).as_py()
    for col in ("n", "anomalies", "temp_max", "vib_max"):
        assert got[col].to_pylist() == oracle[col].to_pylist(), col
    for col in ("temp_mean", "vib_mean"):
        assert got[col].to_pylist() == pytest.approx(oracle[col].to_pylist(), rel=1e-9), col


def test_edge_reduction(whole, tmp_path: Path) -> None:
    stats, _ = whole
    app = stats.app
    assert app["crossed_rows"] == app["summary_rows"] + app["maintenance_rows"]
    # readings every 10 s, summaries every 60 s: at most 6 readings per summary, and a
    # summary row (two ids, two timestamps, 6 numbers) outweighs a reading, so 60 s windows
    # cut rows ~6x and bytes ~4.4x; a 10x cut needs windows of 3 minutes and more
    assert app["reduction_rows"] >= 5.5
    assert app["reduction_bytes"] >= 4.0
    assert app["open_rows"] <= CFG.n_devices * 6  # only the newest window of each device
    (five_min,) = _run(
        tmp_path,
        [TelemetrySource(CFG, N, batch_size=50_000)],
        DeviceConfig(summary_every_ms=300_000),
    )
    assert five_min.app["reduction_rows"] >= 10 and five_min.app["reduction_bytes"] >= 10


def test_degrading_devices_get_maintenance_alerts(whole, events: pa.Table) -> None:
    stats, tables = whole
    failing = set(events.filter(events["failure"])["device_id"].unique().to_pylist())
    alerted = set(tables["maintenance"]["device_id"].unique().to_pylist())
    healthy = CFG.n_devices - len(failing)
    tp = len(failing & alerted)
    precision, recall = tp / len(alerted), tp / len(failing)
    assert precision >= 0.9 and recall >= 0.85, (precision, recall)
    assert len(alerted - failing) <= 0.02 * healthy
    # most alerts fall in the hour before a failure; the rest are the drop when the device
    # comes back repaired (a real level shift, but not one the label covers)
    assert stats.app["alert_precision"] >= 0.6


@pytest.mark.parametrize("batch_size", [3_001])
def test_results_do_not_depend_on_batch_size(whole, tmp_path: Path, batch_size: int) -> None:
    _, expected = whole
    _run(tmp_path, [TelemetrySource(CFG, N, batch_size=batch_size)])
    got = _tables(tmp_path)
    for name, table in expected.items():
        assert got[name].equals(table), name


def test_sites_at_their_edges_match_the_whole_fleet(whole, tmp_path: Path) -> None:
    """Each site's stream run on its own (as at its edge node) yields the fleet's results."""
    _, expected = whole
    sources = [TelemetrySource(CFG, N // 2, batch_size=20_000, site=s) for s in CFG.sites]
    stats = _run(tmp_path, sources)
    assert [s.accepted for s in stats] == [N // 2, N // 2]
    got = _tables(tmp_path)
    for name, table in expected.items():
        assert got[name].equals(table), name


def test_bad_telemetry_is_dead_lettered(tmp_path: Path) -> None:
    good = {
        "ts": "2026-01-01T00:00:00Z",
        "device_id": "d-eu-1-00001",
        "site": "eu-1",
        "temperature": 40.0,
        "vibration": 2.0,
        "pressure": 300.0,
    }
    rows = [
        {**good, "event_id": 1},
        {**good, "event_id": 2, "temperature": 250.0},
        {**good, "event_id": 3, "vibration": -0.5},
        {**good, "event_id": 4, "pressure": float("nan")},
        {**good, "event_id": 5, "site": None},
        {**good, "event_id": 6, "device_id": "d" * 129},
        {**good, "event_id": 7, "ts": "yesterday"},
        {**good, "event_id": 8, "temperature": "hot"},
        {**good, "event_id": 9},
        {**good, "event_id": 9},  # a redelivery
    ]
    # mixed-type columns come in as text, as from JSON lines
    (stats,) = _run(tmp_path, [MemorySource(rows_to_table(rows), batch_size=4, id="bad")])
    assert (stats.input, stats.accepted, stats.dead_lettered, stats.duplicates) == (10, 2, 7, 1)
    dead = Store(tmp_path).read("dead_letters").sort_by("position").to_pylist()
    reasons = [r["reason"] for r in dead]
    assert reasons == [
        "temperature: 250.0 is above the maximum 200",
        "vibration: -0.5 is below the minimum 0",
        "pressure: not a finite number: nan",
        "site: missing value",
        "device_id: string of 129 bytes exceeds 128",
        "ts: not a valid timestamp: 'yesterday'",
        "temperature: not a valid float64: 'hot'",
    ]
    assert [r["position"] for r in dead] == [1, 2, 3, 4, 5, 6, 7]
    assert all(r["step"] == "validate:telemetry" and r["source"] == "bad" for r in dead)
    with Runtime(data_dir=tmp_path, mode="local", shards=2) as rt:
        setup(rt, device_app())  # as the run left it: the edge kind forwards to the core's
        assert Device.ref("d-eu-1-00001").get()["count"] == 2
