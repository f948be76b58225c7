"""Offers for many customers at once: candidates from four places, one score, filters.

For each customer (a row of the inputs):

* **taste** - the nearest in-stock products to the customer's taste vector (vector search);
* **cart** - the nearest to the products in the open cart (vector search; the cart's
  mean embedding, or the last few viewed when there is no cart, also scores every
  candidate as the "context");
* **bought together** - what is carted after the context's products (co-occurrence);
* **viewed** - what they looked at lately and have not bought;
* **popular** - the window's best sellers (what a new customer gets).

Each candidate is scored ``w . (cos(taste), cos(context), P(co-occurrence),
popularity, viewed)`` and the best ``k`` kept, after the filters: in stock, not in the
cart, not just bought, and at most ``max_per_category`` from one category. Every offer
says which of the five weighed most in its score (its reason).

All of it is vectorized over the customers: two batched vector searches, then arrays
of (customers x candidates).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from actors.recommend.cooccur import CoOccurrence
from actors.recommend.products import Products
from runtime.errors import ConfigError

REASONS = ("taste", "context", "bought_together", "viewed", "popular")


@dataclass(frozen=True)
class RankWeights:
    """How much each signal counts in an offer's score (cosines and shares are in [0, 1])."""

    taste: float = 1.0
    context: float = 0.6
    cooccurrence: float = 1.0
    popularity: float = 1.0
    viewed: float = 0.1

    def __post_init__(self) -> None:
        if min(self.taste, self.context, self.cooccurrence, self.popularity, self.viewed) < 0:
            raise ConfigError("rank weights must be >= 0")

    def vector(self) -> np.ndarray:
        return np.array(
            [self.taste, self.context, self.cooccurrence, self.viewed, self.popularity],
            np.float32,
        )


@dataclass
class Offers:
    """``rows`` (customers x k, catalog rows, -1 pads), their ``scores`` and ``reasons``
    (indices into :data:`REASONS`)."""

    rows: np.ndarray
    scores: np.ndarray
    reasons: np.ndarray


