"""The maintenance app on real Ray: shards per site, the model synced across them at the core."""

from __future__ import annotations

import pyarrow.compute as pc

from actors.maintenance.app import make_app
from actors.maintenance.brain import Brain
from actors.maintenance.fleet import FleetConfig, FleetSource
from runtime import Runtime, run
from runtime.state.store import Store

CFG = FleetConfig(n_devices=40, days=6, seed=5, failing_share=0.2, fault_share=0.1)


def test_app_on_ray_with_site_shards(ray_session, tmp_path):
    with Runtime(data_dir=tmp_path, shards=1) as rt:
        stats = run(rt, make_app(), FleetSource(CFG, batch_size=10_000))
        where = {p["actor"] for p in rt.placement()}
    assert stats.accepted == 40 * 6 * 144 and stats.dead_lettered == 0
    assert any("machines" in a for a in where)
    store = Store(tmp_path)
    health = store.read("device_health")
    assert health.num_rows == 40
    assert set(health["site"].to_pylist()) == set(CFG.sites)
    machines = store.read("machines")
    assert pc.sum(machines["readings"]).as_py() == stats.accepted
    assert stats.app["failures"] > 0 and stats.app["failure_windows_learned"] > 0
    # the merged model version: arrays and JSON, both sites' failures in it
    blob = store.read("models").sort_by([("version", "descending")])["blob"][0].as_py()
    assert Brain.from_bytes(blob).clf.positives == stats.app["failure_windows_learned"]
