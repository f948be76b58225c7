"""The fraud model's production behaviour: calibrated alerts, structured reasons, a safe
model format, and what `edgecore replay` reports about it."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from actors.fraud.customer import Customer, FraudConfig
from actors.fraud.generator import TxnGeneratorConfig, write_transactions
from actors.fraud.scoring import Scorer
from actors.fraud.threshold import Calibrator, auc_counters, auc_of
from runtime.errors import SnapshotError
from runtime.state.store import Store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stream(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ml") / "txns.parquet"
    return write_transactions(path, 300_000, TxnGeneratorConfig(seed=21, n_customers=5_000))


def test_replay_reports_auc_and_persists_predictions(stream, tmp_path):
    data = tmp_path / "data"
    got = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "replay", str(stream), "--data", str(data)]
        + ["--predictions", "--json", "--shards", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    assert got.returncode == 0, got.stderr[-2000:]
    out = json.loads(got.stdout)
    assert out["auc"] > 0.9 and out["precision"] > 0.5 and out["recall"] > 0.5
    store = Store(data)
    preds = store.read("predictions")
    assert preds.num_rows == 300_000
    assert {"score", "alert", "threshold", "model_version"} <= set(preds.column_names)
    alerts = store.read("alerts")
    assert pa.types.is_list(alerts.schema.field("reason").type)
    reasons = {r for row in alerts.column("reason").to_pylist() for r in row}
    assert reasons and reasons <= set(_reason_names())
    # every alert is a prediction above its own threshold
    flagged = preds.filter(preds.column("alert"))
    assert flagged.num_rows == alerts.num_rows
    assert np.all(flagged.column("score").to_numpy() >= flagged.column("threshold").to_numpy())


def _reason_names() -> list[str]:
    from actors.fraud.model import FEATURES

    return [
        *FEATURES,
        "rule_high_amount",
        "rule_burst",
        "rule_far_location",
        "rule_new_device_high_amount",
    ]


def test_an_app_without_predictions_refuses_the_flag(stream, tmp_path):
    got = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "replay", str(stream), "--data", str(tmp_path)]
        + ["--app", "devices", "--predictions"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert got.returncode == 1
    assert got.stderr.strip().count("\n") == 0 and "makes no predictions" in got.stderr


def test_threshold_meets_a_precision_target_it_was_not_tuned_for():
    rng = np.random.default_rng(5)
    for rate, target in ((0.002, 0.7), (0.02, 0.9)):
        cal = Calibrator()
        y = rng.random(400_000) < rate
        score = np.where(y, rng.beta(6, 2, y.size), rng.beta(1, 25, y.size))
        cal.observe(score, y, np.ones(y.size, dtype=bool))
        th = cal.threshold(target_precision=target, budget_per_10k=50)
        alert = score >= th
        precision = (alert & y).sum() / alert.sum()
        assert precision >= target - 0.03, (rate, target, precision)


def test_threshold_keeps_to_the_budget_before_labels():
    cal = Calibrator()
    score = np.random.default_rng(1).random(100_000)
    cal.observe(score, None, None)
    th = cal.threshold(target_precision=0.8, budget_per_10k=50)
    assert 0.003 <= (score >= th).mean() <= 0.007


def test_calibration_merges_without_double_counting():
    a, b = Calibrator(half_life=1e12), Calibrator(half_life=1e12)
    a.observe(np.full(100, 0.9), np.ones(100, bool), np.ones(100, bool))
    b.observe(np.full(50, 0.1), np.zeros(50, bool), np.ones(50, bool))
    merged = Calibrator.merged([a.arrays(), b.arrays()])
    again = Calibrator.merged([merged, {**merged, "cal_delta": np.zeros_like(merged["cal_delta"])}])
    total = (merged["cal_base"] + merged["cal_delta"]).sum(axis=1)
    assert total.tolist() == [150.0, 100.0, 50.0]
    assert (again["cal_base"] + again["cal_delta"]).sum(axis=1).tolist() == total.tolist()


def test_binned_auc_matches_the_exact_one():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(2)
    y = rng.random(50_000) < 0.05
    s = 1 / (1 + np.exp(-(rng.normal(size=y.size) + 2.5 * y)))
    exact = roc_auc_score(y, s)
    assert abs(auc_of(auc_counters(s, y, np.ones(y.size, bool))) - exact) < 0.002


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {_Exploit.marker}",))


def test_a_pickled_snapshot_is_never_unpickled(tmp_path):
    """Refused (the start stops with a one-line error), never run, the model untouched."""
    _Exploit.marker = str(tmp_path / "pwned")
    blob = pickle.dumps(_Exploit())
    kind = Customer(FraudConfig())
    with pytest.raises(SnapshotError, match="snapshot .fraud_model. is a Python pickle"):
        kind.restore(blob)
    assert not (tmp_path / "pwned").exists()
    assert not kind.scorer.model.fitted


def test_the_model_round_trips_as_arrays():
    scorer = Scorer(FraudConfig())
    from actors.fraud.model import N_FEATURES

    rng = np.random.default_rng(0)
    X = rng.normal(size=(5_000, N_FEATURES))
    y = X[:, 0] > 1.2
    scorer.model.learn(X, y)
    scorer.calibrator.observe(scorer.model.score(X), y, np.ones(len(y), bool))
    again = Scorer(FraudConfig())
    again.load(scorer.to_bytes())
    np.testing.assert_array_equal(again.model.score(X), scorer.model.score(X))
    assert again.threshold() == scorer.threshold()


def test_a_restored_model_learns_on_exactly_as_one_that_never_left_memory():
    """Weights come back as arrays and enter a classifier only when it learns again."""
    from actors.fraud.model import N_FEATURES, OnlineModel

    rng = np.random.default_rng(5)
    X1, X2 = rng.normal(size=(4_000, N_FEATURES)), rng.normal(size=(4_000, N_FEATURES))
    live = OnlineModel()
    live.learn(X1, X1[:, 1] > 1)
    restored = OnlineModel.from_arrays(live.arrays())
    assert restored._clf is None  # scoring and saving need no classifier
    np.testing.assert_array_equal(restored.score(X2), live.score(X2))
    assert restored.explain(X2[:5]) == live.explain(X2[:5])
    live.learn(X2, X2[:, 1] > 1)
    restored.learn(X2, X2[:, 1] > 1)
    np.testing.assert_array_equal(restored.clf.coef_, live.clf.coef_)
    assert restored.clf.t_ == live.clf.t_
    for k, v in live.arrays().items():
        np.testing.assert_array_equal(restored.arrays()[k], v)


def test_replicas_average_by_what_each_learned_since_the_last_sync():
    from actors.fraud.model import N_FEATURES, OnlineModel

    def replica(coef: float, since: int, total: int, t: float, version: int) -> dict:
        m = OnlineModel.from_arrays(OnlineModel().arrays())
        m.fitted, m.version, m.learned_since_sync, m.learned_total = True, version, since, total
        m._restored = (np.full((1, N_FEATURES), coef), np.array([coef]), t)
        return m.arrays()

    unfitted = OnlineModel().arrays()  # a replica that saw no label: left out of the mean
    got = OnlineModel.from_arrays(
        OnlineModel.average_arrays(
            [replica(1.0, 99, 199, 50.0, 3), unfitted, replica(4.0, 299, 399, 70.0, 2)]
        )
    )
    w = np.array([100.0, 300.0]) / 400.0
    np.testing.assert_allclose(got.weights()[0], np.full((1, N_FEATURES), w @ [1.0, 4.0]))
    np.testing.assert_allclose(got.weights()[1], [w @ [1.0, 4.0]])
    assert got.weights()[2] == 70.0
    assert (got.version, got.learned_since_sync, got.learned_total) == (4, 0, 100 + 99 + 299)


def test_the_coordinators_work_on_the_fraud_kind_does_not_import_scikit_learn():
    """Building the kind, merging fitted replicas and reading the model card happen in the
    coordinator (the driver): scikit-learn (~0.8 s, ~77 MB) stays in the shards."""
    code = """