def rank(
    products: Products,
    cooc: CoOccurrence,
    taste: np.ndarray,
    recent: np.ndarray,
    cart: np.ndarray,
    bought: np.ndarray,
    k: int,
    weights: RankWeights = RankWeights(),  # noqa: B008 (frozen)
    candidates: int = 40,
    max_per_category: int | None = None,
    context_search: bool = True,
) -> Offers:
    """Offers for each row of ``taste`` (q x dim; zero: unknown) given catalog rows of what
    each customer viewed lately (``recent``, oldest first), has in the cart and bought
    lately (``-1`` pads)."""
    q = len(taste)
    index = products.index
    exclude = np.concatenate([cart, bought], axis=1)
    # what the customer is doing now: the cart, else the last three viewed
    has_cart = (cart >= 0).any(axis=1)
    ctx = np.where(has_cart[:, None], _last(cart, 3), recent[:, -3:])
    ctx_vec = _mean_vectors(products, ctx)
    t_unit = _unit(taste)
    # one search for both: the taste of everyone, the cart of those who have one (near
    # the last viewed added nothing to the hit-rate: they are candidates themselves)
    carts = np.flatnonzero(has_cart) if context_search else np.zeros(0, np.int64)
    both, _ = index.search(
        np.concatenate([t_unit, ctx_vec[carts]]),
        candidates,
        exclude=np.concatenate([exclude, exclude[carts]]),
    )
    t_ids = both[:q]
    c_ids = np.full((q, candidates // 2), -1, np.int64)
    c_ids[carts] = both[q:, : candidates // 2]
    pop_rows, _ = cooc.popular(candidates)
    co = [
        cooc.successors(np.concatenate([ctx[i], _last(recent[i : i + 1], 3)[0]]), candidates)
        for i in range(q)
    ]
    co_rows = _padded([r for r, _ in co], candidates)
    co_p = _padded([p for _, p in co], candidates, fill=0.0).astype(np.float32)
    cand = np.concatenate(
        [t_ids, c_ids, co_rows, recent, np.broadcast_to(pop_rows, (q, len(pop_rows)))], axis=1
    )
    cand = _dedupe(cand)
    valid = cand >= 0
    rows = np.maximum(cand, 0)
    valid &= products.in_stock(rows) & ~_isin_rows(cand, exclude)
    vec = index.vector(rows.ravel()).reshape(q, cand.shape[1], -1)
    feats = np.zeros((5, q, cand.shape[1]), np.float32)
    feats[0] = np.clip(np.einsum("qcd,qd->qc", vec, t_unit), 0, None)
    feats[1] = np.clip(np.einsum("qcd,qd->qc", vec, ctx_vec), 0, None)
    feats[2] = _lookup(cand, co_rows, co_p)
    feats[3] = _isin_rows(cand, recent)
    feats[4] = np.where(valid, cooc.appeal(rows), 0.0)
    contrib = feats * weights.vector()[:, None, None]
    score = np.where(valid, contrib.sum(axis=0), -np.inf)
    if max_per_category is not None:
        score = _cap_categories(score, products.category[rows], max_per_category)
    best = np.argsort(-score, axis=1, kind="stable")[:, :k]
    top_s = np.take_along_axis(score, best, axis=1)
    ok = np.isfinite(top_s)
    out_rows = np.where(ok, np.take_along_axis(cand, best, axis=1), -1)
    why = np.argmax(np.take_along_axis(contrib, best[None].repeat(5, 0), axis=2), axis=0)
    if out_rows.shape[1] < k:
        pad = ((0, 0), (0, k - out_rows.shape[1]))
        out_rows = np.pad(out_rows, pad, constant_values=-1)
        top_s = np.pad(top_s, pad, constant_values=-np.inf)
        why = np.pad(why, pad)
    return Offers(out_rows, np.where(ok, top_s, np.nan)[:, :k], why)


# -- helpers ------------------------------------------------------------------------------------
def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-12))


def _last(rows: np.ndarray, m: int) -> np.ndarray:
    """The last ``m`` valid entries of each row (left-padded rings: valid ones at the end)."""
    return rows[:, -m:]


def _mean_vectors(products: Products, rows: np.ndarray) -> np.ndarray:
    """Unit mean of the vectors of each row's valid catalog rows (zero if none)."""
    vec = products.index.vector(np.maximum(rows, 0).ravel()).reshape(*rows.shape, -1)
    return _unit((vec * (rows >= 0)[..., None]).sum(axis=1))


def _padded(parts: list[np.ndarray], width: int, fill: float = -1) -> np.ndarray:
    out = np.full((len(parts), width), fill, np.float64 if fill != -1 else np.int64)
    for i, p in enumerate(parts):
        out[i, : len(p)] = p[:width]
    return out


def _dedupe(cand: np.ndarray) -> np.ndarray:
    """Each row's repeats set to -1 (the first occurrence kept)."""
    order = np.argsort(cand, axis=1, kind="stable")
    s = np.take_along_axis(cand, order, axis=1)
    dup = np.zeros_like(s, bool)
    dup[:, 1:] = s[:, 1:] == s[:, :-1]
    out = cand.copy()
    np.put_along_axis(out, order, np.where(dup, -1, s), axis=1)
    return out


def _isin_rows(cand: np.ndarray, sets: np.ndarray) -> np.ndarray:
    """Per row: which candidates are among that row's ``sets`` entries (-1 never matches)."""
    return _lookup(cand, sets, np.ones(sets.shape, np.float32)) > 0


def _lookup(cand: np.ndarray, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per row: the value of each candidate in that row's (keys -> values), else 0; by one
    sort of (row, key) codes and a binary search, not a (rows x candidates x keys) cube."""
    out = np.zeros(cand.shape, np.float32)
    has = keys >= 0
    if keys.size == 0 or not has.any():
        return out
    span = int(max(cand.max(initial=0), keys.max(initial=0))) + 1
    row = np.arange(len(cand), dtype=np.int64)[:, None] * span
    codes = (row + keys)[has]
    vals = values[has]
    order = np.argsort(codes, kind="stable")
    codes, vals = codes[order], vals[order]
    want = row + cand
    at = np.minimum(np.searchsorted(codes, want), len(codes) - 1)
    hit = (codes[at] == want) & (cand >= 0)
    out[hit] = vals[at[hit]]
    return out


def _cap_categories(score: np.ndarray, category: np.ndarray, cap: int) -> np.ndarray:
    """Scores of candidates beyond the ``cap`` best of their category in a row: -inf."""
    order = np.argsort(-score, axis=1, kind="stable")
    cat_sorted = np.take_along_axis(category, order, axis=1)
    # rank of each candidate within its category, in score order
    key = cat_sorted * score.shape[1] + np.arange(score.shape[1])
    by_cat = np.argsort(key, axis=1, kind="stable")
    cs = np.take_along_axis(cat_sorted, by_cat, axis=1)
    first = np.ones_like(cs, bool)
    first[:, 1:] = cs[:, 1:] != cs[:, :-1]
    start = np.maximum.accumulate(np.where(first, np.arange(cs.shape[1]), 0), axis=1)
    within = np.arange(cs.shape[1]) - start
    rank_sorted = np.empty_like(within)
    np.put_along_axis(rank_sorted, by_cat, within, axis=1)
    capped = np.take_along_axis(score, order, axis=1)
    capped = np.where(rank_sorted >= cap, -np.inf, capped)
    out = np.empty_like(score)
    np.put_along_axis(out, order, capped, axis=1)
    return out
