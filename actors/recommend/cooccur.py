"""What is carted after what, and what sells, over a sliding window of event time.

Each shard learns from the sessions of the customers it hosts: when a product b goes into
a cart, every product a already carted in that session makes a pair ``a -> b`` ("bought
after"); every purchase counts for its product's popularity. Both are
:class:`~runtime.eventtime.counts.SlidingCounts` over ``window_ms`` (a week by default), so
last season's bundles fade out. :meth:`CoOccurrence.successors` turns the pairs into
``P(b | a)`` summed over a context of products (the cart, the last ones viewed).

>>> co = CoOccurrence(n_products=10, window_ms=7_000, panes=7)
>>> co.add_pairs(np.array([1, 1, 2]), np.array([2, 3, 3]), np.array([0, 0, 0]))
>>> rows, scores = co.successors(np.array([1]), k=3)
>>> rows.tolist(), scores.round(2).tolist()
([2, 3], [0.5, 0.5])
>>> co.add_purchases(np.array([4, 4, 2]), np.array([10, 10, 10]))
>>> co.popular(2)[0].tolist()
[4, 2]
"""

from __future__ import annotations

import numpy as np

from runtime.errors import ConfigError
from runtime.eventtime.counts import SlidingCounts
from runtime.state import snapshot

FORMAT = "edgecore.recommend.cooccurrence/2"


class CoOccurrence:
    """Pair counts ``a -> b`` and purchase counts over products ``0 .. n_products - 1``."""

    def __init__(self, n_products: int, window_ms: int, panes: int = 7) -> None:
        self.n = int(n_products)
        self.pairs = SlidingCounts(window_ms, panes)  # key a * n + b
        self.sales = SlidingCounts(window_ms, panes)  # key: product
        #: views, cart adds and purchases weighted: ten times the data of sales alone, so a
        #: product's appeal shows before it sells (a catalog of a million has few sales each)
        self.interest = SlidingCounts(window_ms, panes)
        self._top: tuple[np.ndarray, np.ndarray] | None = None
        self._most: float | None = None  # the largest interest in the window

    def add_pairs(self, a: np.ndarray, b: np.ndarray, ts: np.ndarray) -> None:
        """Count ``a[i] -> b[i]`` at event time ``ts[i]`` (pairs of a product with itself
        are not counted)."""
        keep = a != b
        self.pairs.add(a[keep].astype(np.int64) * self.n + b[keep], ts[keep])

    def add_purchases(self, rows: np.ndarray, ts: np.ndarray) -> None:
        self.sales.add(rows, ts)
        self._top = None

    def add_interest(self, rows: np.ndarray, ts: np.ndarray, weights: np.ndarray) -> None:
        """Interactions with products (weighted by kind), for their appeal."""
        self.interest.add(rows, ts, weights)
        self._most = None

    def appeal(self, rows: np.ndarray) -> np.ndarray:
        """Each product's interest in the window, log-scaled to [0, 1] against the most
        wanted product's (the same scale for every query, whoever else is asked with it)."""
        if self._most is None:
            self._most = float(self.interest.counts.max(initial=0.0))
        if self._most <= 0:
            return np.zeros(np.shape(rows), np.float32)
        got = self.interest.get(np.ravel(rows)).reshape(np.shape(rows))
        return (np.log1p(got) / np.log1p(self._most)).astype(np.float32)

    def advance(self, now_ms: int) -> None:
        """Event time reached ``now_ms`` (pairs and sales older than the window leave)."""
        self.pairs.advance(now_ms)
        if now_ms > self.interest.now:
            self.interest.advance(now_ms)
            self._most = None
        if now_ms > self.sales.now:
            self.sales.advance(now_ms)
            self._top = None

    def successors(self, context: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` products most often carted after those of ``context``: score
        ``sum_a P(b | a)`` over the distinct products ``a`` of the context, best first."""
        got_b, got_p = [], []
        for a in np.unique(context[context >= 0]).tolist():
            keys, counts = self.pairs.range(a * self.n, (a + 1) * self.n)
            if len(keys):
                got_b.append(keys - a * self.n)
                got_p.append(counts / counts.sum())
        if not got_b:
            return np.zeros(0, np.int64), np.zeros(0)
        b, inv = np.unique(np.concatenate(got_b), return_inverse=True)
        p = np.bincount(inv, weights=np.concatenate(got_p))
        top = np.argsort(-p, kind="stable")[:k]
        return b[top], p[top]

    def popular(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best-selling products in the window and their sales, best first."""
        if self._top is None or len(self._top[0]) < min(k, len(self.sales)):
            keys, counts = self.sales.keys, self.sales.counts
            top = np.argsort(-counts, kind="stable")[: max(k, 256)]
            self._top = (keys[top], counts[top])
        return self._top[0][:k], self._top[1][:k]

    # -- state as data ------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The counts as plain arrays and a JSON header in a ``recommend_cooccurrence``
        snapshot (see :mod:`runtime.state.snapshot`: version, checksum; never a pickle)."""
        return snapshot.pack(
            "recommend_cooccurrence",
            {"format": FORMAT, "n_products": self.n},
            {
                **self.pairs.arrays("pairs_"),
                **self.sales.arrays("sales_"),
                **self.interest.arrays("interest_"),
            },
        )

    @classmethod
    def from_bytes(cls, blob: bytes) -> CoOccurrence:
        """What :meth:`to_bytes` wrote; refuses anything else
        (:class:`~runtime.errors.SnapshotError`)."""
        state = snapshot.unpack(blob, "recommend_cooccurrence")
        arrays, header = state.arrays, state.meta
        if header.get("format") != FORMAT:
            raise ConfigError(f"co-occurrence snapshot of format {header.get('format')!r}")
        self = cls.__new__(cls)
        with snapshot.reading("recommend_cooccurrence"):
            self.n = int(header["n_products"])
            self.pairs = SlidingCounts.from_arrays(arrays, "pairs_")
            self.sales = SlidingCounts.from_arrays(arrays, "sales_")
            self.interest = SlidingCounts.from_arrays(arrays, "interest_")
        self._top = None
        self._most = None
        return self
