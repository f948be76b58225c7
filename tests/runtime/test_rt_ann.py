"""MemoryIndex: recall against brute force, filters that are never crossed, widening when
few rows are allowed, batch-independence, round trips and odd queries."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.errors import ConfigError
from runtime.state.ann import MemoryIndex, unit

N, DIM = 20_000, 32


@pytest.fixture(scope="module")
def world():
    """Clustered unit vectors (200 clusters), the index over them, and queries near them."""
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((200, DIM)).astype(np.float32)
    v = centres[rng.integers(0, 200, N)] + 0.35 * rng.standard_normal((N, DIM)).astype(np.float32)
    q = centres[rng.integers(0, 200, 300)] + 0.35 * rng.standard_normal((300, DIM)).astype(
        np.float32
    )
    return v, q, MemoryIndex(v, seed=0)


def brute(v: np.ndarray, q: np.ndarray, k: int, allowed: np.ndarray | None = None) -> np.ndarray:
    s = unit(q) @ unit(v).T
    if allowed is not None:
        s[:, ~allowed] = -np.inf
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def test_recall_at_10_against_brute_force(world):
    v, q, idx = world
    ids, scores = idx.search(q, k=10)
    truth = brute(v, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth, strict=True)])
    assert recall >= 0.95, recall
    # scores are the cosines of the rows returned, best first
    want = np.einsum("qkd,qd->qk", unit(v)[ids], unit(q))
    np.testing.assert_allclose(scores, want, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()


def test_allowed_mask_and_exclusions_are_never_returned(world):
    v, q, idx = world
    rng = np.random.default_rng(1)
    allowed = rng.random(N) < 0.5
    truth = brute(v, q[:50], 10)  # unfiltered best: many of them are excluded below
    exclude = [truth[i, :5] for i in range(50)]
    ids, _ = idx.search(q[:50], k=10, allowed=allowed, exclude=exclude)
    assert (ids >= 0).all()
    assert allowed[ids].all()
    for i in range(50):
        assert not set(ids[i]) & set(exclude[i].tolist())
    # set_allowed narrows every later search; a per-search mask narrows it further
    idx.set_allowed(allowed)
    try:
        got, _ = idx.search(q[:50], k=10)
        assert allowed[got].all()
        both = allowed & (rng.random(N) < 0.5)
        got, _ = idx.search(q[:50], k=10, allowed=both)
        assert both[got].all()
    finally:
        idx.set_allowed(None)
    got, _ = idx.search(q[:50], k=10)
    assert not allowed[got].all()  # None lifts the filter again


def test_exclusions_as_a_padded_array(world):
    v, q, idx = world
    first, _ = idx.search(q[:3], k=4)
    ex = np.full((3, 6), -1, np.int64)
    ex[:, :4] = first
    again, _ = idx.search(q[:3], k=4, exclude=ex)
    assert not (again[:, :, None] == first[:, None, :]).any()
    assert (again >= 0).all()


def test_widening_finds_k_when_few_rows_are_allowed(world):
    v, q, idx = world
    rng = np.random.default_rng(2)
    allowed = np.zeros(N, bool)
    allowed[rng.choice(N, 30, replace=False)] = True
    ids, scores = idx.search(q[:20], k=10, allowed=allowed)
    assert (ids >= 0).all() and np.isfinite(scores).all()
    assert allowed[ids].all()
    assert all(len(set(r)) == 10 for r in ids.tolist())
    # widening stops once k are found (not exact); probing every list is exact
    every = len(idx.centres)
    exact, _ = idx.search(q[:20], k=10, allowed=allowed, nprobe=every)
    np.testing.assert_array_equal(exact, brute(v, q[:20], 10, allowed))
    # fewer allowed rows than k: all of them, then -1 / -inf padding
    few = np.zeros(N, bool)
    few[[5, 900, 17_000]] = True
    ids, scores = idx.search(q[:2], k=5, allowed=few)
    assert sorted(ids[0, :3].tolist()) == [5, 900, 17_000]
    assert (ids[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()


def test_a_query_alone_and_inside_a_batch_get_the_same_answer(world):
    v, q, idx = world
    batch_ids, batch_s = idx.search(q, k=10)
    for i in (0, 17, 150, 299):
        ids, s = idx.search(q[i], k=10)
        np.testing.assert_array_equal(ids[0], batch_ids[i])
        np.testing.assert_allclose(s[0], batch_s[i], rtol=1e-6, atol=1e-6)
    # with filters and exclusions too
    allowed = np.arange(N) % 3 != 0
    ex = [np.array([i, i + 1]) for i in range(len(q))]
    b_ids, _ = idx.search(q, k=10, allowed=allowed, exclude=ex)
    for i in (3, 200):
        ids, _ = idx.search(q[i : i + 1], k=10, allowed=allowed, exclude=[ex[i]])
        np.testing.assert_array_equal(ids[0], b_ids[i])


def test_arrays_round_trip(world):
    v, q, idx = world
    back = MemoryIndex.from_arrays(idx.arrays(), nprobe=idx.nprobe)
    assert len(back) == len(idx) and back.dim == idx.dim
    for a, b in zip(idx.search(q, k=10), back.search(q, k=10), strict=True):
        np.testing.assert_array_equal(a, b)
    rows = np.array([0, 5, N - 1])
    np.testing.assert_array_equal(back.vector(rows), idx.vector(rows))
    np.testing.assert_allclose(idx.vector(rows), unit(v[rows]), atol=1e-6)
    # saved and loaded as data (npz, no pickle)
    import io

    buf = io.BytesIO()
    np.savez(buf, **idx.arrays())
    with np.load(io.BytesIO(buf.getvalue()), allow_pickle=False) as z:
        loaded = MemoryIndex.from_arrays({k: z[k] for k in z.files})
    np.testing.assert_array_equal(loaded.search(q[:5], k=3)[0], idx.search(q[:5], k=3)[0])


def test_one_row_index_and_zero_vector_queries():
    one = MemoryIndex(np.ones((1, 4), np.float32))
    ids, scores = one.search(np.ones(4), k=3)
    assert ids.tolist() == [[0, -1, -1]]
    assert scores[0, 0] == pytest.approx(1.0) and np.isneginf(scores[0, 1:]).all()

    rng = np.random.default_rng(0)
    idx = MemoryIndex(rng.standard_normal((500, 8)), seed=1)
    ids, scores = idx.search(np.zeros((2, 8)), k=5)  # a customer with no taste yet
    assert ids.shape == (2, 5) and (ids >= 0).all()
    assert np.allclose(scores, 0.0)
    # k <= 0 and no queries: empty answers, not errors
    assert idx.search(np.zeros((2, 8)), k=0)[0].shape == (2, 0)
    assert idx.search(np.zeros((0, 8)), k=3)[0].shape == (0, 3)


def test_bad_shapes_are_config_errors():
    idx = MemoryIndex(np.random.default_rng(0).standard_normal((100, 8)))
    with pytest.raises(ConfigError, match="dimensions"):
        idx.search(np.zeros((1, 9)), k=3)
    with pytest.raises(ConfigError):
        MemoryIndex(np.zeros((0, 8)))
    with pytest.raises(ConfigError):
        MemoryIndex(np.zeros(8))
