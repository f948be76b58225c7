"""Tests for the alternative transaction generator (no Ray, a few seconds in all)."""

from __future__ import annotations

import doctest
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import actors.fraud.generator_alt as alt
from actors.fraud.generator import TRANSACTION_SCHEMA, TxnGenerator, TxnGeneratorConfig
from actors.fraud.generator_alt import (
    ALT_CATEGORIES,
    LABELS,
    AltConfig,
    AltGenerator,
    AltGeneratorSource,
    write_alt_transactions,
)

SMALL = AltConfig(n_customers=3_000, seed=5)


def _table(config: AltConfig, n: int, batch_size: int = 10_000, first: int = 0) -> pa.Table:
    return pa.Table.from_batches(
        list(AltGenerator(config).batches(n, batch_size, first)), schema=TRANSACTION_SCHEMA
    )


@pytest.fixture(scope="module")
def stream() -> pd.DataFrame:
    """200k events with each event's pattern name in a ``pattern`` column."""
    out = list(AltGenerator(SMALL).labelled_batches(200_000, batch_size=50_000))
    df = pa.Table.from_batches([b for b, _ in out]).to_pandas()
    df["pattern"] = pd.Series(np.concatenate([lab for _, lab in out])).map(LABELS).to_numpy()
    return df


def test_doctests() -> None:
    assert doctest.testmod(alt).failed == 0


def test_schema_and_row_count() -> None:
    batches = list(AltGenerator(SMALL).batches(25_001, batch_size=10_000))
    assert [b.num_rows for b in batches] == [10_000, 10_000, 5_001]
    assert all(b.schema == TRANSACTION_SCHEMA for b in batches)
    assert list(AltGenerator(SMALL).batches(0)) == []
    big = list(AltGenerator(SMALL).batches(150_000, batch_size=100_000))
    assert [b.num_rows for b in big] == [100_000, 50_000]


def test_deterministic_and_seed_dependent() -> None:
    a, b = _table(SMALL, 50_000), _table(SMALL, 50_000)
    assert a.equals(b)
    assert not a.equals(_table(AltConfig(n_customers=3_000, seed=6), 50_000))


def test_independent_of_batch_size() -> None:
    assert _table(SMALL, 150_000, batch_size=7_000).equals(
        _table(SMALL, 150_000, batch_size=100_000)
    )
    gen = AltGenerator(SMALL)
    labels = [
        np.concatenate([lab for _, lab in gen.labelled_batches(140_000, bs)])
        for bs in (9_999, 140_000)
    ]
    np.testing.assert_array_equal(*labels)


def test_ids_time_and_values(stream: pd.DataFrame) -> None:
    np.testing.assert_array_equal(stream.event_id, np.arange(len(stream)))
    assert (stream.ts.diff().dropna() >= pd.Timedelta(0)).all()
    assert stream.customer_id.str.fullmatch(r"a\d+").all()
    assert stream.merchant_id.str.fullmatch(r"s\d+").all()
    assert stream.device_id.str.fullmatch(r"h\d+\.(\d+|w\d+)|z\d+").all()
    assert set(stream.category) <= set(ALT_CATEGORIES)
    assert (stream.amount > 0).all() and np.allclose(stream.amount, stream.amount.round(2))
    # heavy tails: the mean is far above the median, and a daily cycle
    assert stream.amount.mean() > 3 * stream.amount.median()
    by_hour = stream.groupby(stream.ts.dt.hour).size()
    assert by_hour.max() > 4 * by_hour.min()


def test_fraud_share(stream: pd.DataFrame) -> None:
    share = stream.is_fraud.mean()
    assert 0.0125 < share < 0.0175, share
    assert (stream.is_fraud == stream.pattern.isin([LABELS[k] for k in (1, 2, 3, 4)])).all()
    none = _table(AltConfig(n_customers=500, fraud_rate=0.0), 20_000)
    assert not pa.compute.any(none.column("is_fraud")).as_py()


def test_every_pattern_present(stream: pd.DataFrame) -> None:
    counts = stream.pattern.value_counts()
    assert set(counts.index) == set(LABELS.values())
    fraud = counts[["card_testing", "account_takeover", "merchant_compromise", "slow_fraud"]]
    shares = fraud / fraud.sum()
    np.testing.assert_allclose(shares, [0.30, 0.25, 0.25, 0.20], atol=0.07)


