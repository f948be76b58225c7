"""Placement and node loss on a real multi-node Ray: one core head and edge nodes in two sites.

All nodes run on this machine (``ray.cluster_utils.Cluster``); placement is read back
from Ray's own view of where each actor runs.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pytest

from runtime import App, Column, EventSchema, Runtime, run
from runtime.cluster.placement import DefaultPolicy, Placement
from runtime.state.store import Store
from runtime.testing import MemorySource, SiteTally, Tally

SCHEMA = EventSchema(
    "readings",
    [
        Column("event_id", "int64"),
        Column("key", "string"),
        Column("site", "string"),
        Column("value", "float64"),
    ],
)
POLICY = DefaultPolicy(overrides={"site_tallies": Placement("edge")})  # at the edge of their site


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "labels": {"role": "core", "site": "core"}},
    )
    edges = {
        "eu-1": c.add_node(num_cpus=1, labels={"role": "edge", "site": "eu-1"}),
        "eu-2": c.add_node(num_cpus=1, labels={"role": "edge", "site": "eu-2"}),
    }
    c.wait_for_nodes()
    ray.init(address=c.address, namespace="edgecore")
    yield c, edges
    ray.shutdown()
    c.shutdown()


def readings(n: int, keys: int = 40) -> pa.Table:
    return pa.table(
        {
            "event_id": list(range(n)),
            "key": [f"k{i % keys}" for i in range(n)],
            "site": ["eu-1" if (i % keys) % 2 == 0 else "eu-2" for i in range(n)],
            "value": [1.0] * n,
        }
    )


def node_of(placement: list[dict], actor: str) -> dict:
    return next(p for p in placement if p["actor"] == actor)


def test_actors_run_where_the_policy_puts_them(cluster, tmp_path):
    c, _ = cluster
    with Runtime(data_dir=str(tmp_path), address=c.address, policy=POLICY, shards=1) as rt:
        rt.register(SiteTally, sites=["eu-1", "eu-2"])
        rt.register(Tally)
        rt.topic("alerts")
        placement = rt.placement()
    assert node_of(placement, "shard:site_tallies:eu-1:0")["site"] == "eu-1"
    assert node_of(placement, "shard:site_tallies:eu-2:0")["site"] == "eu-2"
    assert node_of(placement, "shard:site_tallies:eu-1:0")["role"] == "edge"
    assert node_of(placement, "shard:tallies:0")["role"] == "core"
    assert node_of(placement, "topic:alerts")["role"] == "core"
    assert all(p["node_id"] for p in placement)
    assert len({p["node_id"] for p in placement}) == 3


def test_edge_node_loss_mid_stream_keeps_counts_exact(cluster, tmp_path):
    c, edges = cluster
    events = readings(6_000)
    expected = dict(Counter(events.column("key").to_pylist()))
    app = App("readings", SCHEMA, SiteTally)
    removed = []

    def lose_eu2(stats):
        if stats.input >= 3_000 and not removed:
            c.remove_node(edges.pop("eu-2"))
            removed.append(stats.input)

    cfg = {"policy": POLICY, "shards": 1, "checkpoint_rows": 1_000}
    with Runtime(data_dir=str(tmp_path), address=c.address, **cfg) as rt:
        rt.register(SiteTally, sites=["eu-1", "eu-2"])
        stats = run(rt, app, MemorySource(events, batch_size=250), progress=lose_eu2)
        assert removed and stats.restarts >= 1
        # rows replayed after the restart are counted once
        assert stats.accepted == stats.input == 6_000
        # eu-2's shard moved to the core (no other eu-2 node); eu-1 stayed at its edge
        placement = rt.placement()
        assert node_of(placement, "shard:site_tallies:eu-2:0")["role"] == "core"
        assert node_of(placement, "shard:site_tallies:eu-1:0")["site"] == "eu-1"
        got = {r["key"]: r["n"] for r in Store(tmp_path).read("site_tallies").to_pylist()}
        assert got == expected

        # when the node returns, the running runtime moves eu-2's work back to it
        edges["eu-2"] = c.add_node(num_cpus=1, labels={"role": "edge", "site": "eu-2"})
        c.wait_for_nodes()
        rt.rebalance()
        assert node_of(rt.placement(), "shard:site_tallies:eu-2:0")["site"] == "eu-2"
        assert rt.entity_state("site_tallies", "k1")["n"] == expected["k1"]


def test_replay_attaches_with_address(cluster, tmp_path):
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from runtime.cli import app as cli

    c, _ = cluster
    events = readings(500, keys=4)
    pq.write_table(events, tmp_path / "r.parquet")
    result = CliRunner().invoke(
        cli,
        [
            "replay",
            str(tmp_path / "r.parquet"),
            "--app",
            "runtime.testing:tally_app",
            "--address",
            c.address,
            "--data",
            str(tmp_path / "d"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert '"accepted": 500' in result.stdout
    got = {r["key"]: r["n"] for r in Store(tmp_path / "d").read("tallies").to_pylist()}
    assert got == dict(Counter(events.column("key").to_pylist()))


def test_status_reports_nodes_placement_and_stages(cluster, tmp_path):
    import json

    from typer.testing import CliRunner

    from runtime.cli import app as cli

    c, _ = cluster
    app = App("readings", SCHEMA, SiteTally)
    with Runtime(data_dir=str(tmp_path), address=c.address, policy=POLICY, shards=1) as rt:
        rt.register(SiteTally, sites=["eu-1"])
        run(
            rt,
            app,
            MemorySource(
                readings(400, keys=2).filter(
                    pa.compute.equal(readings(400, keys=2)["site"], "eu-1")
                )
            ),
        )
        rt.publish_status(force=True)
        result = CliRunner().invoke(cli, ["status", "--address", c.address, "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert {(n["role"], n["site"]) for n in info["nodes"] if n["alive"]} >= {
        ("core", "core"),
        ("edge", "eu-1"),
    }
    shard = next(p for p in info["placement"] if p["actor"] == "shard:site_tallies:eu-1:0")
    assert shard["role"] == "edge" and shard["site"] == "eu-1" and shard["node_id"]
    assert set(shard) == {"actor", "kind", "role", "site", "node_id"}
    assert info["apps"]["readings"]["accepted"] == 200
    stage = next(s for s in info["stages"] if s["actor"] == "shard:site_tallies:eu-1:0")
    assert stage["rows"] == 200 and stage["queue_depth"] >= 0
    # the run's metrics ride along (what the console and `status --json` read)
    fam = next(f for f in info["metrics"]["families"] if f["name"] == "edgecore_events_total")
    assert {s["labels"]["outcome"]: s["value"] for s in fam["samples"]}["accepted"] == 200


def test_ingest_runs_at_each_sites_edge_and_survives_its_loss(cluster, tmp_path):
    """Each site's source is read, validated and applied at that site's edge; losing the
    edge mid-stream moves its ingest and shards to the core with exact counts."""
    from runtime.ingest.sites import run_sites

    c, edges = cluster
    if "eu-2" not in edges:
        edges["eu-2"] = c.add_node(num_cpus=1, labels={"role": "edge", "site": "eu-2"})
        c.wait_for_nodes()
    events = readings(8_000)
    by_site = {s: events.filter(pa.compute.equal(events["site"], s)) for s in ("eu-1", "eu-2")}
    sources = {s: MemorySource(t, batch_size=200, id=f"readings-{s}") for s, t in by_site.items()}
    app = App("readings", SCHEMA, SiteTally, sites=("eu-1", "eu-2"))
    seen_placement, removed = [], []

    def watch(stats):
        if not seen_placement:
            seen_placement.extend(rt.placement())
        if stats.input >= 4_000 and not removed:
            c.remove_node(edges.pop("eu-2"))
            removed.append(stats.input)

    with Runtime(
        data_dir=str(tmp_path), address=c.address, policy=POLICY, shards=1, checkpoint_rows=1_000
    ) as rt:
        stats = run_sites(rt, app, sources, step_rows=400, progress=watch)
    ingest = {p["actor"]: p for p in seen_placement if p["actor"].startswith("stage:ingest")}
    assert ingest["stage:ingest:readings:eu-1"]["site"] == "eu-1"
    assert ingest["stage:ingest:readings:eu-2"]["role"] == "edge"
    assert removed and stats.restarts >= 1
    assert stats.accepted == stats.input == 8_000
    got = {r["key"]: r["n"] for r in Store(tmp_path).read("site_tallies").to_pylist()}
    assert got == dict(Counter(events.column("key").to_pylist()))
    edges["eu-2"] = c.add_node(num_cpus=1, labels={"role": "edge", "site": "eu-2"})
    c.wait_for_nodes()


def test_backpressure_across_nodes(cluster, tmp_path):
    """The shard at an edge node (hosting its topic's partition), the slow sink at the core:
    the source is held back across the nodes."""
    from test_backpressure import assert_backpressure

    c, _ = cluster
    policy = DefaultPolicy(overrides={"echo_tallies": Placement("edge", "eu-1")})
    with Runtime(
        data_dir=str(tmp_path), address=c.address, policy=policy, shards=1, max_inflight=2
    ) as rt:
        assert_backpressure(rt, n_batches=60)
        where = {p["actor"]: p["site"] for p in rt.placement()}
    assert where["shard:echo_tallies:0"] == "eu-1" and where["sub:echo:slowsink"] == "core"
    assert "topic:echo" not in where  # the topic lives in its shards


def test_entity_of_a_site_partitioned_kind_is_read_live_at_its_site(cluster, tmp_path):
    """`edgecore entity devices ID --address` as users run it: the shards are per site
    (shard:devices:eu-1:0 ...), the key lives at one site; no stored profile is read."""
    import json
    import subprocess
    import sys

    from actors.devices.app import demo_source, device_app
    from runtime.dataflow.app import setup

    c, _ = cluster
    app = device_app(sites=("eu-1", "eu-2"))

    def edgecore(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "runtime.cli", "entity", "devices", *args]
            + ["--address", c.address, "--data", str(tmp_path / "nothing-stored")],
            capture_output=True,
            text=True,
            timeout=120,
        )

    with Runtime(data_dir=str(tmp_path), address=c.address, shards=2) as rt:
        setup(rt, app)
        run(rt, app, demo_source(600, None, 12, sites=app.sites))
        assert {p["actor"] for p in rt.placement()} >= {
            "shard:devices:eu-1:1",
            "shard:devices:eu-2:1",
        }
        for device in ("d-eu-1-00000", "d-eu-2-00001"):
            expected = rt.entity_state("devices", device)
            done = edgecore(device, "--json")
            assert done.returncode == 0, done.stderr
            live = json.loads(done.stdout)
            assert live["device_id"] == device and live["site"] == device[2:6]
            assert live["count"] == expected["count"] > 0
        done = edgecore("d-eu-1-00000")  # the table a user reads
        assert done.returncode == 0 and "d-eu-1-00000" in done.stdout, done.stderr
        done = edgecore("d-nowhere")
        assert done.returncode == 1 and done.stderr.strip().count("\n") == 0
        assert "'d-nowhere' is not known" in done.stderr and "eu-1, eu-2" in done.stderr
