"""The model registry: its table, the fraud model registered at checkpoints, and
`edgecore model` as users run it (promote / rollback, then a restart serves that model)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pyarrow as pa
import pytest

from actors.fraud import fraud_app
from actors.fraud.customer import Customer
from actors.fraud.generator import GeneratorSource, TxnGeneratorConfig
from actors.fraud.model import unpack_arrays
from runtime import Runtime, run
from runtime.cluster.handles import resolve
from runtime.coordinator.checkpoint import saved_snapshots
from runtime.ml.registry import SCHEMA, ModelRegistry, RegistryError
from runtime.state.store import Store

CARD = {"training_rows": 10, "metrics": {"ap": 0.5}, "parameters": {"eta0": 0.2}}


# -- the registry itself ------------------------------------------------------------------------
def test_register_is_idempotent_and_the_first_is_champion(tmp_path):
    reg = ModelRegistry(Store(tmp_path))
    assert reg.list() == [] and reg.champion("m") is None and reg.pinned("m") is None
    assert reg.register("m", 3, b"three", CARD)
    assert not reg.register("m", 3, b"other bytes", CARD)
    assert reg.register("m", 5, b"five", {**CARD, "parent": 3})
    assert reg.register("other", 1, b"x", CARD)
    rows = reg.list("m")
    assert [(r["version"], r["status"], r["parent"]) for r in rows] == [
        (3, "champion", None),
        (5, "challenger", 3),
    ]
    assert "blob" not in rows[0] and rows[0]["metrics"] == {"ap": 0.5}
    assert reg.champion("m") == (3, b"three")
    assert reg.kinds() == ["m", "other"]
    assert reg.show("m", 5)["parameters"] == {"eta0": 0.2}
    assert reg.pinned("m") is None  # registered, not chosen by an operator


def test_promote_and_rollback_go_back_one_champion_at_a_time(tmp_path):
    reg = ModelRegistry(Store(tmp_path))
    for v in (1, 2, 3):
        reg.register("m", v, f"v{v}".encode(), CARD)
    assert reg.promote("m", 2) == {"kind": "m", "champion": 2, "retired": 1}
    assert reg.promote("m", 3) == {"kind": "m", "champion": 3, "retired": 2}
    assert reg.pinned("m") == (3, b"v3")
    assert reg.rollback("m") == {"kind": "m", "champion": 2, "retired": 3}
    assert reg.rollback("m") == {"kind": "m", "champion": 1, "retired": 2}
    assert [r["status"] for r in reg.list("m")] == ["champion", "retired", "retired"]
    with pytest.raises(RegistryError, match="no earlier champion"):
        reg.rollback("m")
    assert reg.pinned("m") == (1, b"v1")
    reg.unpin("m")
    assert reg.pinned("m") is None and reg.champion("m") == (1, b"v1")


def test_unknown_versions_and_kinds_are_one_line_errors(tmp_path):
    reg = ModelRegistry(Store(tmp_path))
    with pytest.raises(RegistryError, match="no models table"):
        reg.show("m", 1)
    reg.register("m", 1, b"x", CARD)
    with pytest.raises(RegistryError, match=r"no model version 7 \(versions 1..1\)"):
        reg.promote("m", 7)
    with pytest.raises(RegistryError, match="kinds with models: m"):
        reg.show("nope' OR 1=1 --", 1)  # compared in Arrow, never put into SQL


# -- the fraud model, registered at checkpoints ---------------------------------------------------
SOURCE = GeneratorSource(TxnGeneratorConfig(n_customers=300), n_events=12_000, batch_size=1_000)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One local fraud run with a checkpoint every 2,000 events; tests copy its folder."""
    d = tmp_path_factory.mktemp("models") / "data"
    with Runtime(data_dir=str(d), mode="local", shards=2, checkpoint_rows=2_000) as rt:
        run(rt, fraud_app, SOURCE)
    return d


@pytest.fixture
def data(trained, tmp_path):
    shutil.copytree(trained, tmp_path / "data")
    return tmp_path / "data"


def started_version(data: Path) -> int:
    """The model version the customers' shards hold after a (re)start on ``data``."""
    with Runtime(data_dir=str(data), mode="local", shards=2) as rt:
        rt.register(Customer)
        blobs = resolve([s.snapshot_kind() for s in rt.shards_of("customers")])
    versions = {json.loads(bytes(unpack_arrays(b)["meta"]).decode())["version"] for b in blobs}
    assert len(versions) == 1
    return versions.pop()


def snapshot_version(data: Path) -> int:
    """The model version of the last customers snapshot written to ``data``."""
    blob = saved_snapshots(Store(data))["customers"]
    return json.loads(bytes(unpack_arrays(blob)["meta"]).decode())["version"]


def test_checkpoints_register_each_model_version(trained):
    reg = ModelRegistry(Store(trained))
    models = reg.list()
    versions = [m["version"] for m in models]
    assert len(versions) >= 3 and versions == sorted(set(versions))
    assert [m["status"] for m in models] == ["champion"] + ["challenger"] * (len(models) - 1)
    assert all(m["kind"] == "customers" and m["training_rows"] > 0 for m in models)
    assert models[-1]["parameters"]["eta0"] == 0.2 and models[-1]["metrics"]["fitted"]
    assert [m["parent"] for m in models[1:]] == versions[:-1]
    # the latest registered version is the one the last checkpoint committed
    assert started_version(trained) == versions[-1]


