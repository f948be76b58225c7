"""Tests for the synthetic transaction generator (no Ray, a few seconds in all)."""

from __future__ import annotations

import doctest
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
import pytest

import actors.fraud.generator as generator_module
from actors.fraud.generator import (
    TRANSACTION_SCHEMA,
    TxnGenerator,
    TxnGeneratorConfig,
    write_transactions,
)

SMALL = TxnGeneratorConfig(n_customers=2_000, n_merchants=200, seed=11)


def _table(
    config: TxnGeneratorConfig, n: int, batch_size: int = 10_000, first: int = 0
) -> pa.Table:
    return pa.Table.from_batches(
        list(TxnGenerator(config).batches(n, batch_size, first)), schema=TRANSACTION_SCHEMA
    )


@pytest.fixture(scope="module")
def stream() -> pd.DataFrame:
    return _table(SMALL, 300_000, batch_size=50_000).to_pandas()


def test_doctests() -> None:
    assert doctest.testmod(generator_module).failed == 0


def test_schema_and_row_count() -> None:
    batches = list(TxnGenerator(SMALL).batches(25_001, batch_size=10_000))
    assert [b.num_rows for b in batches] == [10_000, 10_000, 5_001]
    assert all(b.schema == TRANSACTION_SCHEMA for b in batches)
    assert list(TxnGenerator(SMALL).batches(0)) == []


def test_deterministic_and_seed_dependent() -> None:
    a, b = _table(SMALL, 50_000), _table(SMALL, 50_000)
    assert a.equals(b)
    other = _table(TxnGeneratorConfig(n_customers=2_000, n_merchants=200, seed=12), 50_000)
    assert not a.equals(other)


def test_independent_of_batch_size() -> None:
    assert _table(SMALL, 150_000, batch_size=7_000).equals(
        _table(SMALL, 150_000, batch_size=100_000)
    )


def test_parquet_bytes_identical(tmp_path: Path) -> None:
    p1 = write_transactions(tmp_path / "a.parquet", 30_000, SMALL, batch_size=8_000)
    p2 = write_transactions(tmp_path / "b.parquet", 30_000, SMALL, batch_size=8_000)
    assert p1.read_bytes() == p2.read_bytes()


def test_default_gap_follows_customer_interval() -> None:
    cfg = TxnGeneratorConfig(n_customers=1_000)
    assert cfg.mean_gap_ms == cfg.customer_interval_ms / 1_000


def test_ids_and_time_continuous_across_batches() -> None:
    batches = list(TxnGenerator(SMALL).batches(200_000, batch_size=30_000, first_event_id=1_000))
    ids = np.concatenate([b.column("event_id").to_numpy() for b in batches])
    ts = np.concatenate([b.column("ts").to_numpy().astype(np.int64) for b in batches])
    np.testing.assert_array_equal(ids, np.arange(1_000, 201_000))
    assert (np.diff(ts) >= 0).all()
    start_ms = int(SMALL.start.timestamp() * 1000)
    # a stream that starts at event 1000 continues where 1000 events would have taken it
    offset = 1_000 * SMALL.mean_gap_ms
    assert start_ms + offset <= ts[0] < start_ms + offset + 100 * SMALL.mean_gap_ms
    mean_gap = (ts[-1] - ts[0]) / (len(ts) - 1)
    assert 0.9 * SMALL.mean_gap_ms < mean_gap < 1.1 * SMALL.mean_gap_ms


def test_normal_events_look_normal(stream: pd.DataFrame) -> None:
    normal = stream[~stream.is_fraud]
    assert (stream.amount > 0).all()
    assert np.allclose(stream.amount, stream.amount.round(2))
    owner = normal.device_id.str.extract(r"^d(\d+)_[0-2]$")[0]
    assert (owner == normal.customer_id.str[1:]).all()
    # a customer's normal events stay near home and use only 2-4 categories
    spread = normal.groupby("customer_id").agg(lat=("lat", "std"), cats=("category", "nunique"))
    assert spread.lat.max() < 0.1
    assert spread.cats.max() <= 4


def test_fraud_share(stream: pd.DataFrame) -> None:
    share = stream.is_fraud.mean()
    assert 0.0035 < share < 0.0065, share
    none = _table(TxnGeneratorConfig(n_customers=500, fraud_rate=0.0), 20_000)
    assert not pa.compute.any(none.column("is_fraud")).as_py()


