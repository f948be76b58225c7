"""Concept drift in the repo's transaction generator (no Ray, a few seconds in all)."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pandas as pd
import pyarrow as pa
import pytest

from actors.fraud.generator import (
    NEW_PATTERN_RATE,
    OLD_KEPT,
    TRANSACTION_SCHEMA,
    GeneratorSource,
    TxnGenerator,
    TxnGeneratorConfig,
)
from runtime.errors import ConfigError

BASE = TxnGeneratorConfig(n_customers=2_000, n_merchants=200, seed=11, fraud_rate=0.01)
N, AT = 200_000, 100_000


def _table(config: TxnGeneratorConfig, n: int, batch_size: int = 50_000) -> pa.Table:
    batches = list(TxnGenerator(config).batches(n, batch_size))
    return pa.Table.from_batches(batches, schema=TRANSACTION_SCHEMA)


def _digest(table: pa.Table) -> str:
    h = hashlib.sha256()
    for col in table.columns:
        for chunk in col.chunks:
            h.update(repr(chunk.to_pylist()).encode())
    return h.hexdigest()


@pytest.fixture(scope="module")
def plain() -> pd.DataFrame:
    return _table(BASE, N).to_pandas()


@pytest.fixture(scope="module", params=["new_pattern", "habits"])
def drifted(request: pytest.FixtureRequest) -> tuple[str, pd.DataFrame]:
    return request.param, _table(replace(BASE, drift_at=AT, drift=request.param), N).to_pandas()


def test_default_output_unchanged() -> None:
    """Digests of the output before drift was added to the generator."""
    small = TxnGeneratorConfig(n_customers=500, n_merchants=50, seed=3, fraud_rate=0.05)
    assert _digest(_table(small, 5_000, 1_000)) == (
        "0345e30364c4f2ef700f76b22110bbb3d9a98cc018fb10121dee8edeb23c9532"
    )
    assert _digest(_table(TxnGeneratorConfig(), 70_000, 30_000)) == (
        "48ab691fcf3b44f4c31ce8259b13ee825da212dff66e359b3a3b3d8950d2f239"
    )


def test_drift_only_after_drift_at(plain: pd.DataFrame, drifted: tuple[str, pd.DataFrame]) -> None:
    kind, df = drifted
    pd.testing.assert_frame_equal(df.iloc[:AT], plain.iloc[:AT])
    changed = (df.iloc[AT:] != plain.iloc[AT:]).any(axis=1).mean()
    # habits: the amount of every normal event; new pattern: fraud events only (~1.5%)
    assert changed > (0.9 if kind == "habits" else 0.01)
    # a drift that starts after the stream's end changes nothing
    late = _table(replace(BASE, drift_at=N, drift=drifted[0]), N).to_pandas()
    pd.testing.assert_frame_equal(late, plain)


def test_drift_deterministic_and_independent_of_batch_size(
    drifted: tuple[str, pd.DataFrame],
) -> None:
    kind, df = drifted
    cfg = replace(BASE, drift_at=AT, drift=kind)
    pd.testing.assert_frame_equal(_table(cfg, N, batch_size=7_777).to_pandas(), df)


def test_new_pattern(plain: pd.DataFrame) -> None:
    cfg = replace(BASE, drift_at=AT, drift="new_pattern")
    df = _table(cfg, N).to_pandas()
    hit = df.merchant_id.isin(TxnGenerator(cfg).compromised_merchants)
    new = df[df.is_fraud & hit & df.device_id.str.fullmatch(r"d\d+_\d")]
    old = df[df.is_fraud & df.device_id.str.startswith("dx")]
    assert (new.event_id >= AT).all() and (old.event_id < AT).sum() > 0
    rate = BASE.fraud_rate
    assert len(new) / (N - AT) == pytest.approx(NEW_PATTERN_RATE * rate, rel=0.2)
    # the old patterns become rarer after drift_at
    old_after = (old.event_id >= AT).sum() / (N - AT)
    old_before = (old.event_id < AT).sum() / AT
    assert old_after / old_before == pytest.approx(OLD_KEPT, abs=0.1)
    # the new fraud: moderate amounts, at home, on a device the customer already used
    typical = plain[~plain.is_fraud].groupby("customer_id").amount.median()
    ratio = new.amount / new.customer_id.map(typical)
    assert ratio.median() == pytest.approx(2.25, rel=0.35) and (ratio < 6).mean() > 0.9
    home = plain[~plain.is_fraud].groupby("customer_id")[["lat", "lon"]].median()
    assert (new.lat - new.customer_id.map(home.lat)).abs().max() < 0.2
    # every event is fraud or not, nothing else: dropped old fraud is the normal event again
    dropped = plain.is_fraud & ~df.is_fraud
    assert dropped[:AT].sum() == 0 and dropped.sum() > 0
    assert not df[dropped].device_id.str.startswith("dx").any()


def test_habits(plain: pd.DataFrame) -> None:
    df = _table(replace(BASE, drift_at=AT, drift="habits"), N).to_pandas()
    # fraud is untouched
    pd.testing.assert_series_equal(df.is_fraud, plain.is_fraud)
    pd.testing.assert_frame_equal(df[df.is_fraud], plain[plain.is_fraud])
    normal_after = df[(df.event_id >= AT) & ~df.is_fraud]
    base_after = plain.loc[normal_after.index]
    ratio = normal_after.amount / base_after.amount
    assert ratio.median() == pytest.approx(1.8, rel=0.01)
    phones = normal_after.device_id.str.fullmatch(r"dn\d+")
    assert phones.mean() == pytest.approx(0.4, abs=0.03)
    assert (
        normal_after[phones].device_id.str[2:] == normal_after[phones].customer_id.str[1:]
    ).all()
    moved = (normal_after.lat - base_after.lat).abs() + (normal_after.lon - base_after.lon).abs()
    assert (moved > 5).mean() == pytest.approx(0.06, abs=0.01)


def test_config_and_source_id() -> None:
    with pytest.raises(ConfigError, match="drift"):
        TxnGeneratorConfig(drift_at=10, drift="sideways")
    assert GeneratorSource(BASE).id == "generator:seed=11:customers=2000"
    drifting = GeneratorSource(replace(BASE, drift_at=5, drift="habits"))
    assert drifting.id.endswith(":drift=habits@5")
