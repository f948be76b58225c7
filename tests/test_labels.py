"""Labels that come late: on their own stream (a file beside the events, ``rt.feedback``,
``POST /v1/labels``) or held back by ``replay --label-delay``; learned once, when known."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import kill_after_a_checkpoint, make_transactions
from live_helpers import Serve, ndjson, post

from actors.fraud import fraud_app
from actors.fraud.customer import FraudConfig
from actors.fraud.scoring import Scorer
from runtime import Runtime, run
from runtime.coordinator.checkpoint import saved_snapshots
from runtime.errors import ConfigError
from runtime.state.store import Store
from runtime.testing import Tally

N = 40_000
HOUR_MS = 3_600_000


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Labelled events, the same events without labels, and their labels apart (known
    two hours after each event)."""
    d = tmp_path_factory.mktemp("labels")
    labelled = make_transactions(d / "labelled.parquet", N, 2_000, seed=13)
    t = pq.read_table(labelled)
    pq.write_table(t.drop(["is_fraud"]), d / "events.parquet")
    ts = t["ts"].cast(pa.int64())
    labels = pa.table(
        {
            "event_id": t["event_id"],
            "customer_id": t["customer_id"],
            "is_fraud": t["is_fraud"],
            "label_ts": pc.add(ts, 2 * HOUR_MS).cast(pa.timestamp("ms")),
        }
    )
    pq.write_table(labels, d / "labels.parquet")
    return {"labelled": labelled, "events": d / "events.parquet", "labels": d / "labels.parquet"}


def replay(*args: str, timeout: float = 300) -> dict:
    got = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "replay", *args, "--json", "--shards", "2"]
        + ([] if "--batch-size" in args else ["--batch-size", "2000"]),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert got.returncode == 0, got.stderr[-3000:]
    return json.loads(got.stdout)


def trained_rows(data: Path) -> int:
    """Labelled rows the committed model learned from."""
    blob = saved_snapshots(Store(data))["customers"]
    return Scorer.card(blob, FraudConfig())["training_rows"]


def test_label_delay_learns_each_label_only_once_it_is_due(files, tmp_path):
    now = replay(str(files["labelled"]), "--data", str(tmp_path / "now"))
    late = replay(str(files["labelled"]), "--data", str(tmp_path / "late"), "--label-delay", "6h")
    never = replay(
        str(files["labelled"]), "--data", str(tmp_path / "never"), "--label-delay", "1000d"
    )
    assert now["labelled"] == N and "labels" not in now
    # the last six hours' labels (of each shard's event time) were not due at the end
    ts = pq.read_table(files["labelled"])["ts"].cast(pa.int64()).to_numpy()
    last_6h = int((ts > ts.max() - 6 * HOUR_MS).sum())
    assert last_6h <= late["labels"]["held_back"] <= last_6h * 1.05
    assert late["labelled"] + late["labels"]["held_back"] == N
    assert late["label_delay_s"] == 6 * 3600
    # nothing known, nothing learned: the model never scored, no precision to report
    assert never["labels"]["held_back"] == N and "labelled" not in never
    assert trained_rows(tmp_path / "never") == 0
    assert trained_rows(tmp_path / "late") < trained_rows(tmp_path / "now")


def test_labels_file_beside_the_events_learns_what_labels_on_the_events_do(files, tmp_path):
    inline = replay(str(files["labelled"]), "--data", str(tmp_path / "inline"))
    apart = replay(
        str(files["events"]), "--labels", str(files["labels"]), "--data", str(tmp_path / "apart")
    )
    assert apart["labels"]["received"] == N and apart["labelled"] == inline["labelled"] == N
    assert apart["label_delay_s"] == 2 * 3600
    # the same labels, sampled alike: the same rows learned (in another order)
    assert trained_rows(tmp_path / "apart") == trained_rows(tmp_path / "inline")
    assert abs(apart["alerts"] - inline["alerts"]) <= 0.1 * inline["alerts"]


def test_hostile_labels_are_dead_letters_or_counted_never_a_crash(ray_session, files, tmp_path):
    events = pq.read_table(files["events"]).slice(0, 5_000)
    good = pq.read_table(files["labels"]).slice(0, 5_000).to_pylist()
    with Runtime(data_dir=str(tmp_path), mode="ray", shards=2) as rt:
        run(rt, fraud_app, _memory(events))
        bad = [
            {"event_id": "seven", "customer_id": "c1", "is_fraud": True},  # not an id
            {"event_id": 3, "is_fraud": False},  # no key to route it by
            {"event_id": -4, "customer_id": "c1", "is_fraud": True},  # below the id's minimum
            {"event_id": 5, "customer_id": "c" * 500, "is_fraud": True},  # key too long
            {"event_id": 6, "customer_id": "c1", "is_fraud": "maybe"},
            {"event_id": 7, "customer_id": {"nested": [1]}, "is_fraud": True},
        ]
        got = rt.feedback("customers", bad + good[:100] + good[:10])
        assert got["feedback_dead_lettered"] == len(bad)
        assert got["feedback_accepted"] == 110 and got["labelled"] == 100
        assert got["labels_duplicate"] == 10
        stray = rt.feedback(
            "customers", [{"event_id": 10**12, "customer_id": "c9", "is_fraud": True}]
        )
        assert stray["labels_waiting_for_event"] == 1  # kept until its event comes
        rt.register(Tally)
        with pytest.raises(ConfigError, match="takes no feedback input"):
            rt.feedback(Tally.name, [{"event_id": 1, "key": "a"}])
        rt.checkpoint()
    dead = Store(tmp_path).read("dead_letters").to_pylist()
    assert len(dead) == len(bad) and all(r["reason"] for r in dead)


