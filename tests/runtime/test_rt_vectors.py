"""runtime.state.vectors: ANN recall against brute force, filters, exclusions, upserts, errors."""

from __future__ import annotations

import doctest
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import runtime.state.vectors as vectors_module
from actors.recommend.catalog import CommerceConfig, catalog_table
from runtime.errors import ConfigError, EdgecoreError
from runtime.state.store import Store
from runtime.state.vectors import VectorTable

DIM = 32


@pytest.fixture(scope="module")
def catalog() -> pa.Table:
    return catalog_table(CommerceConfig(n_products=20_000, n_themes=100, dim=DIM))


@pytest.fixture(scope="module")
def indexed(catalog: pa.Table, tmp_path_factory: pytest.TempPathFactory) -> VectorTable:
    """The 20k catalog with its ANN index and scalar indexes (built once: ~2 s)."""
    vt = VectorTable(Store(tmp_path_factory.mktemp("vec")), "products", key="product_id")
    vt.write(catalog, mode="overwrite")
    vt.build_index(filters=["category", "stock"])
    return vt


def embeddings(table: pa.Table) -> np.ndarray:
    return table.column("embedding").combine_chunks().flatten().to_numpy().reshape(-1, DIM)


def queries(emb: np.ndarray, n: int, seed: int = 1) -> np.ndarray:
    """Queries near catalog products (like a customer's taste), unit norm."""
    rng = np.random.default_rng(seed)
    q = emb[rng.integers(0, len(emb), n)] + 0.1 * rng.standard_normal((n, DIM), np.float32)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def test_doctests() -> None:
    assert doctest.testmod(vectors_module).failed == 0


def test_ann_recall_at_10_against_brute_force(catalog: pa.Table, indexed: VectorTable) -> None:
    idx = [i.index_type for i in indexed.store.table("products").list_indices()]
    assert "IvfPq" in idx  # 20k rows: above BRUTE_FORCE_ROWS, so searched through the index
    emb = embeddings(catalog)
    q = queries(emb, 200)
    truth = np.argsort(-(q @ emb.T), axis=1)[:, :10]
    ids = np.array(catalog.column("product_id").to_pylist())
    res = indexed.search(q, k=10)
    assert [r.num_rows for r in res] == [10] * len(q)
    recall = np.mean(
        [
            len(set(r.column("product_id").to_pylist()) & set(ids[t])) / 10
            for r, t in zip(res, truth, strict=True)
        ]
    )
    assert recall >= 0.9
    # scores are cosine similarities, best first, and match numpy's
    s = res[0].column("score").to_numpy()
    assert np.all(np.diff(s) <= 1e-6)
    assert s[0] == pytest.approx(float(q[0] @ emb[truth[0, 0]]), abs=1e-3)


def test_filter_and_exclusions_are_honoured(catalog: pa.Table, indexed: VectorTable) -> None:
    emb = embeddings(catalog)
    q = queries(emb, 20, seed=2)
    res = indexed.search(q, k=10, where="stock > 0", columns=["stock", "category"])
    assert all(r.num_rows == 10 for r in res)
    assert all(min(r.column("stock").to_pylist()) > 0 for r in res)
    res = indexed.search(q, k=10, where="category = 'books' AND stock > 0", columns=["category"])
    assert all(r.num_rows == 10 and set(r.column("category").to_pylist()) == {"books"} for r in res)
    # exclusions: drop each query's own top-5 (a different count per query); k still comes back
    first = indexed.search(q, k=5)
    exclude = [r.column("product_id").to_pylist()[: i % 6] for i, r in enumerate(first)]
    res = indexed.search(q, k=10, where="stock > 0", exclude=exclude, columns=["stock"])
    for r, ex in zip(res, exclude, strict=True):
        got = r.column("product_id").to_pylist()
        assert len(got) == 10 and not set(got) & set(ex)


def test_fewer_matches_than_k(indexed: VectorTable) -> None:
    res = indexed.search(np.ones((2, DIM), np.float32), k=10, where="product_id IN ('p1', 'p2')")
    assert [sorted(r.column("product_id").to_pylist()) for r in res] == [["p1", "p2"]] * 2


def test_upsert_is_seen_by_search_before_and_after_reindex(
    catalog: pa.Table, tmp_path: Path
) -> None:
    vt = VectorTable(Store(tmp_path), "products", key="product_id")
    vt.write(catalog, mode="overwrite")
    vt.build_index(filters=["stock"])
    target = np.zeros(DIM, np.float32)
    target[0] = 1.0  # a direction no product is closest to on its own
    row = catalog.slice(123, 1).drop_columns(["embedding"])
    moved = row.append_column("embedding", pa.FixedSizeListArray.from_arrays(pa.array(target), DIM))
    vt.write(moved)  # upsert: the new vector lands in a fragment the index does not cover
    lance = vt.store.table("products")
    assert lance.count_rows() == catalog.num_rows  # replaced, not added
    assert lance.index_stats("embedding_idx").num_unindexed_rows == 1
    top = vt.search(target[None, :], k=1)[0].to_pylist()[0]
    assert top["product_id"] == "p123" and top["score"] == pytest.approx(1.0, abs=1e-4)
    vt.build_index()  # folds the tail into the index
    assert lance.index_stats("embedding_idx").num_unindexed_rows == 0
    assert vt.search(target[None, :], k=1)[0].column("product_id").to_pylist() == ["p123"]


def test_errors_are_one_line_and_of_the_project(indexed: VectorTable, tmp_path: Path) -> None:
    cases = [
        lambda: indexed.search(np.zeros((3, DIM + 1), np.float32), k=5),
        lambda: VectorTable(Store(tmp_path), "nope").search(np.zeros((1, 4), np.float32), k=1),
        lambda: indexed.search(np.ones((1, DIM), np.float32), k=5, where="nosuch > 0"),
        lambda: indexed.search(np.ones((1, DIM), np.float32), k=5, where="stock >>> 0"),
        lambda: indexed.build_index(filters=["nosuch"]),
        lambda: indexed.search(np.ones((2, DIM), np.float32), k=5, exclude=[["p1"]]),
    ]
    for case in cases:
        with pytest.raises(EdgecoreError) as err:
            case()
        assert isinstance(err.value, ConfigError), err.value
        assert "\n" not in str(err.value) and len(str(err.value)) < 300, str(err.value)
    with pytest.raises(ConfigError, match=r"shape \(n, 32\)"):
        indexed.search(np.zeros((3, DIM + 1), np.float32), k=5)
    with pytest.raises(ConfigError, match="'nope' does not exist"):
        VectorTable(Store(tmp_path), "nope").search(np.zeros((1, 4), np.float32), k=1)