def test_zipf_skew(stream: pd.DataFrame) -> None:
    counts = stream.customer_id.value_counts()
    top = counts.iloc[: SMALL.n_customers // 100].sum()
    assert top / len(stream) > 0.1  # top 1% of customers: far more than 1% of events
    assert counts.iloc[0] / len(stream) < 0.05  # but no single card holder is a bot


def _single_fraud(stream: pd.DataFrame) -> pd.DataFrame:
    """Fraud events on a device seen only once: patterns (a) and (b)."""
    fraud = stream[stream.is_fraud]
    uses = fraud.device_id.map(fraud.device_id.value_counts())
    single = fraud[uses == 1]
    assert (single.device_id == "dx" + single.event_id.astype(str)).all()
    return single


def _home(stream: pd.DataFrame) -> pd.DataFrame:
    normal = stream[~stream.is_fraud].groupby("customer_id")[["lat", "lon", "amount"]]
    return normal.median().add_suffix("_home")


def test_fraud_pattern_a_amounts_far_above_median(stream: pd.DataFrame) -> None:
    single = _single_fraud(stream).join(_home(stream), on="customer_id")
    single = single.dropna()
    near = (single.lat - single.lat_home).abs() + (single.lon - single.lon_home).abs() < 1.0
    pattern_a = single[near]
    assert len(pattern_a) > 50
    ratio = pattern_a.amount / pattern_a.amount_home
    assert ratio.median() > 8 and (ratio > 3).mean() > 0.95


def test_fraud_pattern_b_far_away(stream: pd.DataFrame) -> None:
    single = _single_fraud(stream).join(_home(stream), on="customer_id")
    single = single.dropna()
    far = generator_module._haversine_km(single.lat, single.lon, single.lat_home, single.lon_home)
    pattern_b = single[far > 100]
    assert len(pattern_b) > 50
    assert (far[far > 100] > 1_000).all()


def test_fraud_pattern_c_bursts(stream: pd.DataFrame) -> None:
    fraud = stream[stream.is_fraud]
    uses = fraud.device_id.map(fraud.device_id.value_counts())
    bursts = (
        fraud[uses > 1]
        .groupby("device_id")
        .agg(
            n=("event_id", "size"),
            customers=("customer_id", "nunique"),
            span=("ts", lambda s: (s.max() - s.min()).total_seconds()),
        )
    )
    assert len(bursts) > 50
    assert bursts.n.between(3, 5).all()
    assert (bursts.customers == 1).all()
    assert (bursts.span <= 60).all()


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl", ".ndjson"])
def test_write_round_trip(tmp_path: Path, suffix: str) -> None:
    expected = _table(SMALL, 12_345, batch_size=5_000).to_pandas()
    path = write_transactions(tmp_path / f"tx{suffix}", 12_345, SMALL, batch_size=5_000)
    assert path == tmp_path / f"tx{suffix}"
    if suffix == ".parquet":
        back = pq.read_table(path)
        assert back.schema == TRANSACTION_SCHEMA
        got = back.to_pandas()
    else:
        text = path.read_text()
        assert "2026-01-01T00:00:00." in text and "Z" in text
        if suffix == ".csv":
            as_text = pacsv.ConvertOptions(column_types={"ts": pa.string()})
            got = pacsv.read_csv(path, convert_options=as_text).to_pandas()
        else:
            got = pajson.read_json(path).to_pandas()
        assert got.ts.astype(str).str.endswith("Z").all()
        got["ts"] = pd.to_datetime(got.ts, utc=True).dt.tz_localize(None).astype(expected.ts.dtype)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)


def test_csv_readable_by_pandas(tmp_path: Path) -> None:
    path = write_transactions(tmp_path / "tx.csv", 2_000, SMALL)
    df = pd.read_csv(path)
    assert len(df) == 2_000
    assert df.is_fraud.dtype == bool
    assert list(df.columns) == TRANSACTION_SCHEMA.names


def test_unknown_suffix_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.parquet.*\.csv.*\.jsonl"):
        write_transactions(tmp_path / "tx.xlsx", 10)
    assert not (tmp_path / "tx.xlsx").exists()


def test_bad_config_raises() -> None:
    with pytest.raises(ValueError):
        TxnGeneratorConfig(n_customers=0)
    with pytest.raises(ValueError):
        TxnGeneratorConfig(fraud_rate=1.5)
