"""scripts/bench_scale.py: the stream it generates, its exactness check, and a tiny run end
to end as users run it (a subprocess, real Ray, real LanceDB)."""

from __future__ import annotations

import doctest
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_scale  # noqa: E402
import scale_stream  # noqa: E402
from live_helpers import script_json  # noqa: E402
from scale_stream import ScaleSource, Tally, customer_keys, expected_sums  # noqa: E402

from runtime.state.keys import hash_keys  # noqa: E402
from runtime.state.store import Store  # noqa: E402


def test_doctests() -> None:
    assert doctest.testmod(scale_stream).failed == 0


def test_every_customer_first_then_skewed_and_resumable() -> None:
    src = ScaleSource(customers=1000, events=5000, batch_size=300, seed=3)
    full = [t for t, _ in src.batches()]
    ids = np.concatenate([b.ids for b in src.blocks()])
    assert sorted(ids[:1000].tolist()) == list(range(1000))  # the first pass: each once
    counts = np.bincount(ids[1000:], minlength=1000)
    assert counts.max() > 20 * np.median(counts)  # Zipf: a few customers are hot
    whole = pa.concat_tables(full)
    assert whole["event_id"].to_pylist() == list(range(5000))
    assert whole["customer_id"].to_pylist() == customer_keys(ids).to_pylist()
    tail = pa.concat_tables([t for t, _ in src.batches(start=1234)])
    assert tail.equals(whole.slice(1234))  # resumed mid-block: the same rows
    again = ScaleSource(customers=1000, events=5000, batch_size=300, seed=3)
    assert pa.concat_tables([t for t, _ in again.batches()]).equals(whole)


def test_expected_sums_agree_with_a_plain_aggregation() -> None:
    src = ScaleSource(customers=500, events=4000, batch_size=700, seed=5)
    blocks = list(src.blocks())
    ids = np.concatenate([b.ids for b in blocks])
    cents = np.concatenate([b.cents for b in blocks])
    sample = np.array([0, 17, 250, 499])
    exp = expected_sums(src, sample)
    for i, c in enumerate(sample):
        hit = np.flatnonzero(ids == c)
        assert exp["n"][i] == len(hit) and exp["cents"][i] == cents[hit].sum()
        assert exp["last_id"][i] == hit.max()
    assert exp["total_cents"] == cents.sum() and exp["total_n"] == 4000


def test_per_entity_cost_is_the_slope_before_the_first_passivation() -> None:
    mb = 1024 * 1024
    rows = [{"t": 0.0, "shards_anon_mb": 50.0}]  # before the counters: skipped
    rows += [  # 200 bytes an entity while filling, then flat memory after passivating
        {"active": a, "passivated": 0, "shards_anon_mb": (100 * mb + 200 * a) / mb}
        for a in (1000, 50_000, 100_000, 150_000)
    ]
    rows += [{"active": 100_000, "passivated": 90_000, "shards_anon_mb": 500.0}]
    assert bench_scale.per_entity_cost(rows) == pytest.approx(200, rel=1e-6)
    assert bench_scale.per_entity_cost(rows[:3]) is None  # too few points to tell


def stored_profiles(src: ScaleSource) -> pa.Table:
    """The profiles a correct run stores, computed directly."""
    ids = np.concatenate([b.ids for b in src.blocks()])
    cents = np.concatenate([b.cents for b in src.blocks()])
    n_ids = min(src.customers, src.events)
    last = np.full(n_ids, -1, dtype=np.int64)
    np.maximum.at(last, ids, np.arange(len(ids)))
    keys = customer_keys(np.arange(n_ids))
    return pa.table(
        {
            "customer_id": keys,
            "_key_hash": pa.array(hash_keys(keys).view(np.int64)),
            "n": np.bincount(ids, minlength=n_ids),
            "cents": np.bincount(ids, weights=cents, minlength=n_ids).astype(np.int64),
            "last_id": last,
        }
    )


@pytest.mark.parametrize("broken", [None, "n", "missing"])
def test_the_check_finds_a_wrong_or_missing_profile(tmp_path: Path, broken: str | None) -> None:
    src = ScaleSource(customers=300, events=2000, batch_size=400, seed=9)
    table = stored_profiles(src)
    sample = np.array([5, 42, 299])
    if broken == "n":  # one sampled profile counted one event too many
        n = table["n"].to_numpy().copy()
        n[42] += 1
        table = table.set_column(table.schema.get_field_index("n"), "n", pa.array(n))
    elif broken == "missing":
        table = table.filter(pa.array(np.arange(table.num_rows) != 299))
    Store(tmp_path).upsert(Tally.name, table, key="customer_id")
    out = scale_stream.check(src, tmp_path, sample, table)
    assert out["exact"] is (broken is None)
    if broken == "n":
        sides = sorted(m["side"] for m in out["mismatches"])
        assert sides == ["restored", "stored", "totals"]
        assert {m.get("key") for m in out["mismatches"]} >= {"c42"}
    if broken == "missing":
        assert {m.get("key") for m in out["mismatches"]} >= {"c299"}
        assert out["totals"]["rows"] == 299


def test_a_tiny_run_end_to_end(tmp_path: Path) -> None:
    """Passivation and activation happen (a budget of 1,500 per shard for 20k
    customers), the restart reads every profile back, and every sum is exact."""
    r = script_json(
        "bench_scale.py",
        *("--customers", "20000", "--events", "60000", "--batch-size", "5000"),
        *("--max-active", "1500", "--restore", "20000", "--sample", "400"),
        *("--interval", "0.3", "--data-dir", str(tmp_path / "data")),
        cwd=ROOT,
        timeout=240,
    )
    assert set(r) >= {"load", "restore", "exactness", "targets", "customers", "events"}
    ld, rs, ex = r["load"], r["restore"], r["exactness"]
    assert ld["input"] == ld["accepted"] == 60_000
    assert ld["max_active_per_shard"] == 1500
    assert ld["passivated"] > 10_000 and ld["activated"] > 1_000
    assert ld["active_end"] <= 2 * 1500 + 5000  # the budget, plus a batch's keys at most
    assert ld["peak_rss_mb"] > 0 and ld["timeline"]
    assert {"t", "events", "rss_mb", "shards_mb", "shards_anon_mb", "machine_gb"} <= set(
        ld["timeline"][-1]
    )
    assert rs["profiles"] == rs["found"] == 20_000 and rs["lookup_s"] > 0
    assert rs["startup_s"] > 0 and rs["seconds_per_1m"] > 0
    assert ex["exact"] is True and ex["mismatches"] == [] and ex["sample"] == 400
    assert (
        ex["totals"]
        == ex["totals_expected"]
        == {"rows": 20_000, "n": 60_000, "cents": ex["totals"]["cents"]}
    )
    assert r["targets"]["exact"]["pass"] is True
