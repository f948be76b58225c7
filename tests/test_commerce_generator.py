"""Tests for the synthetic commerce generator of the future recommend app (no Ray, seconds)."""

from __future__ import annotations

import doctest
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import actors.recommend.catalog as catalog_module
import actors.recommend.generator as generator_module
from actors.recommend.generator import (
    EVENT_SCHEMA,
    EVENT_TYPES,
    CommerceConfig,
    CommerceGenerator,
    CommerceSource,
    catalog_table,
    events_table,
    next_purchases,
    split,
    write_catalog,
    write_events,
)
from runtime.testing.checks import check_source

SMALL = CommerceConfig(n_products=5_000, n_customers=2_000, n_themes=100, dim=32, seed=11)
N = 200_000  # about 3 chunks: crosses chunk boundaries and the taste walk


@pytest.fixture(scope="module")
def events() -> pa.Table:
    return events_table(N, SMALL)


@pytest.fixture(scope="module")
def catalog() -> pa.Table:
    return catalog_table(SMALL)


def _index(col: pa.ChunkedArray) -> np.ndarray:
    """``"p123"`` -> 123 (product and customer ids are their row numbers)."""
    return pc.cast(pc.utf8_slice_codeunits(col, 1), pa.int64()).to_numpy()


def _embedding(catalog: pa.Table) -> np.ndarray:
    emb = catalog["embedding"].combine_chunks()
    return emb.flatten().to_numpy().reshape(len(emb), emb.type.list_size)


def test_doctests() -> None:
    for module in (catalog_module, generator_module):
        assert doctest.testmod(module).failed == 0


def test_deterministic_and_seed_dependent(events: pa.Table, catalog: pa.Table) -> None:
    assert events_table(N, SMALL).equals(events)
    assert catalog_table(SMALL).equals(catalog)
    other = CommerceConfig(n_products=5_000, n_customers=2_000, n_themes=100, dim=32, seed=12)
    assert not events_table(20_000, other).equals(events.slice(0, 20_000))
    assert not catalog_table(other).equals(catalog)


def test_independent_of_batch_size_and_resumable(events: pa.Table) -> None:
    def read(batch: int, start: int = 0, n: int = 150_000) -> pa.Table:
        src = CommerceSource(SMALL, n_events=n, batch_size=batch)
        ends, tables = [], []
        for t, end in src.batches(start):
            tables.append(t)
            ends.append(end)
        assert ends == sorted(ends) and ends[-1] == n
        return pa.concat_tables(tables)

    a, b = read(1_000), read(7_000)
    assert a.equals(b) and a.equals(events.slice(0, 150_000))
    for start in (1, 65_535, 65_536, 99_999):  # inside and at chunk edges
        assert read(7_000, start).equals(a.slice(start))
    assert list(CommerceSource(SMALL, n_events=10).batches(10)) == []


def test_source_contract() -> None:
    src = CommerceSource(SMALL, n_events=3_000, batch_size=1_100)
    assert check_source(src) == {"check_resume": "passed"}
    assert src.id != CommerceSource(CommerceConfig(seed=12), n_events=3_000).id