import sys, numpy as np
from actors.fraud.customer import Customer, FraudConfig
from actors.fraud.model import N_FEATURES, OnlineModel
kind = Customer(FraudConfig())
snaps = []
for c in (1.0, 3.0):
    m = OnlineModel.from_arrays(OnlineModel().arrays())
    m.fitted, m.learned_since_sync = True, 10
    m._restored = (np.full((1, N_FEATURES), c), np.array([c]), 9.0)
    kind.scorer.model = m  # a shard's replica, as it snapshots it
    snaps.append(kind.scorer.to_bytes())
merged = kind.merge_snapshots(snaps)
card = kind.model_card(merged)
print(card["version"], "sklearn" in sys.modules)
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert done.stdout.split() == ["1", "False"]


def test_a_challenger_is_promoted_only_when_its_auc_gain_is_significant():
    from actors.fraud.challenger import MIN_FRAUDS, Shadow

    rng = np.random.default_rng(3)

    def compared(n: int, champion_sep: float, challenger_sep: float) -> Shadow:
        shadow = Shadow()
        shadow.start()
        y = rng.random(n) < 0.01
        noise = rng.normal(size=n)
        champ = 1 / (1 + np.exp(-(noise + champion_sep * y)))
        chall = 1 / (1 + np.exp(-(noise + challenger_sep * y)))
        shadow.observe(champ, chall, y, np.ones(n, bool))
        return shadow

    same = compared(300_000, 2.0, 2.0)  # the same scores: no gain at all
    assert same.comparison()["z"] == 0 and not same.better()
    slight = compared(300_000, 2.0, 2.03)  # a gain within the noise of ~3,000 frauds
    assert 0 < slight.comparison()["z"] < 1.645 and not slight.better()
    clear = compared(300_000, 2.0, 3.0)
    assert clear.comparison()["z"] > 3 and clear.better()
    few = compared(5_000, 2.0, 4.0)  # much better, but on too few labelled frauds
    assert few.comparison()["labelled_frauds"] < MIN_FRAUDS and not few.better()


def test_a_promoted_challenger_alerts_at_once_on_the_threshold_it_calibrated_in_shadow():
    from actors.fraud.model import N_FEATURES
    from actors.fraud.scoring import Decision

    rng = np.random.default_rng(5)
    scorer = Scorer(FraudConfig())
    X = rng.normal(size=(6_000, N_FEATURES))
    scorer.learn(X, X[:, 0] > 2, np.ones(len(X)))
    scorer.model.flush()
    scorer.shadow.start(scorer.model)
    assert scorer.shadow.model.fitted and scorer.shadow.model.learned_total == 0
    n = 200_000
    y = rng.random(n) < 0.01
    champion = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.0 * y)))  # a weak champion
    challenger = 1 / (1 + np.exp(-(rng.normal(size=n) - 4 + 8.0 * y)))  # a sharp one
    d = Decision(champion, champion > 0.9, 0.9, True, challenger)
    scorer.observe_scores(d)
    scorer.observe_labels(champion, challenger, d.alert, y)
    merged = Scorer(FraudConfig())
    merged.load(Scorer.merge([scorer.to_bytes()]))
    assert merged.shadow.model is None and merged.model.learned_total >= 6_000  # promoted
    th = merged.threshold()
    alert = challenger >= th
    assert th != 0.5 and (alert & y).sum() / alert.sum() >= 0.75  # its own calibration
