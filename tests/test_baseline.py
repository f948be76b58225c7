"""The single-process baseline (scripts/baseline_fraud.py) against the runtime, rules only.

With ``FraudConfig(learn=False)`` no model is involved, so the runtime (sharded, in
local mode) and the baseline must agree exactly: the same profiles and the same alerts,
whatever the runtime's batch boundaries.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import runtime
from actors.fraud.app import make_app
from actors.fraud.customer import FraudConfig
from actors.fraud.generator import TRANSACTION_SCHEMA, TxnGenerator, TxnGeneratorConfig
from runtime.state.store import Store

_PATH = Path(__file__).resolve().parents[1] / "scripts" / "baseline_fraud.py"
_spec = importlib.util.spec_from_file_location("baseline_fraud", _PATH)
baseline_fraud = importlib.util.module_from_spec(_spec)
sys.modules["baseline_fraud"] = baseline_fraud
_spec.loader.exec_module(baseline_fraud)
run_baseline = baseline_fraud.run_baseline

N_EVENTS = 30_000
RULES = FraudConfig(learn=False)
# every rule alone reaches this threshold, so each rule's hits show in the alert set
LOW = FraudConfig(learn=False, threshold=0.4)
EXACT = ["txn_count", "amount_max", "first_ts", "last_ts", "device_count", "alert_count"]


@pytest.fixture(scope="module")
def events() -> pa.Table:
    cfg = TxnGeneratorConfig(n_customers=2_000, n_merchants=200, fraud_rate=0.01, seed=5)
    table = pa.Table.from_batches(list(TxnGenerator(cfg).batches(N_EVENTS, 10_000)))
    # a few rows the app must refuse, and a few redelivered events
    bad = table.slice(100, 3).to_pylist()
    bad[0]["amount"] = -1.0
    bad[1]["customer_id"] = ""
    bad[2]["lat"] = 123.0
    for i, row in enumerate(bad):
        row["event_id"] = 10_000_000 + i
    redelivered = table.slice(20_000, 5)
    return pa.concat_tables(
        [
            table.slice(0, 25_000),
            pa.Table.from_pylist(bad, TRANSACTION_SCHEMA),
            redelivered,
            table.slice(25_000),
        ]
    )


def _batches(table: pa.Table, size: int):
    return lambda: (table.slice(i, size) for i in range(0, table.num_rows, size))


def _runtime(tmp: Path, events: pa.Table, config: FraudConfig, batch_size: int):
    with runtime.Runtime(data_dir=str(tmp), mode="local", shards=2) as rt:
        stats = runtime.run(
            rt, make_app(config), runtime.IteratorSource("mem", _batches(events, batch_size))
        )
    store = Store(tmp)
    alerts = np.zeros(0, np.int64)
    if store.exists("alerts"):  # made by the first alert
        alerts = np.sort(store.read("alerts").column("event_id").to_numpy())
    return stats, store.read("customers").sort_by("customer_id"), alerts


def _check(base: dict, stats, profiles: pa.Table, alerts: np.ndarray) -> None:
    assert (stats.input, stats.accepted) == (base["events"], base["accepted"])
    assert (stats.dead_lettered, stats.duplicates) == (base["dead_lettered"], base["duplicates"])
    mine = base["profiles"].sort_by("customer_id")
    assert mine.column("customer_id").equals(profiles.column("customer_id"))
    for name in EXACT:
        assert mine.column(name).equals(profiles.column(name).cast(mine.schema.field(name).type)), (
            name
        )
    np.testing.assert_allclose(
        mine.column("amount_sum").to_numpy(), profiles.column("amount_sum").to_numpy(), rtol=1e-9
    )
    np.testing.assert_array_equal(base["alert_ids"], alerts)
    assert stats.app["alerts"] == base["alerts"] == len(alerts)


@pytest.mark.parametrize("batch_size", [3_000, 16_384])
def test_runtime_matches_baseline(tmp_path: Path, events: pa.Table, batch_size: int) -> None:
    base = run_baseline(_batches(events, 7_000)(), config=RULES)
    assert base["alerts"] > 20 and base["dead_lettered"] == 3 and base["duplicates"] == 5
    _check(base, *_runtime(tmp_path, events, RULES, batch_size))


def test_every_rule_alone(tmp_path: Path, events: pa.Table) -> None:
    base = run_baseline(iter([events]), config=LOW)
    assert base["alerts"] > run_baseline(iter([events]), config=RULES)["alerts"]
    _check(base, *_runtime(tmp_path, events, LOW, 5_000))


def test_baseline_reads_parquet_and_ignores_batch_size(tmp_path: Path, events: pa.Table) -> None:
    import pyarrow.parquet as pq

    path = tmp_path / "tx.parquet"
    pq.write_table(events, path)
    a = run_baseline(path, batch_size=4_000, config=RULES)
    b = run_baseline(iter([events]), config=RULES)
    np.testing.assert_array_equal(a["alert_ids"], b["alert_ids"])
    pa_, pb = a["profiles"].sort_by("customer_id"), b["profiles"].sort_by("customer_id")
    assert pa_.select(["customer_id", *EXACT]).equals(pb.select(["customer_id", *EXACT]))
    np.testing.assert_allclose(pa_["amount_sum"].to_numpy(), pb["amount_sum"].to_numpy(), rtol=1e-9)
    assert a["events_per_s"] > 0 and a["seconds"] > 0


def _ring_overflow_stream() -> pa.Table:
    """One customer meets 10 devices in one batch, then comes back to the first one.

    The ring remembers 8 new devices: by the 11th event ``d0`` was pushed out, so it is
    new again (device_count 11). Event by event that is what happens; inside one batch
    ``Customer.apply`` checks the ring as it stood at the start of the batch.
    """
    n = 11
    devices = [f"d{i}" for i in range(10)] + ["d0"]
    return pa.table(
        {
            "event_id": pa.array(range(n), pa.int64()),
            "ts": pa.array(np.arange(n, dtype=np.int64) * 3_600_000, pa.int64()).cast(
                pa.timestamp("ms")
            ),
            "customer_id": ["c1"] * n,
            "device_id": devices,
            "merchant_id": ["m1"] * n,
            "category": ["grocery"] * n,
            "amount": [10.0] * n,
            "lat": [50.0] * n,
            "lon": [8.0] * n,
            "is_fraud": [False] * n,
        },
        schema=TRANSACTION_SCHEMA,
    )


def test_baseline_device_ring_is_per_event() -> None:
    events = _ring_overflow_stream()
    for size in (1, 4, 11):
        base = run_baseline(_batches(events, size)(), config=RULES)
        assert base["profiles"].column("device_count").to_pylist() == [11]


def test_runtime_device_ring_ignores_batch_boundaries(tmp_path: Path) -> None:
    events = _ring_overflow_stream()
    counts = []
    for size in (1, 11):
        _, profiles, _ = _runtime(tmp_path / str(size), events, RULES, size)
        counts.append(pc.sum(profiles.column("device_count")).as_py())
    assert counts == [11, 11]


def test_one_shard_learns_the_same_model(tmp_path: Path, events: pa.Table) -> None:
    """With one shard and the same batches the runtime trains the baseline's model exactly."""
    learn = FraudConfig(learn=True)
    base = run_baseline(_batches(events, 5_000)(), config=learn)
    with runtime.Runtime(data_dir=str(tmp_path), mode="local", shards=1) as rt:
        stats = runtime.run(
            rt, make_app(learn), runtime.IteratorSource("m", _batches(events, 5_000))
        )
    alerts = np.sort(Store(tmp_path).read("alerts").column("event_id").to_numpy())
    assert stats.counters["model_scored"] > 0  # the model decides, once it has learned
    np.testing.assert_array_equal(base["alert_ids"], alerts)


def test_model_score_is_predict_proba():
    """The direct sigmoid in OnlineModel.score is scikit-learn's predict_proba, to rounding."""
    from actors.fraud.model import N_FEATURES, OnlineModel

    rng = np.random.default_rng(4)
    m = OnlineModel()
    X = rng.normal(size=(5_000, N_FEATURES))
    m.learn(X, X[:, 0] + rng.normal(size=5_000) > 1.5)
    np.testing.assert_allclose(m.score(X), m.clf.predict_proba(X)[:, 1], rtol=1e-12, atol=1e-15)
