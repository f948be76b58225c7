"""The fraud app end to end on a real local Ray and real LanceDB: profiles, recovery, bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import (
    assert_profiles_match,
    kill_after_a_checkpoint,
    make_transactions,
    sql_profiles,
)

from actors.fraud import fraud_app
from runtime import EntityKind, FileSource, Runtime, run
from runtime.cluster.handles import resolve
from runtime.cluster.status import attached_status, read_board
from runtime.dataflow.app import setup
from runtime.errors import SnapshotError
from runtime.state.store import Store


@pytest.fixture(scope="module")
def txns(tmp_path_factory) -> Path:
    return make_transactions(tmp_path_factory.mktemp("tx") / "tx.parquet", 60_000, 3_000)


@pytest.mark.parametrize("mode", ["local", "ray"])
def test_replay_profiles_equal_sql(ray_session, txns, tmp_path, mode):
    with Runtime(data_dir=str(tmp_path), mode=mode, shards=2) as rt:
        stats = run(rt, fraud_app, FileSource(txns, batch_size=7_000))
    assert stats.input == stats.accepted == 60_000
    assert stats.dead_lettered == stats.duplicates == 0
    assert_profiles_match(tmp_path, sql_profiles(txns))
    alerts = Store(tmp_path).read("alerts")
    assert alerts.num_rows == stats.app["alerts"] > 0
    assert len(set(alerts.column("event_id").to_pylist())) == alerts.num_rows


def test_profiles_do_not_depend_on_batching(ray_session, txns, tmp_path):
    """Point-in-time features in arrival order: the same alerts whatever the batch size."""
    from actors.fraud.app import make_app
    from actors.fraud.customer import FraudConfig

    app = make_app(FraudConfig(learn=False))  # the model learns per batch; rules alone are exact
    alert_sets = []
    for bs in (1_000, 25_000):
        d = tmp_path / str(bs)
        with Runtime(data_dir=str(d), mode="ray", shards=2) as rt:
            run(rt, app, FileSource(txns, batch_size=bs))
        alert_sets.append(set(Store(d).read("alerts").column("event_id").to_pylist()))
    assert alert_sets[0] == alert_sets[1]


def test_second_file_continues_profiles(ray_session, tmp_path):
    events = pq.read_table(make_transactions(tmp_path / "all.parquet", 20_000, 1_000))
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pq.write_table(events.slice(0, 12_000), first)
    pq.write_table(events.slice(12_000), second)
    data = tmp_path / "data"
    for f in (first, second):
        with Runtime(data_dir=str(data), mode="ray", shards=2) as rt:
            run(rt, fraud_app, FileSource(f))
    assert_profiles_match(data, sql_profiles(events))


def test_killed_replay_resumes_exactly(ray_session, txns, tmp_path):
    """SIGKILL the whole runtime after a checkpoint, replay again: same profiles as a clean run."""
    data = tmp_path / "data"
    cmd = [
        sys.executable,
        "-m",
        "runtime.cli",
        "replay",
        str(txns),
        "--data",
        str(data),
        "--batch-size",
        "2000",
        "--checkpoint-every",
        "10000",
        "--rate",
        "15000",
        "--json",
    ]
    # paced so that the kill lands in the middle of the stream
    kill_after_a_checkpoint(cmd, data)
    cp = Store(data).last_checkpoint()
    done = next(iter(cp.positions.values()))
    assert 0 < done < 60_000, "the kill should land in the middle of the stream"

    with Runtime(data_dir=str(data), mode="ray", shards=2) as rt:
        stats = run(rt, fraud_app, FileSource(txns, batch_size=5_000))
    assert stats.resumed_from == done
    assert stats.input == 60_000 - done
    assert_profiles_match(data, sql_profiles(txns))


def test_bad_rows_and_duplicates_reconcile(ray_session, tmp_path):
    good_table = pq.read_table(make_transactions(tmp_path / "g.parquet", 3_000, 200))
    good = good_table.to_pylist()
    for r in good:
        r["ts"] = r["ts"].isoformat()
    bad = [
        {**good[0], "event_id": 10_000_001, "amount": "twelve"},
        {**good[1], "event_id": 10_000_002, "amount": float("nan")},
        {**good[2], "event_id": 10_000_003, "amount": -5.0},
        {**good[3], "event_id": 10_000_004, "amount": 1e12},
        {**good[4], "event_id": 10_000_005, "ts": "yesterday-ish"},
        {**good[5], "event_id": 10_000_006, "customer_id": None},
        {**good[6], "event_id": 10_000_007, "customer_id": "x" * 10_000},
        {**good[7], "event_id": "seven"},
        {**good[8], "event_id": 10_000_009, "lat": 123.0},
    ]
    dups = [dict(r) for r in good[:40]]
    lines = [json.dumps(r) for r in good + bad + dups]  # NaN is written as a bare NaN token
    lines.insert(100, "{not json at all")
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")

    with Runtime(data_dir=str(tmp_path / "d"), mode="ray", shards=2) as rt:
        stats = run(rt, fraud_app, FileSource(path, batch_size=1_000))
    assert stats.input == len(lines)
    assert stats.duplicates == 40
    assert stats.dead_lettered == len(bad) + 1
    assert stats.accepted + stats.dead_lettered + stats.duplicates == stats.input
    dead = Store(tmp_path / "d").read("dead_letters")
    reasons = " | ".join(dead.column("reason").to_pylist())
    for word in ("amount", "ts", "customer_id", "event_id", "lat", "exceeds", "maximum", "minimum"):
        assert word in reasons, word
    assert all(len(r) <= 4096 for r in dead.column("raw").to_pylist())
    assert_profiles_match(tmp_path / "d", sql_profiles(good_table))


def test_passivation_keeps_profiles_exact(ray_session, txns, tmp_path):
    """More customers than the memory budget allows: LRU entities go to LanceDB and come back."""
    with Runtime(
        data_dir=str(tmp_path), mode="ray", shards=2, max_active=300, checkpoint_rows=20_000
    ) as rt:
        stats = run(rt, fraud_app, FileSource(txns, batch_size=4_000))
        shard_stats = rt.shard_stats()["customers"]
    assert sum(s["passivated"] for s in shard_stats) > 1_000
    assert sum(s["loaded"] for s in shard_stats) > 100
    assert all(s["active"] <= 300 + 4_000 for s in shard_stats)
    assert stats.accepted == 60_000
    assert stats.counters["rows"] == 60_000  # every shard result is counted across checkpoints
    assert_profiles_match(tmp_path, sql_profiles(txns))


def test_model_replicas_are_synced_between_checkpoints(txns, tmp_path):
    """Shards learn from their own labels; every sync_rows the replicas are averaged."""
    from actors.fraud.model import OnlineModel, unpack_arrays

    with Runtime(
        data_dir=str(tmp_path), mode="local", shards=2, sync_rows=10_000, checkpoint_rows=10**9
    ) as rt:
        run(rt, fraud_app, FileSource(txns, batch_size=5_000))
        rt.deployment.sync_kinds()
        shards = rt.shards_of("customers")
        blobs = resolve([s.snapshot_kind() for s in shards])
        models = [OnlineModel.from_arrays(unpack_arrays(b)) for b in blobs]
    assert models[0].fitted and models[0].version >= 5
    np.testing.assert_array_equal(models[0].clf.coef_, models[1].clf.coef_)
    assert models[0].learned_total > 0


class _Refusing(EntityKind):
    """A kind whose shards refuse their saved state at start (in the shard, not the
    driver), as a kind does on a snapshot it cannot read."""

    name = "refusing"
    key = "customer_id"
    state = {"n": "int64"}
    topics = ("alerts",)

    def on_start(self, store):
        raise SnapshotError("saved state refused: written by another version")

    def apply(self, batch):
        pass


@pytest.mark.parametrize("sinks", [True, False], ids=["sinks", "no-sinks"])
@pytest.mark.parametrize("mode", ["local", "ray"])
def test_a_kind_failing_at_start_is_refused_by_setup_and_never_checkpointed(
    ray_session, tmp_path, mode, sinks
):
    """Shards that fail at start (in the shard: a saved state refused) stop setup with
    their own error, and the kind is as if never registered: the checkpoint of a runtime
    closed normally after the error saves nothing of it, nor of its sinks."""
    import dataclasses

    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    app = dataclasses.replace(fraud_app, name="refusing", kind=_Refusing, kind_config=None)
    if not sinks:
        app = dataclasses.replace(app, sinks={})
    with Runtime(data_dir=str(tmp_path), mode=mode, shards=2) as rt:
        with pytest.raises(SnapshotError, match="shard 0: saved state refused"):
            setup(rt, app)
        assert not rt.has_kind("refusing")
        assert not rt.has_subscriber("alerts->alerts")
    store = Store(tmp_path)
    assert not store.exists("refusing")
    commits = store.read("_checkpoints").to_pylist() if store.exists("_checkpoints") else []
    assert not any("refusing" in str(r) for r in commits), commits


def test_sinks_and_board_share_one_host_that_imports_lancedb_as_it_starts(ray_session, tmp_path):
    """The table sinks and the status board are idle most of the time: under Ray they
    share one process (runtime.cluster.host) instead of one worker process each (~230 MB
    RSS and a second of start-up CPU apiece). That process imports LanceDB as the first
    sink starts, in the background: imported at the first flush, inside the run, it cost
    a replay's alerts sink 1.4 s of CPU beside the shards."""
    import time

    import psutil

    def titled(title: str) -> list[psutil.Process]:
        out = []
        for p in psutil.process_iter(["cmdline"]):
            cmd = p.info["cmdline"] or []
            if cmd and cmd[0].startswith(title):
                out.append(p)
        return out

    def has_lancedb(p: psutil.Process) -> bool:
        try:
            return "_lancedb" in Path(f"/proc/{p.pid}/maps").read_text()
        except OSError:
            return False

    with Runtime(data_dir=str(tmp_path), mode="ray", shards=1) as rt:
        setup(rt, fraud_app)
        where = {p["actor"]: (p["kind"], p["node_id"]) for p in rt.placement()}
        hosted = [f"sub:{t}->{table}" for t, (table, _) in fraud_app.sinks.items()]
        hosted.append("runtime:status")
        assert all(where[n][1] == where["host:core"][1] != "" for n in hosted), where
        hosts = titled("ray::Host")
        assert len(hosts) == 1 and not titled("ray::TableSink") and not titled("ray::Status")
        # what `edgecore status` lists from another process: the sinks, where their host runs
        status = attached_status()
        listed = {p["actor"]: p["node_id"] for p in status["placement"]}
        assert {n: listed.get(n) for n in hosted} == {n: where[n][1] for n in hosted}, listed
        rt.publish_status(force=True)
        assert read_board()["data"] == rt.status()["data"]  # the board, through its host
        deadline = time.monotonic() + 60
        while not has_lancedb(hosts[0]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert has_lancedb(hosts[0])
        assert not any(Store(tmp_path).exists(t) for t in ("alerts", "drift"))  # no row yet
