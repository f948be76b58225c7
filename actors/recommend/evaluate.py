"""Hit-rate@k of next-purchase recommendations, and the two baselines to beat.

The protocol: learn from the stream up to event ``cut``; for every customer who buys in
a session that *starts* after the cut, the target is the first product bought in such a
session (a session running at the cut is left out: its cart would give it away). A
recommender, asked once at the cut, scores a hit if the target is among its ``k``.

The baselines see the same training events and are asked at the same moment:

* **popularity** - the ``k`` best sellers of the last window before the cut (in stock);
* **co-occurrence** - pure item-to-item: what is carted after the customer's last three
  products in the training sessions of everyone (``P(b | a)`` summed), the best sellers
  after that. It learns from the whole stream at once (the app's shards each see only
  their own customers), so it is a strong baseline, not a straw man.

>>> from actors.recommend.catalog import CommerceConfig
>>> from actors.recommend.generator import events_table
>>> ev = events_table(30_000, CommerceConfig(n_products=3_000, n_customers=400, n_themes=40))
>>> t = targets(ev, 20_000)
>>> t.column_names, t.num_rows > 50
(['customer_id', 'product_id'], True)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from actors.recommend.cooccur import CoOccurrence
from actors.recommend.products import Products

DAY_MS = 86_400_000


def targets(events: pa.Table, cut: int) -> pa.Table:
    """Each customer's first purchase in a session that starts at or after event ``cut``."""
    after = events.filter(pc.greater_equal(events["event_id"], cut))
    first = after.group_by("session_id").aggregate([("event_id", "min")])
    started = pc.is_in(
        after["session_id"],
        value_set=first.filter(
            pc.is_in(
                first["session_id"],
                value_set=_sessions_starting_after(events, cut),
            )
        )["session_id"],
    )
    buys = after.filter(pc.and_(started, pc.equal(after["event_type"], "purchase")))
    buys = buys.take(pc.sort_indices(buys, [("event_id", "ascending")]))
    cust = buys["customer_id"].to_numpy(zero_copy_only=False)
    _, first_idx = np.unique(cust, return_index=True)
    first_idx.sort()
    return buys.take(pa.array(first_idx)).select(["customer_id", "product_id"])


def _sessions_starting_after(events: pa.Table, cut: int) -> pa.Array:
    """Sessions whose first event (in ``events``) is at or after ``cut``."""
    start = events.group_by("session_id").aggregate([("event_id", "min")])
    return start.filter(pc.greater_equal(start["event_id_min"], cut))["session_id"]


def hit_rate(recommended: Sequence[Sequence[str]], wanted: Sequence[str]) -> float:
    """Share of ``wanted`` products found in the matching list of ``recommended``."""
    if not wanted:
        return 0.0
    hits = sum(w in set(r) for r, w in zip(recommended, wanted, strict=True))
    return hits / len(wanted)


def learn(
    products: Products, train: pa.Table, window_ms: int = 7 * DAY_MS, panes: int = 7
) -> CoOccurrence:
    """Co-occurrence and best sellers of ``train`` (all customers at once), by the app's
    definition: a cart add pairs with the adds before it in its session."""
    co = CoOccurrence(len(products), window_ms, panes)
    ev = train.take(
        pc.sort_indices(train, [("session_id", "ascending"), ("event_id", "ascending")])
    )
    rows = products.rows(ev["product_id"])
    ts = ev["ts"].cast(pa.timestamp("ms")).cast(pa.int64()).to_numpy()
    kind = ev["event_type"].to_numpy(zero_copy_only=False)
    sess = ev["session_id"].to_numpy(zero_copy_only=False)
    adds = np.flatnonzero((kind == "add_to_cart") & (rows >= 0))
    for lag in range(1, 16):
        i, j = adds[lag:], adds[:-lag]
        same = sess[i] == sess[j]
        co.add_pairs(rows[j[same]], rows[i[same]], ts[i[same]])
    buys = (kind == "purchase") & (rows >= 0)
    co.add_purchases(rows[buys], ts[buys])
    co.advance(int(ts.max()))
    return co


def popularity_baseline(products: Products, co: CoOccurrence, k: int) -> list[str]:
    """The ``k`` best sellers in stock."""
    rows, _ = co.popular(4 * k + 64)
    rows = rows[products.in_stock(rows)][:k]
    return products.ids.take(pa.array(rows)).to_pylist()


def cooccurrence_baseline(
    products: Products, co: CoOccurrence, train: pa.Table, customers: Sequence[str], k: int
) -> list[list[str]]:
    """For each customer: what follows their last three products, then best sellers."""
    ev = train.take(pc.sort_indices(train, [("event_id", "ascending")]))
    rows = products.rows(ev["product_id"])
    who = ev["customer_id"].to_numpy(zero_copy_only=False)
    order = np.lexsort((np.arange(len(who)), who))  # by customer, event order kept
    w = who[order]
    last = np.flatnonzero(np.r_[w[1:] != w[:-1], True])
    recent: dict[str, np.ndarray] = {}
    first = np.r_[0, last[:-1] + 1]
    for a, b in zip(first.tolist(), last.tolist(), strict=True):
        recent[w[a]] = rows[order[max(a, b - 2) : b + 1]]
    popular = popularity_baseline(products, co, k)
    out = []
    for c in customers:
        got, _ = co.successors(recent.get(c, np.zeros(0, np.int64)), 4 * k)
        got = got[products.in_stock(got)][:k]
        ids = products.ids.take(pa.array(got)).to_pylist()
        out.append((ids + [p for p in popular if p not in ids])[:k])
    return out