# -- `edgecore model` as users run it -----------------------------------------------------------
def edgecore(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", "model", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def ok_json(*args: str) -> dict:
    done = edgecore(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_cli_promote_rollback_then_a_restart_serves_that_model(data):
    listed = ok_json("list", "--data", str(data))
    versions = [m["version"] for m in listed["models"]]
    assert listed["kind"] == "customers" and len(versions) >= 3
    first, latest = versions[0], versions[-1]
    assert ok_json("show", str(latest), "--data", str(data))["status"] == "challenger"

    assert ok_json("promote", str(latest), "--data", str(data)) == {
        "kind": "customers",
        "champion": latest,
        "retired": first,
    }
    assert ok_json("rollback", "--data", str(data), "--kind", "customers")["champion"] == first
    table = edgecore("list", "--data", str(data))  # the table view
    assert table.returncode == 0 and "champion (pinned)" in table.stdout

    assert started_version(data) == first  # the restart serves the rolled-back champion
    # its close committed a model grown from the champion: the pin is released, later
    # starts go on from the last checkpoint; the champion stays what the operator chose
    reg = ModelRegistry(Store(data))
    assert reg.pinned("customers") is None and reg.champion("customers")[0] == first
    checkpointed = snapshot_version(data)
    assert started_version(data) == checkpointed


def test_cli_errors_are_one_line(data, tmp_path):
    for args, words in [
        (("show", "99999", "--data", str(data)), "no model version 99999"),
        (("promote", "99999", "--data", str(data)), "no model version 99999"),
        (("rollback", "--data", str(data)), "no earlier champion"),
        (("list", "--data", str(data), "--kind", "orders"), "kinds with models: customers"),
        (("list", "--data", str(tmp_path / "none")), "no data folder"),
    ]:
        done = edgecore(*args)
        assert done.returncode == 1 and words in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and not done.stdout
    Store(tmp_path / "empty").upsert("t", pa.table({"a": [1]}), key="a")
    done = edgecore("list", "--data", str(tmp_path / "empty"))
    assert done.returncode == 1 and "no models table" in done.stderr
    reg = ModelRegistry(Store(data))
    reg.register("scores", 1, b"x", CARD)
    done = edgecore("list", "--data", str(data))
    assert done.returncode == 1 and "customers, scores" in done.stderr and "--kind" in done.stderr


def test_a_hostile_models_row_is_never_run(data, tmp_path):
    """A row written by hand: a pickle that would touch a file, a zip that is no model, text
    that is not JSON. Listed and promoted fine; at the restart skipped with a warning (the
    kind starts from its checkpoint), never unpickled."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    garbage = {997: pickle.dumps(Evil()), 998: b"PK\x03\x04 not a zip", 999: b"\x00" * 64}
    rows = [
        {
            "kind": "customers",
            "version": v,
            "created_at": 0,
            "parent": None,
            "training_rows": -1,
            "metrics": "{not json",
            "parameters": "",
            "status": "challenger",
            "promoted_at": None,
            "pinned": False,
            "blob": blob,
        }
        for v, blob in garbage.items()
    ]
    Store(data).upsert("models", pa.Table.from_pylist(rows, schema=SCHEMA), key=("kind", "version"))
    assert ok_json("show", "999", "--data", str(data))["metrics"] == "{not json"
    for v in garbage:
        checkpointed = snapshot_version(data)
        assert ok_json("promote", str(v), "--data", str(data))["champion"] == v
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert started_version(data) == checkpointed
        assert any(f"version {v} is not a readable model" in str(w.message) for w in caught)
    assert not marker.exists()


def test_every_checkpoint_adds_the_serving_models_live_metrics(trained):
    """The model_metrics table: a row per checkpoint, as `edgecore model metrics` shows it."""
    history = ModelRegistry(Store(trained)).history("customers")
    commits = Store(trained).last_checkpoint().epoch  # one row per commit, at most
    assert 3 <= len(history) <= commits + 1, (len(history), commits)
    assert [r["at"] for r in history] == sorted(r["at"] for r in history)
    versions = [r["version"] for r in history]
    assert versions == sorted(versions)
    last = history[-1]
    assert last["auc"] is not None and 0.5 < last["auc"] <= 1.0
    assert last["metrics"]["threshold"] == last["threshold"]
    assert last["metrics"]["alerts_per_10k"] > 0
    got = ok_json("metrics", "--data", str(trained), "--last", "2")
    assert [r["version"] for r in got["metrics"]] == versions[-2:]
    table = edgecore("metrics", "--data", str(trained))
    assert table.returncode == 0 and "precision" in table.stdout
    bad = edgecore("metrics", "--data", str(trained), "--last", "-1")
    assert bad.returncode == 1 and "--last" in bad.stderr and "Traceback" not in bad.stderr


def test_status_shows_the_serving_models_version_and_metrics(tmp_path):
    with Runtime(data_dir=str(tmp_path), mode="local", shards=2, checkpoint_rows=4_000) as rt:
        run(rt, fraud_app, SOURCE)
        models = rt.status()["models"]
    card = models["customers"]
    assert card["version"] >= 1 and card["training_rows"] > 0
    assert {"auc", "precision", "recall", "threshold", "label_delay_s"} <= set(card["metrics"])


def test_the_registry_tables_keep_few_versions_on_a_long_run(tmp_path):
    """A version of ``models`` and ``model_metrics`` per checkpoint must not pile up: the
    registry's tables are compacted with the others (a soak found them growing)."""
    source = GeneratorSource(TxnGeneratorConfig(n_customers=300), n_events=16_000, batch_size=500)
    with Runtime(
        data_dir=str(tmp_path), mode="local", shards=1, checkpoint_rows=1_000, compact_every=2
    ) as rt:
        run(rt, fraud_app, source)
    store = Store(tmp_path)
    assert store.last_checkpoint().epoch >= 12
    assert store.table("model_metrics").count_rows() >= 12  # a row each: history is kept
    for name in ("models", "model_metrics"):
        assert store.n_versions(name) <= 6, (name, store.n_versions(name))
