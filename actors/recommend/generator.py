"""A deterministic, vectorized synthetic commerce stream for a future ``recommend`` app:
customers' sessions of product views, cart adds and purchases over the catalog of
:mod:`actors.recommend.catalog`, with the ground truth to score next-purchase recommenders.

Customers like 1-3 themes (a Dirichlet mix of theme centres plus a personal offset, so
two fans of one theme prefer different products in it); the taste takes a small random
walk step every chunk. A session is a run of viewed products: each from the session's
current theme (drawn from the customer's taste, sometimes switched), the one among a few
popularity-weighted candidates of the theme closest to the taste, or - with the customer's
popularity bias - a globally popular product. After a popular product goes into the cart
the session moves to that product's theme: its complements come next. Viewed in-stock
products are added to the cart (``cart_rate``) and carted ones bought at the session's
checkout (``buy_rate``): about 75% views, 15% cart adds and 10% purchases.

The stream is cut into fixed chunks of ``2**16`` events, each drawn from its own seeded
RNG over its own stretch of time (sessions never cross a chunk; the last one drawn is cut
short), so event ``i`` is the same whatever the batch size or the position read from, and
reading from position ``p`` costs the chunks from ``p`` on (plus the taste walk so far).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from actors.recommend.catalog import _CHUNK, CATEGORIES, Catalog, CommerceConfig, catalog_table, ids
from runtime.errors import ConfigError
from runtime.streams.sources import rebatch

__all__ = [
    "CATEGORIES",
    "EVENT_SCHEMA",
    "EVENT_TYPES",
    "CommerceConfig",
    "CommerceGenerator",
    "CommerceSource",
    "catalog_table",
    "events_table",
    "next_purchases",
    "split",
    "write_catalog",
    "write_events",
]

EVENT_SCHEMA = pa.schema(
    [
        ("event_id", pa.int64()),
        ("ts", pa.timestamp("ms")),
        ("customer_id", pa.string()),
        ("session_id", pa.string()),
        ("event_type", pa.string()),
        ("product_id", pa.string()),
        ("category", pa.string()),
        ("price", pa.float64()),
        ("quantity", pa.int64()),
    ]
)
EVENT_TYPES = ("view", "add_to_cart", "purchase")
_THEME_TEMP = 0.07  # softmax temperature of theme choice: mostly the customer's own themes
_ITEM_TEMP = 0.05  # temperature of the pick among a theme's candidates: taste matters
_CANDIDATES = 8  # popularity-weighted candidates per theme pick
_TASTE_NOISE = 0.5  # norm of the personal offset in a customer's taste
_MAX_SLOTS = 40
_GAP_S = np.array([25.0, 8.0, 1.0])  # mean seconds before a view, a cart add, a purchase


class CommerceGenerator:
    """The catalog, the customers and the event stream of a :class:`CommerceConfig`.

    >>> gen = CommerceGenerator(CommerceConfig(n_products=2_000, n_customers=300, n_themes=40))
    >>> batches = list(gen.batches(1_000, batch_size=400, first_event_id=65_000))
    >>> [b.num_rows for b in batches], batches[0].schema == EVENT_SCHEMA
    ([400, 400, 200], True)
    >>> batches[0].column("event_id")[0].as_py(), batches[-1].column("event_id")[-1].as_py()
    (65000, 65999)
    """

    def __init__(self, config: CommerceConfig = CommerceConfig()) -> None:  # noqa: B008 (frozen)
        self.config = cfg = config
        self.catalog = cat = Catalog(cfg)
        n = cfg.n_customers
        rng = np.random.default_rng([cfg.seed, 2])
        start = cfg.start if cfg.start.tzinfo else cfg.start.replace(tzinfo=UTC)
        self._start_ms = round(start.timestamp() * 1000)
        # activity: Zipf over shuffled ranks, mild (offset n/50): regulars, not bots
        act = (rng.permutation(n) + max(1.0, n / 50)) ** -1.0
        self._act_cdf = np.cumsum(act) / act.sum()
        # taste: a Dirichlet mix of 1-3 themes (popular themes more often) + a personal offset
        k = rng.integers(1, 4, n)
        themes = rng.choice(cfg.n_themes, (n, 3), p=cat.theme_weight)
        mix = rng.dirichlet(np.full(3, 2.0), n) * (np.arange(3) < k[:, None])
        self.themes, self.theme_mix = themes, (mix / mix.sum(1, keepdims=True)).astype(np.float32)
        offset = rng.standard_normal((n, cfg.dim), np.float32) * (_TASTE_NOISE / cfg.dim**0.5)
        self._base = np.einsum("nk,nkd->nd", self.theme_mix, cat.centres[themes]) + offset
        # popularity bias: Beta with mean cfg.popularity_bias
        m = min(max(cfg.popularity_bias, 1e-6), 1 - 1e-6)
        self.pop_bias = rng.beta(2.0, 2.0 * (1 - m) / m, n)
        self.customer_ids = ids("c", np.arange(n))
        self._walk = (0, np.zeros_like(self._base))  # (chunk, sum of steps before it)

    def taste(self, chunk: int) -> np.ndarray:
        """Unit taste vectors of all customers during ``chunk``: the base plus the random
        walk's steps of chunks ``0..chunk-1``, cached so reading forward costs one step."""
        at, walk = self._walk
        if chunk < at:
            at, walk = 0, np.zeros_like(self._base)
        scale = self.config.drift_step / self.config.dim**0.5  # float: keeps float32
        for j in range(at, chunk):
            step = np.random.default_rng([self.config.seed, 3, j]).standard_normal(
                walk.shape, np.float32
            )
            walk = walk + scale * step
        self._walk = (chunk, walk)
        t = self._base + walk
        return t / np.linalg.norm(t, axis=1, keepdims=True)

    def batches(
        self, n_events: int, batch_size: int = 50_000, first_event_id: int = 0
    ) -> Iterator[pa.RecordBatch]:
        """Yield events ``first_event_id .. first_event_id + n_events - 1`` of the stream in
        batches of ``batch_size`` (the last may be shorter); ``ts`` never decreases."""
        if n_events < 0 or batch_size < 1 or first_event_id < 0:
            raise ConfigError("n_events and first_event_id must be >= 0, batch_size >= 1")
        end = first_event_id + n_events

        def chunks() -> Iterator[pa.RecordBatch]:
            for k in range(first_event_id // _CHUNK, -(-end // _CHUNK)):
                lo = max(first_event_id - k * _CHUNK, 0)
                yield self._chunk(k).slice(lo, min(end - k * _CHUNK, _CHUNK) - lo)

        yield from rebatch(chunks(), batch_size)

    def _sessions(
        self, rng: np.random.Generator, n_sess: int, taste: np.ndarray
    ) -> tuple[np.ndarray, ...]:
        """Draw ``n_sess`` sessions; per event: session, order key in it, product, type, qty."""
        cfg, cat = self.config, self.catalog
        cust = np.minimum(
            np.searchsorted(self._act_cdf, rng.random(n_sess)), len(self._act_cdf) - 1
        )
        m = np.minimum(rng.geometric(1.0 / cfg.mean_slots, n_sess), _MAX_SLOTS)
        sess = np.repeat(np.arange(n_sess), m)
        slot = np.arange(len(sess)) - np.repeat(np.cumsum(m) - m, m)
        n = len(sess)
        who = cust[sess]
        product = np.zeros(n, np.int64)
        popular = rng.random(n) < self.pop_bias[who]
        product[popular] = cat.sample_popular(rng.random(int(popular.sum())))
        cart = (rng.random(n) < cfg.cart_rate) & (cat.stock[product] > 0)
        # theme of each slot: set at the session start and at switches (from the taste), and
        # after a popular product went into the cart (its theme: complements come next)
        follow = np.zeros(n, bool)
        follow[1:] = (popular & cart)[:-1] & (slot[1:] > 0)
        fresh = ((slot == 0) | (rng.random(n) < cfg.switch_rate)) & ~follow
        theme = np.zeros(n, np.int64)
        theme[fresh] = self._draw_themes(rng, taste[cust], sess[fresh])
        theme[follow] = cat.theme[product[np.flatnonzero(follow) - 1]]
        theme = theme[np.maximum.accumulate(np.where(fresh | follow, np.arange(n), 0))]
        # a theme pick: the candidate nearest the taste, with Gumbel noise (a softmax draw)
        pick = np.flatnonzero(~popular)
        cand = cat.sample_in_theme(theme[pick, None], rng.random((len(pick), _CANDIDATES)))
        mine = taste[who[pick]] * np.float32(1 / _ITEM_TEMP)
        score = rng.gumbel(size=cand.shape).astype(np.float32)
        for j in range(_CANDIDATES):  # column by column: no (picks, candidates, dim) array
            score[:, j] += np.einsum("pd,pd->p", cat.embedding[cand[:, j]], mine)
        product[pick] = cand[np.arange(len(pick)), score.argmax(1)]
        cart[pick] = (rng.random(len(pick)) < cfg.cart_rate) & (cat.stock[product[pick]] > 0)
        buy = cart & (rng.random(n) < cfg.buy_rate)
        qty = 1 + (rng.random(n) < 0.12) + (rng.random(n) < 0.04)
        # views and cart adds in slot order, then the purchases at checkout
        c, b = np.flatnonzero(cart), np.flatnonzero(buy)
        return (
            np.concatenate([sess, sess[c], sess[b]]),
            np.concatenate([2 * slot, 2 * slot[c] + 1, 2 * _MAX_SLOTS + slot[b]]),
            np.concatenate([product, product[c], product[b]]),
            np.repeat(np.arange(3), [n, len(c), len(b)]),
            np.concatenate([np.ones(n, np.int64), qty[c], qty[b]]),
            cust,
        )

    def _draw_themes(
        self, rng: np.random.Generator, taste: np.ndarray, rows: np.ndarray
    ) -> np.ndarray:
        """A theme for each of ``rows`` (indices into ``taste``: one row per session, as a
        session's draws share its customer) by softmax(taste . centre / T), with one flat
        searchsorted over the rows' CDFs laid end to end (row + CDF is monotonic)."""
        logits = (taste @ self.catalog.centres.T) * np.float32(1 / _THEME_TEMP)
        p = np.exp(logits - logits.max(1, keepdims=True))
        cdf = np.cumsum(p, axis=1)
        cdf /= cdf[:, -1:]
        n_themes = cdf.shape[1]
        flat = (np.arange(len(taste))[:, None] + np.minimum(cdf, 1.0 - 1e-6)).ravel()
        pos = np.searchsorted(flat, rows + rng.random(len(rows)), side="right")
        return np.minimum(pos - rows * n_themes, n_themes - 1)

    def _chunk(self, k: int) -> pa.RecordBatch:
        """Events ``k * 2**16 ..`` of the stream: one chunk, from its own RNG."""
        cfg, cat = self.config, self.catalog
        rng = np.random.default_rng([cfg.seed, 1, k])
        taste = self.taste(k)
        per_session = cfg.mean_slots * (1 + cfg.cart_rate * (1 + cfg.buy_rate))
        parts: list[tuple[np.ndarray, ...]] = []
        total = drawn = 0
        while total < _CHUNK:  # draw sessions until they fill the chunk (nearly always once)
            n_sess = int(_CHUNK / per_session * 1.1) + 64
            part = self._sessions(rng, n_sess, taste)
            parts.append((part[0] + drawn, *part[1:]))
            total, drawn = total + len(part[0]), drawn + n_sess
        sess, key, product, etype, qty, cust = (np.concatenate(a) for a in zip(*parts, strict=True))
        order = np.lexsort((key, sess))[:_CHUNK]  # session by session; the last is cut short
        sess, product, etype, qty = sess[order], product[order], etype[order], qty[order]
        # time: gaps within the session; the session placed at random inside the chunk's span
        span = _CHUNK * cfg.mean_gap_ms
        first = np.r_[True, sess[1:] != sess[:-1]]
        gap = np.where(first, 0.0, rng.exponential(_GAP_S[etype] * 1000.0))
        offset = np.cumsum(gap)
        starts = np.flatnonzero(first)
        offset -= np.repeat(offset[starts], np.diff([*starts, len(sess)]))
        dur = np.maximum.reduceat(offset, starts)
        shrink = np.minimum(1.0, 0.999 * span / np.maximum(dur, 1e-9))  # tiny spans only
        begin = rng.random(len(starts)) * (span - dur * shrink)
        reps = np.diff([*starts, len(sess)])
        t = k * span + np.repeat(begin, reps) + offset * np.repeat(shrink, reps)
        ts = self._start_ms + np.floor(t).astype(np.int64)
        within = np.arange(len(sess))
        out = np.lexsort((within, ts))
        sess, product, etype, qty, ts = sess[out], product[out], etype[out], qty[out], ts[out]
        arrays = [
            pa.array(np.arange(k * _CHUNK, (k + 1) * _CHUNK, dtype=np.int64)),
            pa.array(ts, pa.timestamp("ms")),
            self.customer_ids.take(pa.array(cust[sess])),
            ids("s", k * _CHUNK + sess),
            pa.array(EVENT_TYPES).take(pa.array(etype)),
            cat.product_ids.take(pa.array(product)),
            cat.categories.take(pa.array(cat.category[product])),
            pa.array(cat.price[product]),
            pa.array(qty),
        ]
        return pa.RecordBatch.from_arrays(arrays, schema=EVENT_SCHEMA)


def events_table(
    n_events: int,
    config: CommerceConfig = CommerceConfig(),  # noqa: B008 (frozen)
    first_event_id: int = 0,
) -> pa.Table:
    """``n_events`` events of the stream of ``config`` as one table.

    >>> t = events_table(5_000, CommerceConfig(n_products=3_000, n_customers=500, n_themes=50))
    >>> t.num_rows, sorted(set(t.column("event_type").to_pylist()))
    (5000, ['add_to_cart', 'purchase', 'view'])
    """
    gen = CommerceGenerator(config)
    batches = list(gen.batches(n_events, 1 << 20, first_event_id))
    return pa.Table.from_batches(batches, schema=EVENT_SCHEMA)


def next_purchases(events: pa.Table) -> pa.Table:
    """For each purchase in ``events``: the customer's next purchased product (null if
    none in ``events``), ordered by ``event_id`` - the target of hit-rate@k.

    >>> ev = pa.table({"event_id": [0, 1, 2, 3], "customer_id": ["a", "b", "a", "a"],
    ...                "event_type": ["purchase", "purchase", "view", "purchase"],
    ...                "product_id": ["p1", "p2", "p3", "p4"]})
    >>> next_purchases(ev).to_pydict()["next_product_id"]
    ['p4', None, None]
    """
    p = events.filter(pc.equal(events["event_type"], "purchase"))
    p = p.take(pc.sort_indices(p, [("event_id", "ascending")]))
    who = pc.dictionary_encode(p["customer_id"]).combine_chunks().indices.to_numpy()
    order = np.lexsort((np.arange(len(who)), who))  # by customer, then event order
    nxt = np.full(len(who), -1)
    same = who[order][1:] == who[order][:-1]
    nxt[order[:-1][same]] = order[1:][same]
    missing = nxt < 0
    take = pa.array(np.maximum(nxt, 0), mask=missing)
    return pa.table(
        {
            "event_id": p["event_id"],
            "customer_id": p["customer_id"],
            "product_id": p["product_id"],
            "next_event_id": p["event_id"].take(take),
            "next_product_id": p["product_id"].take(take),
        }
    )


def split(events: pa.Table, at: int) -> tuple[pa.Table, pa.Table]:
    """Events before event id ``at`` (to learn from) and from it on (to evaluate on)."""
    before = pc.less(events["event_id"], at)
    return events.filter(before), events.filter(pc.invert(before))


def write_events(
    path: str | Path,
    n_events: int,
    config: CommerceConfig = CommerceConfig(),  # noqa: B008 (frozen)
    batch_size: int = 100_000,
) -> Path:
    """Write ``n_events`` events of the stream of ``config`` to Parquet at ``path``."""
    path = Path(path)
    with pq.ParquetWriter(path, EVENT_SCHEMA) as pw:
        for batch in CommerceGenerator(config).batches(n_events, batch_size):
            pw.write_batch(batch)
    return path


def write_catalog(path: str | Path, config: CommerceConfig = CommerceConfig()) -> Path:  # noqa: B008
    """Write the catalog of ``config`` to Parquet at ``path``."""
    path = Path(path)
    pq.write_table(catalog_table(config), path)
    return path


class CommerceSource:
    """The stream as a resumable source: position ``p`` is event id ``p``, and the rows
    after ``p`` are exactly the tail of the ``n_events`` rows read from 0.

    >>> cfg = CommerceConfig(n_products=2_000, n_customers=300, n_themes=40)
    >>> src = CommerceSource(cfg, n_events=1_000, batch_size=600)
    >>> [(b.num_rows, end) for b, end in src.batches(start=200)]
    [(600, 800), (200, 1000)]
    """

    def __init__(
        self,
        config: CommerceConfig = CommerceConfig(),  # noqa: B008 (frozen)
        n_events: int = 1_000_000,
        batch_size: int = 50_000,
    ) -> None:
        self.config, self.n_events, self.batch_size = config, n_events, batch_size
        # every setting shapes the stream: a changed one must not resume an old checkpoint
        digest = hashlib.sha1(repr(config).encode()).hexdigest()[:8]
        self.id = f"commerce:seed={config.seed}:events={n_events}:{digest}"

    def batches(self, start: int = 0) -> Iterator[tuple[pa.Table, int]]:
        gen, pos = CommerceGenerator(self.config), start
        for rb in gen.batches(max(self.n_events - start, 0), self.batch_size, start):
            pos += rb.num_rows
            yield pa.Table.from_batches([rb]), pos