def test_catalog_schema_and_values(catalog: pa.Table) -> None:
    assert catalog.schema == pa.schema(
        [
            ("product_id", pa.string()),
            ("category", pa.string()),
            ("price", pa.float64()),
            ("stock", pa.int64()),
            ("embedding", pa.list_(pa.float32(), 32)),
        ]
    )
    assert catalog.num_rows == 5_000
    assert catalog["product_id"].to_pylist()[:3] == ["p0", "p1", "p2"]
    norms = np.linalg.norm(_embedding(catalog), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    stock = catalog["stock"].to_numpy()
    assert stock.min() >= 0 and 0.03 < (stock == 0).mean() < 0.07
    assert 25 <= pc.count_distinct(catalog["category"]).as_py() <= 30
    assert pc.min(catalog["price"]).as_py() > 0


def test_event_schema_and_values(events: pa.Table, catalog: pa.Table) -> None:
    assert events.schema == EVENT_SCHEMA and events.num_rows == N
    np.testing.assert_array_equal(events["event_id"].to_numpy(), np.arange(N))
    ts = events["ts"].to_numpy().astype(np.int64)
    assert (np.diff(ts) >= 0).all()
    kinds = events["event_type"].to_numpy(zero_copy_only=False)
    assert set(kinds) == set(EVENT_TYPES)
    share = {k: (kinds == k).mean() for k in EVENT_TYPES}
    assert 0.70 < share["view"] < 0.80, share
    assert 0.12 < share["add_to_cart"] < 0.18, share
    assert 0.07 < share["purchase"] < 0.13, share
    # price and category are the catalog's; views have quantity 1, others 1-3
    prod = _index(events["product_id"])
    np.testing.assert_array_equal(events["price"].to_numpy(), catalog["price"].to_numpy()[prod])
    assert events["category"].equals(catalog["category"].take(pa.array(prod)))
    qty = events["quantity"].to_numpy()
    assert (qty[kinds == "view"] == 1).all() and set(qty) == {1, 2, 3}
    # out-of-stock products are viewed but never carted
    stock = catalog["stock"].to_numpy()[prod]
    assert (stock[kinds != "view"] > 0).all() and (stock[kinds == "view"] == 0).any()


def test_purchases_follow_a_cart_add_in_the_session(events: pa.Table) -> None:
    df = events.select(["event_id", "session_id", "event_type", "product_id"]).to_pandas()
    carts = df[df.event_type == "add_to_cart"]
    buys = df[df.event_type == "purchase"]
    first_cart = carts.groupby(["session_id", "product_id"]).event_id.min().rename("cart_id")
    joined = buys.join(first_cart, on=["session_id", "product_id"])
    assert joined.cart_id.notna().all()
    assert (joined.cart_id < joined.event_id).all()
    # a session is one customer's
    per = events.group_by("session_id").aggregate([("customer_id", "count_distinct")])
    assert pc.max(per["customer_id_count_distinct"]).as_py() == 1


def test_next_purchases(events: pa.Table) -> None:
    nxt = next_purchases(events)
    buys = events.filter(pc.equal(events["event_type"], "purchase"))
    assert nxt["event_id"].equals(buys["event_id"])
    df = nxt.to_pandas()
    # the last purchase of each customer has none; every other one, the following purchase
    last = df.groupby("customer_id").event_id.transform("max") == df.event_id
    assert df.next_product_id.isna().equals(last)
    expected = df.groupby("customer_id").product_id.shift(-1)
    assert expected.equals(df.next_product_id)
    before, after = split(events, 1_000)
    assert before.num_rows == 1_000 and after["event_id"][0].as_py() == 1_000


def _hit_rates(events: pa.Table, emb: np.ndarray, at: int, k: int = 10) -> tuple[float, float]:
    """Hit-rate@k of the next purchase after each purchase from event ``at`` on, for the
    purchase-count top-k before ``at`` and for an embedding nearest-neighbour recommender
    (cosine to the mean embedding of everything the customer touched so far, products
    already bought left out)."""
    n = events.num_rows
    cust, prod = _index(events["customer_id"]), _index(events["product_id"])
    eid = events["event_id"].to_numpy()
    bought = pc.equal(events["event_type"], "purchase").to_numpy(zero_copy_only=False)
    nxt = next_purchases(events)
    q = nxt["event_id"].to_numpy()
    keep = pc.is_valid(nxt["next_product_id"]).to_numpy(zero_copy_only=False) & (q >= at)
    q, target = q[keep], _index(nxt["next_product_id"].filter(pa.array(keep)))
    top = np.argsort(-np.bincount(prod[bought & (eid < at)], minlength=len(emb)))[:k]
    popularity = np.isin(target, top).mean()
    # running per-customer sums of embeddings, in (customer, event id) order
    order = np.lexsort((eid, cust))
    csum = np.cumsum(emb[prod[order]], axis=0, dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, np.diff(cust[order]) != 0])
    base = np.vstack([np.zeros((1, emb.shape[1])), csum[starts[1:] - 1]])
    csum -= np.repeat(base, np.diff([*starts, n]), axis=0)
    row = np.empty(n, np.int64)
    row[order] = np.arange(n)
    profile = csum[row[q]]  # event id = row number here
    scores = profile @ emb.T / np.linalg.norm(profile, axis=1, keepdims=True)
    purchases: dict[int, list[tuple[int, int]]] = {}
    for c, p, e in zip(cust[bought], prod[bought], eid[bought], strict=True):
        purchases.setdefault(int(c), []).append((int(e), int(p)))
    for i, e in enumerate(q):
        scores[i, [p for t, p in purchases[int(cust[e])] if t <= e]] = -np.inf
    rec = np.argpartition(-scores, k, axis=1)[:, :k]
    return float(popularity), float((rec == target[:, None]).any(axis=1).mean())


def test_recommendation_is_learnable(events: pa.Table, catalog: pa.Table) -> None:
    emb = _embedding(catalog)
    popularity, nearest = _hit_rates(events, emb, at=int(0.7 * N))
    assert popularity > 0.005, popularity
    assert nearest >= 2 * popularity, (popularity, nearest)
    # the same evaluation with embeddings that carry no structure falls to chance
    rng = np.random.default_rng(0)
    shuffled = emb[rng.permutation(len(emb))]
    _, blind = _hit_rates(events, shuffled, at=int(0.7 * N))
    assert blind < nearest / 3, (blind, nearest)


def test_co_purchased_products_are_close(events: pa.Table, catalog: pa.Table) -> None:
    emb = _embedding(catalog)
    buys = events.filter(pc.equal(events["event_type"], "purchase"))
    sess = pc.dictionary_encode(buys["session_id"]).combine_chunks().indices.to_numpy()
    prod = _index(buys["product_id"])
    order = np.lexsort((buys["event_id"].to_numpy(), sess))
    sess, prod = sess[order], prod[order]
    pair = (sess[1:] == sess[:-1]) & (prod[1:] != prod[:-1])  # consecutive in one checkout
    together = np.einsum("nd,nd->n", emb[prod[:-1][pair]], emb[prod[1:][pair]]).mean()
    rng = np.random.default_rng(1)
    a, b = rng.choice(prod, 20_000), rng.choice(prod, 20_000)
    random = np.einsum("nd,nd->n", emb[a], emb[b]).mean()
    assert pair.sum() > 1_000
    assert together > random + 0.2, (together, random)


def test_write_events_parquet(tmp_path: Path) -> None:
    path = write_events(tmp_path / "e.parquet", 20_000, SMALL, batch_size=6_000)
    assert pq.read_table(path).equals(events_table(20_000, SMALL))
    path = write_catalog(tmp_path / "c.parquet", SMALL)
    assert pq.read_table(path).equals(catalog_table(SMALL))


def test_taste_drifts_slowly() -> None:
    gen = CommerceGenerator(SMALL)
    t0, t1, t20 = gen.taste(0), gen.taste(1), gen.taste(20)
    one = np.einsum("nd,nd->n", t0, t1).mean()
    many = np.einsum("nd,nd->n", t0, t20).mean()
    assert 0.98 < one < 1.0 and many < one
    np.testing.assert_array_equal(gen.taste(1), t1)  # going back recomputes the same walk
