"""Predictive maintenance: the degrading fleet, the rolling features, the Machine kind through
a real Runtime (local mode) and real LanceDB, the model's safe format, and the demo as a
user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from live_helpers import cli_json

from actors.maintenance.app import READINGS, make_app
from actors.maintenance.brain import Brain
from actors.maintenance.fleet import (
    CONDITIONS,
    FLEET_SCHEMA,
    FleetConfig,
    FleetGenerator,
    FleetSource,
)
from actors.maintenance.kind import Machine
from actors.maintenance.model import Forest
from runtime import Runtime, run
from runtime.errors import ConfigError, SnapshotError
from runtime.state.store import Store
from runtime.testing import MemorySource

# 60 devices for 8 days: failures and faults happen, the run takes seconds
CFG = FleetConfig(n_devices=60, days=8, seed=3, failing_share=0.2, fault_share=0.2, warmup_days=3)
ROOT = Path(__file__).resolve().parents[1]


def _stream(cfg: FleetConfig = CFG, batch_size: int = 50_000) -> pa.Table:
    gen = FleetGenerator(cfg)
    return pa.Table.from_batches(list(gen.stream(0, gen.n_events, batch_size)), schema=FLEET_SCHEMA)


# -- the generator ---------------------------------------------------------------------------
def test_generator_is_deterministic_and_independent_of_batching():
    a, b = _stream(batch_size=50_000), _stream(batch_size=7_777)
    assert a.equals(b)
    assert a.num_rows == 60 * 8 * 144
    assert _stream(FleetConfig(n_devices=60, days=8, seed=4)).column("temperature") != a.column(
        "temperature"
    )


def test_site_streams_partition_the_fleet():
    whole = _stream()
    gen = FleetGenerator(CFG)
    parts = [
        pa.Table.from_batches(list(gen.stream(0, gen.site_events(s), 9_999, site=s)))
        for s in CFG.sites
    ]
    ids = np.sort(np.concatenate([p["event_id"].to_numpy() for p in parts]))
    assert np.array_equal(ids, whole["event_id"].to_numpy())
    for site, part in zip(CFG.sites, parts, strict=True):
        assert set(part["site"].to_pylist()) == {site}
        # a site's events are exactly the fleet's events of that site, same values
        mine = whole.filter(pc.equal(whole["site"], site))
        assert mine.sort_by("event_id").equals(part.sort_by("event_id"))


def test_failures_and_sensor_faults_are_labelled_as_such():
    t = _stream()
    truth = FleetGenerator(CFG).devices()
    failing = truth.filter(pc.is_valid(truth["mode"]))
    faulty = truth.filter(pc.is_valid(truth["fault"]))
    assert failing.num_rows == 12 and faulty.num_rows == 12
    assert not set(failing["device_id"].to_pylist()) & set(faulty["device_id"].to_pylist())
    failed = t.filter(t["failure"])
    assert sorted(failed["device_id"].to_pylist()) == sorted(failing["device_id"].to_pylist())
    # sensor faults: labelled as such, never followed by a failure
    fault_rows = t.filter(pc.starts_with(t["condition"], "sensor_"))
    assert fault_rows.num_rows > 0
    assert set(fault_rows["device_id"].to_pylist()) <= set(faulty["device_id"].to_pylist())
    assert not pc.any(t.filter(pc.is_in(t["device_id"], faulty["device_id"]))["failure"]).as_py()
    # stuck sensors repeat one value for the whole fault
    stuck = truth.filter(pc.equal(truth["fault"], "stuck_vibration"))
    if stuck.num_rows:
        d = stuck["device_id"][0].as_py()
        rows = t.filter(
            pc.and_(pc.equal(t["device_id"], d), pc.equal(t["condition"], "sensor_stuck"))
        )
        assert len(set(rows["vibration"].to_pylist())) == 1
    assert set(t["condition"].unique().to_pylist()) <= set(CONDITIONS)


def test_heldout_fleet_is_shaped_differently():
    h = FleetConfig.heldout(seed=5)
    assert (h.interval_ms, h.id_prefix, h.seed) != (CFG.interval_ms, CFG.id_prefix, CFG.seed)
    assert h.first_event_id > 0 and h.degrade_h != FleetConfig().degrade_h


def test_bad_configs_are_refused():
    with pytest.raises(ConfigError):
        FleetConfig(n_devices=0)
    with pytest.raises(ConfigError):
        FleetConfig(failing_share=0.7, fault_share=0.5)
    with pytest.raises(ConfigError):
        FleetGenerator(CFG).stream(0, 10, site="mars-1").__next__()


# -- the features and the models -------------------------------------------------------------
def _run_local(tmp: Path, batch_size: int, shards: int = 1, learn: bool = True):
    from actors.maintenance.kind import MaintenanceConfig

    with Runtime(data_dir=tmp, mode="local", shards=shards) as rt:
        stats = run(
            rt, make_app(MaintenanceConfig(learn=learn)), FleetSource(CFG, batch_size=batch_size)
        )
    store = Store(tmp)
    machines = store.read("machines").drop_columns(["_key_hash"]).sort_by("device_id")
    return stats, machines, store


def test_features_and_state_do_not_depend_on_batch_boundaries(tmp_path):
    # without learning the models stay put, so everything is a pure function of the readings
    s1, m1, st1 = _run_local(tmp_path / "a", batch_size=50_000, learn=False)
    s2, m2, st2 = _run_local(tmp_path / "b", batch_size=3_331, learn=False)
    assert s1.accepted == s2.accepted == CFG.n_devices * 8 * 144
    names = ("readings", "windows", "ewma", "det", "ring_x", "ring_w", "wsum", "sensor", "win")
    for name in (*names, "alarm", "alarm_w", "closed_w", "risk"):
        assert m1[name].equals(m2[name]), name
    # a failure in a device's last, still open, window is not counted yet
    assert s1.app["failures"] == s2.app["failures"] in (11, 12)
    assert s1.app["sensor_fault_rows"] == s2.app["sensor_fault_rows"] > 0
    # and so are the rows that reached the core: alarms, sensor-fault episodes
    keys = [("event_id", "ascending"), ("kind", "ascending")]
    rows1, rows2 = st1.read("maintenance").sort_by(keys), st2.read("maintenance").sort_by(keys)
    assert rows1.num_rows > 0 and rows1.drop_columns(["model_version"]).equals(
        rows2.drop_columns(["model_version"])
    )


def test_app_learns_from_failures_and_writes_alarms_and_health(tmp_path):
    stats, machines, store = _run_local(tmp_path, batch_size=20_000, shards=2)
    app = stats.app
    assert app["failures"] in (11, 12)
    assert app["failure_windows_learned"] >= 12 * 20  # a day of windows before each failure
    health = store.read("device_health")
    # one row per device (upserted), with its current risk
    assert health.num_rows == CFG.n_devices == len(set(health["device_id"].to_pylist()))
    assert pc.min(health["risk"]).as_py() >= 0 and pc.max(health["risk"]).as_py() <= 1
    live = {r["device_id"]: r["risk"] for r in machines.select(["device_id", "risk"]).to_pylist()}
    assert all(0 <= v <= 1 for v in live.values())
    rows = store.read("maintenance")
    sensor = rows.filter(pc.equal(rows["kind"], "sensor_fault"))
    assert sensor.num_rows > 0 and set(sensor["source"].to_pylist()) == {"rule"}
    # the core fitted the forest and the registry has its versions (arrays, no pickle)
    models = store.read("models")
    blob = models.sort_by([("version", "descending")])["blob"][0].as_py()
    assert not blob.startswith(b"\x80")  # not a pickle
    brain = Brain.from_bytes(blob)
    assert brain.forest is not None and brain.clf.positives > 0
    # only alarms, sensor faults and health rows crossed to the core
    assert app["crossed_rows"] == rows.num_rows + app["reduction_rows"] * 0 + _health_rows(stats)
    assert app["raw_rows"] / app["crossed_rows"] > 20


def _health_rows(stats) -> int:
    return int(stats.counters.get("health_rows", 0)) if stats.counters else 0


def test_alarm_rows_carry_mode_lead_time_and_top_signals(tmp_path):
    # learn on one fleet (failures seen, forest fitted at its end), alarm on a second
    from dataclasses import replace

    from actors.maintenance.kind import MaintenanceConfig

    second = replace(CFG, seed=9, id_prefix="n", first_event_id=1 << 40)
    app = make_app(MaintenanceConfig(threshold=0.3, reset=0.1, confirm=1))
    with Runtime(data_dir=tmp_path, mode="local", shards=1) as rt:
        run(rt, app, FleetSource(CFG))
        run(rt, app, FleetSource(second))
    rows = Store(tmp_path).read("maintenance")
    alarms = rows.filter(pc.equal(rows["kind"], "failure_risk"))
    assert alarms.num_rows > 0
    for r in alarms.to_pylist():
        assert r["mode"] in ("bearing_wear", "overheating", "unknown")
        assert len(r["top_signals"]) == 3 and all(" " in s for s in r["top_signals"])
        assert r["state"] in ("open", "update", "close")
        assert r["source"] in ("drift", "classifier", "forest")
        assert r["state"] != "open" or r["risk"] >= 0.3  # opened at the threshold
        assert r["lead_time_h"] is None or 0 <= r["lead_time_h"] <= 24
    assert alarms["lead_time_h"].null_count < alarms.num_rows


def test_forest_matches_sklearn_and_refuses_bad_arrays():
    from sklearn.ensemble import IsolationForest

    rng = np.random.default_rng(1)
    X = rng.normal(size=(3000, 5))
    f = Forest.fit(X, seed=3, trees=30)
    ref = IsolationForest(n_estimators=30, max_samples=256, random_state=3).fit(X)
    probe = np.vstack([rng.normal(size=(200, 5)), rng.normal(size=(50, 5)) * 5])
    assert np.allclose(f.score(probe), -ref.score_samples(probe))
    bad = f.arrays()
    bad["forest_left"] = bad["forest_left"] + 10**6
    with pytest.raises(ValueError):
        Forest.from_arrays(bad)


def test_a_snapshot_that_is_not_one_is_refused():
    with pytest.raises(ValueError):
        Brain.from_bytes(b"\x80\x04not a model")
    import io

    buf = io.BytesIO()
    np.savez(buf, meta=np.frombuffer(json.dumps({"format": "other"}).encode(), dtype=np.uint8))
    with pytest.raises(ValueError):
        Brain.from_bytes(buf.getvalue())
    m = Machine()
    with pytest.raises(
        SnapshotError, match="snapshot .maintenance_model. is not an edgecore snapshot"
    ):
        m.restore(b"garbage")
    assert m.brain.version == 0


# -- hostile input -----------------------------------------------------------------------------
def test_hostile_readings_are_dead_lettered_not_crashing(tmp_path):
    good = _stream(FleetConfig(n_devices=4, days=3)).slice(0, 2_000)
    bad = good.slice(0, 6).to_pylist()
    bad[0]["temperature"] = float("nan")
    bad[1]["vibration"] = float("inf")
    bad[2]["load"] = 1e300
    bad[3]["temperature"] = -1e308
    bad[4]["device_id"] = None
    bad[5]["site"] = "x" * 10_000
    for i, r in enumerate(bad):
        r["event_id"] = 10**9 + i
    hostile = pa.Table.from_pylist(bad, schema=FLEET_SCHEMA)
    with Runtime(data_dir=tmp_path, mode="local", shards=1) as rt:
        stats = run(rt, make_app(), MemorySource(pa.concat_tables([good, hostile]), id="hostile"))
        with pytest.raises(Exception):  # noqa: B017 - a whole batch without readings is refused
            run(rt, make_app(), MemorySource(good.drop_columns(["temperature"]), id="missing"))
    assert stats.accepted == good.num_rows and stats.dead_lettered == 6
    dead = Store(tmp_path).read("dead_letters")
    assert dead.num_rows == 6


def test_schema_column_for_every_reading_field():
    names = [c.name for c in READINGS.columns]
    assert names == FLEET_SCHEMA.names


# -- the demo as users run it --------------------------------------------------------------------
def test_demo_through_the_cli(tmp_path):
    out = cli_json(
        tmp_path, "demo", "--app", "maintenance", "--events", "200000", "--shards", "1",
        "--data", str(tmp_path / "d"),
    )  # fmt: skip
    for key in (
        "failures",
        "predicted",
        "median_lead_time_h",
        "horizon_h",
        "false_alarms_per_100_device_days",
        "sensor_faults_reported",
    ):
        assert key in out, key
    assert out["events"] == 200_000 and out["horizon_h"] == 24.0
    assert out["failures"] > 0 and out["device_days"] > 0


def test_demo_on_a_simulated_cluster_predicts_at_the_edges(tmp_path):
    """`edgecore demo --edges 2` as users run it: the transactions at the core and, by
    default, the maintenance app at the two edges, with its predictions in the JSON."""
    out = cli_json(
        tmp_path, "demo", "--edges", "2", "--events", "200000", "--data", str(tmp_path / "d")
    )
    edge = out["maintenance"]
    assert edge["sites"] == ["eu-1", "eu-2"] and edge["events"] == 40_000
    assert edge["failures"] >= 1 and 0 <= edge["predicted"] <= edge["failures"]
    assert edge["horizon_h"] == 24.0 and edge["sensor_faults_reported"] == 0
    # the machines ran at their sites' edge nodes, the customers at the core
    where = {p["actor"]: (p["role"], p["site"]) for p in out["placement"]}
    machines = [v for k, v in where.items() if k.startswith("shard:machines:")]
    assert machines and all(role == "edge" for role, _ in machines), where
    # ... and what they forward arrives at the core through each site's receiver
    core = [v for k, v in where.items() if "core_machines" in k or "receiver:machines" in k]
    assert len(core) >= 3 and all(role == "core" for role, _ in core), where