def _incidents(stream: pd.DataFrame, pattern: str) -> pd.core.groupby.DataFrameGroupBy:
    rows = stream[stream.pattern == pattern]
    assert rows.device_id.str.startswith("z").all()
    return rows.groupby("device_id")


def test_card_testing(stream: pd.DataFrame) -> None:
    n = 0
    for _, inc in _incidents(stream, "card_testing"):
        n += 1
        assert 4 <= len(inc) <= 7 and inc.customer_id.nunique() == 1
        assert (inc.amount.iloc[:-1] <= 3.0).all() and inc.amount.iloc[-1] > 20
        assert inc.category.iloc[-1] in ("electronics", "jewelry", "gift_cards")
        assert (inc.ts.iloc[-1] - inc.ts.iloc[0]) < pd.Timedelta(minutes=30)
    assert n > 50


def _home(stream: pd.DataFrame) -> pd.DataFrame:
    normal = stream[stream.pattern == "normal"].groupby("customer_id")[["lat", "lon", "amount"]]
    return normal.median().add_suffix("_home")


def test_account_takeover(stream: pd.DataFrame) -> None:
    sizes = _incidents(stream, "account_takeover").size()
    assert len(sizes) > 50 and sizes.between(2, 4).all()
    ato = stream[stream.pattern == "account_takeover"].join(_home(stream), on="customer_id")
    assert ato.category.isin(["electronics", "jewelry", "gift_cards"]).all()
    far = alt._km(ato.lat, ato.lon, ato.lat_home, ato.lon_home)
    assert (far[ato.lat_home.notna()] > 200).mean() > 0.95


def test_merchant_compromise_victims_share_a_store(stream: pd.DataFrame) -> None:
    gen = AltGenerator(SMALL)
    mc = stream[stream.pattern == "merchant_compromise"]
    victims = mc.customer_id.str[1:].astype(int).unique()
    assert len(victims) > 50

    def covered(customers: np.ndarray, k: int = 20) -> float:
        """Share of the customers with a favourite store among their k most shared ones."""
        fav = gen._fav[customers]
        counts = pd.Series(np.concatenate([np.unique(row) for row in fav])).value_counts()
        return float(np.isin(fav, counts.index[:k]).any(axis=1).mean())

    # ~1.5 breaches a day over ~13 days: 20 stores cover the victims, not random customers
    rng = np.random.default_rng(0)
    others = rng.choice(SMALL.n_customers, len(victims), replace=False)
    assert covered(victims) > 0.85 and covered(others) < 0.7
    # the fraud comes from a fraud ring's city, on card-not-present categories
    assert mc.category.isin(["marketplace", "electronics", "gift_cards"]).all()


def test_slow_fraud_is_hard(stream: pd.DataFrame) -> None:
    slow = stream[stream.pattern == "slow_fraud"].join(_home(stream), on="customer_id")
    assert len(slow) > 100
    assert slow.device_id.str.startswith("h").mean() > 0.6  # mostly the card holder's device
    ratio = (slow.amount / slow.amount_home).dropna()
    assert ratio.between(0.2, 5).mean() > 0.7  # near the usual amounts
    # in a category the customer rarely uses
    normal = stream[stream.pattern == "normal"]
    usual = (
        normal.groupby(["customer_id", "category"]).size() / normal.groupby("customer_id").size()
    )
    share = [usual.get((c, k), 0.0) for c, k in zip(slow.customer_id, slow.category, strict=True)]
    assert np.mean(share) < 0.05


def test_legitimate_anomalies(stream: pd.DataFrame) -> None:
    travel = stream[stream.pattern == "travel"].join(_home(stream), on="customer_id").dropna()
    far = alt._km(travel.lat, travel.lon, travel.lat_home, travel.lon_home)
    assert (far > 200).mean() > 0.6  # online purchases keep the trip city too
    # trips last days
    span = travel.groupby("customer_id").ts.agg(lambda s: s.max() - s.min())
    assert (span > pd.Timedelta(days=1)).mean() > 0.3
    splurge = stream[stream.pattern == "holiday_splurge"].join(_home(stream), on="customer_id")
    assert (splurge.amount / splurge.amount_home).median() > 3
    phones = stream[stream.pattern == "new_phone"]
    assert phones.device_id.str.fullmatch(r"h\d+\.w\d+").all()
    families = stream[stream.pattern == "normal"].groupby("customer_id").device_id.nunique()
    assert families.max() >= 5


