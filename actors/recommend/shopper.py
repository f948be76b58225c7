"""The customer as the recommend app sees it: a taste, what they viewed, the open cart.

:class:`Customer` is an entity kind (``shoppers``) with a vectorized ``apply``. Per
customer, in arrival order:

* the **taste** - a decayed sum of the embeddings of the products they interacted
  with, weighted by what they did (view 1, add to cart 3, purchase 5; each new
  interaction keeps ``decay`` of the past), as a ``float32[64]`` state column;
* the last ``RECENT`` products seen, the last ``BOUGHT`` bought, and the **cart** of the
  current session (carted, not bought; a new session starts an empty one), as product-id
  hashes, so they survive a catalog rewritten in another order.

Each shard also learns what is carted after what, and what sells, over a sliding event
window (:mod:`actors.recommend.cooccur`), from its customers' sessions; it is saved with
every checkpoint as its own state (arrays, not pickles).

On every ``add_to_cart`` the kind publishes that customer's offers to the ``offers`` topic
(one row per event, computed with the state after the batch). ``recommend`` answers on
demand: ``Customer.ref("c42").call("recommend", k=10)`` from Python, ``GET
/v1/recommend?customer=c42&k=10`` on ``edgecore serve``; it is a batched handler, so
requests that arrive together cost one shard call and one vectorized pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from actors.grouped import by_entity
from actors.recommend.cooccur import CoOccurrence
from actors.recommend.products import CATALOG_TABLE, Products
from actors.recommend.ranker import REASONS, RankWeights, rank
from actors.recommend.rings import compact, push
from runtime import Batch, EntityKind, handler
from runtime.errors import ConfigError
from runtime.state.keys import hash_keys
from runtime.state.store import Store

DIM = 64  # taste width: the catalog's embeddings must have it
RECENT, BOUGHT, CART = 20, 8, 16
EVENT_TYPES = ("view", "add_to_cart", "purchase")
DAY_MS = 86_400_000
OFFERS_SCHEMA = pa.schema(
    [
        ("event_id", pa.int64()),
        ("customer_id", pa.string()),
        ("session_id", pa.string()),
        ("ts", pa.timestamp("ms")),
        ("offered_at", pa.timestamp("ms")),  # wall clock when computed: offer latency
        ("product_ids", pa.list_(pa.string())),
        ("scores", pa.list_(pa.float32())),
        ("reasons", pa.list_(pa.string())),
    ]
)


@dataclass(frozen=True)
class RecommendConfig:
    """Learning and serving settings of the recommend app."""

    catalog_table: str = CATALOG_TABLE
    k: int = 10  # offers per add_to_cart
    decay: float = 0.95  # share of the taste kept per new interaction
    type_weights: tuple[float, float, float] = (1.0, 3.0, 5.0)  # view, add_to_cart, purchase
    window_ms: int = 7 * DAY_MS  # co-occurrence and best sellers: the last week
    panes: int = 7
    #: lists of the in-memory index searched per query: 4 of ~sqrt(catalog) found the same
    #: hit-rate as 8 on a 1M catalog (0.0161 vs 0.0159) at half the cost
    nprobe: int = 4
    candidates: int = 40
    max_per_category: int | None = 4
    context_search: bool = True  # also search near the open cart (else: the taste only)
    weights: RankWeights = field(default_factory=RankWeights)
    offers: bool = True  # publish offers on add_to_cart

    def __post_init__(self) -> None:
        if not 0.0 < self.decay <= 1.0:
            raise ConfigError(f"decay must be in (0, 1], got {self.decay}")
        if self.k < 1 or self.candidates < self.k or self.nprobe < 1:
            raise ConfigError("k >= 1, candidates >= k and nprobe >= 1 are needed")
        if min(self.type_weights) < 0 or self.window_ms <= 0 or self.window_ms % self.panes:
            raise ConfigError("type weights >= 0; window_ms positive and a multiple of panes")


class Customer(EntityKind):
    name = "shoppers"
    key = "customer_id"
    topics = ("offers",)
    state = {
        "taste": ("float32", 0.0, DIM),
        "taste_weight": "float64",
        "recent": ("int64", 0, RECENT),  # product-id hashes, oldest first; 0: empty
        "bought": ("int64", 0, BOUGHT),
        "cart": ("int64", 0, CART),
        "cart_session": "int64",  # hash of the session the cart belongs to
        "views": "int64",
        "carts": "int64",
        "purchases": "int64",
        "last_ts": "timestamp",
    }

    def __init__(self, config: RecommendConfig | None = None) -> None:
        super().__init__(config or RecommendConfig())
        self.products: Products | None = None
        self.cooc: CoOccurrence | None = None
        self._saved_cooc: bytes | None = None

    @classmethod
    def needs(cls) -> tuple[str, ...]:
        return ("customer_id", "session_id", "event_type", "product_id", "ts")

    # -- life cycle ---------------------------------------------------------------------------
    def on_start(self, store: Store) -> None:
        cfg: RecommendConfig = self.config
        self.products = Products.load(store, cfg.catalog_table, nprobe=cfg.nprobe)
        if self.products.dim != DIM:
            raise ConfigError(
                f"the catalog's embeddings have {self.products.dim} dimensions; "
                f"the recommend app keeps {DIM}-d tastes"
            )
        self.cooc = CoOccurrence(len(self.products), cfg.window_ms, cfg.panes)
        if self._saved_cooc is not None:
            saved = CoOccurrence.from_bytes(self._saved_cooc)
            if saved.n == len(self.products):  # else the catalog changed: start afresh
                self.cooc = saved

    def shard_snapshot(self) -> bytes | None:
        return self.cooc.to_bytes() if self.cooc is not None else None

    def restore_shard(self, blob: bytes) -> None:
        self._saved_cooc = blob  # the catalog it indexes is read in on_start()

    # -- the hot path -------------------------------------------------------------------------
    def apply(self, batch: Batch) -> None:
        cfg: RecommendConfig = self.config
        prod, co = self._ready()
        ev, c = batch.events, batch.state.cols
        order, gstart = batch.order, batch.starts
        _, gsize, grp, rank_, gslot = by_entity(batch)
        etype = _codes(ev.column("event_type"))[order]
        ph = hash_keys(ev.column("product_id"))[order].view(np.int64)
        prow = prod.rows(ev.column("product_id"))[order]
        known = (prow >= 0) & (etype >= 0)
        ts = ev.column("ts").cast(pa.timestamp("ms")).cast(pa.int64()).to_numpy()[order]
        sess = hash_keys(ev.column("session_id"))[order].view(np.int64)

        # taste: each interaction adds its weighted embedding; the past decays per event
        w = np.where(known, np.asarray(cfg.type_weights)[np.maximum(etype, 0)], 0.0)
        f = w * cfg.decay ** (gsize[grp] - 1 - rank_)
        emb = prod.index.vector(np.maximum(prow, 0)) * f[:, None].astype(np.float32)
        keep = cfg.decay**gsize
        c["taste"][gslot] = c["taste"][gslot] * keep[:, None].astype(np.float32) + (
            np.add.reduceat(emb, gstart)
        )
        c["taste_weight"][gslot] = c["taste_weight"][gslot] * keep + np.add.reduceat(f, gstart)

        # what they saw and bought lately
        c["recent"][gslot] = push(c["recent"][gslot], ph, known, grp, gstart)
        bought = known & (etype == 2)
        c["bought"][gslot] = push(c["bought"][gslot], ph, bought, grp, gstart)
        carted = known & (etype == 1)
        self._carts(batch, ph, prow, ts, sess, carted, bought, grp, gstart, gsize, gslot, co)
        co.add_purchases(prow[bought], ts[bought])
        co.add_interest(prow[known], ts[known], w[known])
        co.advance(int(ts.max()))
        for name, code in (("views", 0), ("carts", 1), ("purchases", 2)):
            c[name][gslot] += np.add.reduceat((etype == code).astype(np.int64), gstart)
        c["last_ts"][gslot] = np.maximum(c["last_ts"][gslot], np.maximum.reduceat(ts, gstart))
        batch.count("unknown_products", int(((prow < 0) & (etype >= 0)).sum()))
        if cfg.offers and carted.any():
            self._offers(batch, order, carted, grp, gslot, prow)

    def _carts(
        self,
        batch: Batch,
        ph: np.ndarray,
        prow: np.ndarray,
        ts: np.ndarray,
        sess: np.ndarray,
        carted: np.ndarray,
        bought: np.ndarray,
        grp: np.ndarray,
        gstart: np.ndarray,
        gsize: np.ndarray,
        gslot: np.ndarray,
        co: CoOccurrence,
    ) -> None:
        """The open cart of each customer's latest session, and the pairs "carted after"."""
        c = batch.state.cols
        old_sess = c["cart_session"][gslot]
        old_cart = c["cart"][gslot]
        # pairs: each cart add after the adds before it in its session (in this batch)...
        adds = np.flatnonzero(carted)
        a_parts, b_parts, t_parts = [], [], []
        for lag in range(1, min(CART, len(adds))):
            i, j = adds[lag:], adds[:-lag]
            same = sess[i] == sess[j]
            a_parts.append(prow[j[same]])
            b_parts.append(prow[i[same]])
            t_parts.append(ts[i[same]])
        # ...and after what was already in the cart when the batch came, same session
        cont = sess[adds] == old_sess[grp[adds]]
        if cont.any():
            rows = adds[cont]
            held = old_cart[grp[rows]]
            before = np.where(held != 0, self.products.rows_of_hash(held), -1)
            ok = before >= 0
            a_parts.append(before[ok])
            b_parts.append(np.repeat(prow[rows], ok.sum(axis=1)))
            t_parts.append(np.repeat(ts[rows], ok.sum(axis=1)))
        if a_parts:
            co.add_pairs(np.concatenate(a_parts), np.concatenate(b_parts), np.concatenate(t_parts))
        # the cart: the latest session's adds, less what was bought in it
        last = sess[gstart + gsize - 1]
        in_last = sess == last[grp]
        start = np.where(old_sess == last, 0, 1).astype(bool)  # a new session: an empty cart
        cart = np.where(start[:, None], 0, old_cart)
        cart = push(cart, ph, carted & in_last, grp, gstart)
        paid = push(np.zeros((len(gslot), CART), np.int64), ph, bought & in_last, grp, gstart)
        gone = ((cart[:, :, None] == paid[:, None, :]) & (paid[:, None, :] != 0)).any(axis=2)
        c["cart"][gslot] = compact(np.where(gone, 0, cart))
        c["cart_session"][gslot] = last

    def _offers(
        self,
        batch: Batch,
        order: np.ndarray,
        carted: np.ndarray,
        grp: np.ndarray,
        gslot: np.ndarray,
        prow: np.ndarray,
    ) -> None:
        """One ``offers`` row per add_to_cart event, from its customer's state after the
        batch, never offering the product that event carted (a session that ended later in
        the batch leaves the cart empty)."""
        rows = np.flatnonzero(carted)
        groups, inv = np.unique(grp[rows], return_inverse=True)
        offers = self._rank(batch.state.cols, gslot[groups], self.config.k)
        src = pa.array(order[rows])
        ev = batch.events
        ids, scores, reasons = self._lists(offers, inv, drop=prow[rows])
        now = int(time.time() * 1000)
        batch.emit(
            "offers",
            pa.table(
                {
                    "event_id": ev.column("event_id").take(src),
                    "customer_id": ev.column("customer_id").take(src),
                    "session_id": ev.column("session_id").take(src),
                    "ts": ev.column("ts").take(src).cast(pa.timestamp("ms")),
                    "offered_at": pa.array(np.full(len(rows), now), pa.timestamp("ms")),
                    "product_ids": ids,
                    "scores": scores,
                    "reasons": reasons,
                },
                schema=OFFERS_SCHEMA,
            ),
        )
        batch.count("offers_rows", len(rows))

    # -- serving ------------------------------------------------------------------------------
    @handler(batched=True)
    def recommend(self, state, slots: np.ndarray, k: int = 10) -> list[dict]:  # noqa: ANN001
        """The customer's top ``k`` offers now: ``{"product_ids", "scores", "reasons"}``
        (a customer never seen gets the best sellers)."""
        k = int(k)
        if not 1 <= k <= 100:
            raise ConfigError(f"k must be between 1 and 100, got {k}")
        self._ready()
        offers = self._rank(state.cols, slots, k)
        ids, scores, reasons = self._lists(offers, np.arange(len(slots)))
        return [
            {"product_ids": i, "scores": s, "reasons": r}
            for i, s, r in zip(
                ids.to_pylist(), scores.to_pylist(), reasons.to_pylist(), strict=True
            )
        ]

    def _rank(self, cols: dict[str, np.ndarray], slots: np.ndarray, k: int):  # noqa: ANN202
        """Offers for entity ``slots`` (-1: unknown customer, empty state)."""
        cfg: RecommendConfig = self.config
        prod = self.products
        known = slots >= 0
        s = np.maximum(slots, 0)

        def hashed(name: str) -> np.ndarray:
            h = np.where(known[:, None], cols[name][s], 0)
            return np.where(h != 0, prod.rows_of_hash(h), -1)

        taste = np.where(known[:, None], cols["taste"][s], 0.0).astype(np.float32)
        return rank(
            prod,
            self.cooc,
            taste,
            hashed("recent"),
            hashed("cart"),
            hashed("bought"),
            k,
            cfg.weights,
            cfg.candidates,
            cfg.max_per_category,
            cfg.context_search,
        )

    def _lists(
        self,
        offers,  # noqa: ANN001
        inv: np.ndarray,
        drop: np.ndarray | None = None,
    ) -> tuple[pa.Array, pa.Array, pa.Array]:
        """Offers as list columns, row ``inv[i]`` of ``offers`` for output row ``i``
        (without catalog row ``drop[i]``)."""
        rows = offers.rows[inv]
        valid = rows >= 0
        if drop is not None:
            valid &= rows != drop[:, None]
        counts = valid.sum(axis=1)
        offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
        ids = self.products.ids.take(pa.array(rows[valid]))
        scores = pa.array(offers.scores[inv][valid].astype(np.float32))
        reasons = pa.array(REASONS).take(pa.array(offers.reasons[inv][valid]))
        return (
            pa.ListArray.from_arrays(offsets, ids),
            pa.ListArray.from_arrays(offsets, scores),
            pa.ListArray.from_arrays(offsets, reasons),
        )

    def _ready(self) -> tuple[Products, CoOccurrence]:
        if self.products is None or self.cooc is None:
            raise ConfigError("the recommend kind has no catalog: its shard did not open it")
        return self.products, self.cooc

    def export(self, table: pa.Table) -> pa.Table:
        """Stored profiles also name the products of the cart and the rings (the state
        keeps their hashes), so SQL over ``shoppers`` reads them."""
        if self.products is None or table.num_rows == 0:
            return table
        for col in ("cart", "recent", "bought"):
            h = table.column(col).combine_chunks().flatten().to_numpy(zero_copy_only=False)
            h = h.reshape(table.num_rows, -1)
            rows = np.where(h != 0, self.products.rows_of_hash(h), -1)
            valid = rows >= 0
            offsets = np.concatenate([[0], np.cumsum(valid.sum(axis=1))]).astype(np.int32)
            ids = self.products.ids.take(pa.array(rows[valid]))
            table = table.append_column(
                f"{col}_products", pa.ListArray.from_arrays(pa.array(offsets), ids)
            )
        return table


def _codes(types: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """0 view, 1 add_to_cart, 2 purchase, -1 anything else."""
    idx = pc.index_in(types, value_set=pa.array(EVENT_TYPES))
    return idx.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