def _memory(table: pa.Table):
    from runtime.testing import MemorySource

    return MemorySource(table.to_pylist(), batch_size=2_500)


def test_killed_replay_with_labels_apart_learns_each_label_exactly_once(files, tmp_path):
    """SIGKILL the runtime mid-stream while labels wait in the feature log; replay again:
    the model learned from the same labels as a run never killed."""
    clean = tmp_path / "clean"
    replay(str(files["events"]), "--labels", str(files["labels"]), "--data", str(clean))
    data = tmp_path / "killed"
    cmd = [sys.executable, "-m", "runtime.cli", "replay", str(files["events"])]
    cmd += ["--labels", str(files["labels"]), "--data", str(data), "--shards", "2"]
    cmd += ["--batch-size", "2000", "--checkpoint-every", "6000", "--rate", "8000", "--json"]
    kill_after_a_checkpoint(cmd, data, settle_s=1.0)
    positions = Store(data).last_checkpoint().positions
    events_at = next(v for k, v in positions.items() if k.startswith("file:events.parquet"))
    labels_at = next(v for k, v in positions.items() if k.startswith("feedback:file:labels"))
    assert 0 < events_at < N and 0 < labels_at < N, positions
    again = replay(str(files["events"]), "--labels", str(files["labels"]), "--data", str(data))
    assert again["resumed_from"] > 0
    assert trained_rows(data) == trained_rows(clean)


def test_serve_takes_labels_over_http_and_a_kill_9_after_the_200_loses_none(files, tmp_path):
    table = pq.read_table(files["events"]).slice(0, 3_000)
    events = table.to_pylist()
    for r in events:
        r["ts"] = r["ts"].isoformat()
    labels = pq.read_table(files["labels"]).slice(0, 3_000).drop(["label_ts"]).to_pylist()

    def post_all(port: int, upto: int) -> None:
        for i in range(0, upto, 500):
            assert post(port, ndjson(events[i : i + 500]))[1]["accepted"] == 500
            got = post(port, ndjson(labels[i : i + 500]), path="/v1/labels")[1]
            assert got == {"input": 500, "accepted": 500, "dead_lettered": 0}

    clean = tmp_path / "clean"
    s = Serve(clean)
    try:
        post_all(s.wait_http(), 3_000)
        s.signal(signal.SIGTERM)
        assert s.wait(60) == 0, s.stderr[-3000:]
    finally:
        s.stop()

    data = tmp_path / "killed"
    first = Serve(data, "--checkpoint-seconds", "3600")
    try:
        port = first.wait_http()
        post_all(port, 3_000)
        # hostile: a line that is not JSON, a body that lies about its type, a row with no key
        status, got = post(port, b"{not json", path="/v1/labels")
        assert status == 200 and got["dead_lettered"] == 1  # a bad record, not a bad request
        assert post(port, b"\xff\xfe", ctype="text/csv", path="/v1/labels")[0] == 415
        status, got = post(port, ndjson([{"event_id": 1, "is_fraud": True}]), path="/v1/labels")
        assert status == 200 and got["dead_lettered"] == 1 and got["reasons"]
    finally:
        first.kill_everything()  # the labels were acknowledged: they are in the log
    second = Serve(data, "--json")
    try:
        second.wait_http()
        assert "replayed" in second.stderr
        second.signal(signal.SIGTERM)
        assert second.wait(60) == 0, second.stderr[-3000:]
        out = json.loads(second.proc.stdout.read().decode())
    finally:
        second.stop()
    assert out["labels"]["received"] == 3_000 and out["labels"]["dead_lettered"] == 2
    assert trained_rows(data) == trained_rows(clean) > 0


def test_an_app_without_labels_refuses_them(tmp_path):
    from runtime.dataflow.app import App
    from runtime.streams.schema import Column, EventSchema

    app = App("t", EventSchema("e", [Column("event_id", "int64"), Column("key", "string")]), Tally)
    assert app.kind.feedback is None and app.with_label_delay is None
    got = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "replay", "x.parquet", "--app", "devices"]
        + ["--label-delay", "1h", "--data", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert got.returncode == 1 and "learns from no labels" in got.stderr
    assert "Traceback" not in got.stderr