def test_write_and_source(tmp_path: Path) -> None:
    path = write_alt_transactions(tmp_path / "alt.parquet", 12_345, SMALL, batch_size=5_000)
    back = pq.read_table(path)
    assert back.schema == TRANSACTION_SCHEMA
    assert back.equals(_table(SMALL, 12_345))
    with pytest.raises(ValueError, match="parquet"):
        write_alt_transactions(tmp_path / "alt.csv", 10, SMALL)
    src = AltGeneratorSource(SMALL, n_events=3_000, batch_size=1_000)
    tail = pa.concat_tables([b for b, _ in src.batches(start=500)])
    assert tail.column("event_id")[0].as_py() == 500 and tail.num_rows == 3_000


def test_speed() -> None:
    t0 = time.perf_counter()
    rows = sum(b.num_rows for b in AltGenerator(AltConfig()).batches(250_000, 50_000))
    assert rows == 250_000
    assert time.perf_counter() - t0 < 10.0  # ~0.3 s here; 1 M events take ~1.3 s


# a quick offline check: logistic regression on three per-customer history features


def history_features(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per event: amount z-score vs the customer's earlier events, a device first used by
    the customer less than an hour ago, log distance from the customer's last place."""
    df = df.sort_values("event_id").reset_index(drop=True)
    x = np.log1p(df.amount)
    df["_x"], df["_x2"] = x, x * x
    g = df.groupby("customer_id", sort=False)
    n_prev = g.cumcount()
    mean = (g["_x"].cumsum() - x) / n_prev.clip(lower=1)
    var = ((g["_x2"].cumsum() - x * x) / n_prev.clip(lower=1) - mean**2).clip(lower=0)
    z = np.where(n_prev >= 3, (x - mean) / (np.sqrt(var) + 0.25), 0.0)
    first_use = df.groupby(["customer_id", "device_id"], sort=False).ts.transform("min")
    new_device = ((df.ts - first_use) < pd.Timedelta(hours=1)) & (n_prev > 0)
    dist = alt._km(df.lat, df.lon, g.lat.shift(), g.lon.shift())
    X = np.column_stack(
        [np.clip(z, -10, 10), new_device, np.log1p(np.nan_to_num(dist)), n_prev >= 3]
    ).astype(np.float64)
    return X, df.is_fraud.to_numpy()


def quick_auc(df: pd.DataFrame) -> float:
    """Fit on the first 60% of the stream (Newton steps), AUC on the rest."""
    X, y = history_features(df)
    X = np.column_stack([np.ones(len(X)), X])
    cut = int(len(y) * 0.6)
    w = np.zeros(X.shape[1])
    for _ in range(25):
        p = 1 / (1 + np.exp(-X[:cut] @ w))
        hess = (X[:cut] * (p * (1 - p))[:, None]).T @ X[:cut] + 1e-3 * np.eye(len(w))
        w -= np.linalg.solve(hess, X[:cut].T @ (p - y[:cut]) + 1e-3 * w)
    score, truth = X[cut:] @ w, y[cut:]
    ranks = pd.Series(score).rank().to_numpy()
    pos = truth.sum()
    return float((ranks[truth].sum() - pos * (pos + 1) / 2) / (pos * (len(truth) - pos)))


def test_learnable_but_not_trivially(stream: pd.DataFrame) -> None:
    got = quick_auc(stream)
    repo = TxnGenerator(TxnGeneratorConfig(n_customers=3_000, seed=5)).batches(200_000, 50_000)
    repo_auc = quick_auc(pa.Table.from_batches(list(repo)).to_pandas())
    print(f"quick logistic regression AUC: alt {got:.4f}, repo generator {repo_auc:.4f}")
    assert 0.7 < got < 0.999
