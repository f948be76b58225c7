"""Sparse counts over a sliding event-time window, for very many keys (item pairs).

A keyed window operator (:mod:`runtime.eventtime.windows`) emits a row per key and
window; some state is instead *queried* while it slides - how often item b followed
item a in the last week, over millions of (a, b) pairs. :class:`SlidingCounts` keeps
such counts as sorted numpy arrays: one (keys, counts) pair per pane of ``window_ms /
panes`` and their running total. Adding a batch merges its keys into its panes and the
total; when event time passes a pane's end by ``window_ms`` the pane is subtracted from
the total and dropped (Flink's sliding windows by panes). Lookups are binary searches;
:meth:`range` returns the keys in ``[lo, hi)``, so keys built as ``a * n + b`` answer
"what follows a" with one slice.

The arrays are the state: :meth:`arrays` and :meth:`from_arrays` save and load it as
data (no pickle).

>>> c = SlidingCounts(window_ms=3_000, panes=3)
>>> c.add(np.array([5, 7, 5]), np.array([0, 500, 1_500]))
>>> c.get(np.array([5, 7, 9])).tolist()
[2.0, 1.0, 0.0]
>>> c.add(np.array([7]), np.array([3_200]))  # the pane [0, 1000) has left the window
>>> c.get(np.array([5, 7])).tolist()
[1.0, 1.0]
>>> c.range(0, 6)
(array([5]), array([1.]))
"""

from __future__ import annotations

import numpy as np

from runtime.errors import ConfigError


class SlidingCounts:
    """Counts of int64 keys over the last ``window_ms`` of event time, in ``panes`` panes."""

    def __init__(self, window_ms: int, panes: int = 8) -> None:
        if window_ms <= 0 or panes < 1 or window_ms % panes:
            raise ConfigError("window_ms must be positive and a multiple of panes")
        self.window_ms, self.panes = int(window_ms), int(panes)
        self.pane_ms = self.window_ms // self.panes
        self.keys = np.zeros(0, np.int64)
        self.counts = np.zeros(0, np.float64)
        self._panes: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.now = -(2**62)  # the latest event time added or advanced to (ms)
        self.late = 0  # weight of additions older than the window when they came

    def __len__(self) -> int:
        return len(self.keys)

    # -- updates ------------------------------------------------------------------------------
    def add(self, keys: np.ndarray, ts: np.ndarray, weights: np.ndarray | None = None) -> None:
        """Count ``keys`` at event times ``ts`` (ms); ``weights`` default to 1."""
        keys = np.asarray(keys, np.int64)
        ts = np.asarray(ts, np.int64)
        w = np.ones(len(keys)) if weights is None else np.asarray(weights, np.float64)
        if len(keys) == 0:
            return
        self.advance(int(ts.max()))
        pane = ts // self.pane_ms
        live = pane > self._first_live_pane()
        self.late += float(w[~live].sum())
        pane, keys, w = pane[live], keys[live], w[live]
        for p in np.unique(pane).tolist():
            sel = pane == p
            uk, inv = np.unique(keys[sel], return_inverse=True)
            uc = np.bincount(inv, weights=w[sel])
            old = self._panes.get(p)
            self._panes[p] = _merge(*old, uk, uc) if old is not None else (uk, uc)
            self.keys, self.counts = _merge(self.keys, self.counts, uk, uc)

    def advance(self, now_ms: int) -> None:
        """Event time reached ``now_ms``: panes that ended a window ago leave the total."""
        if now_ms <= self.now:
            return
        self.now = now_ms
        first = self._first_live_pane()
        for p in [p for p in self._panes if p <= first]:
            k, c = self._panes.pop(p)
            self.keys, self.counts = _merge(self.keys, self.counts, k, -c)

    def _first_live_pane(self) -> int:
        """Panes up to this index have left the window."""
        return (self.now - self.window_ms) // self.pane_ms

    # -- reads --------------------------------------------------------------------------------
    def get(self, keys: np.ndarray) -> np.ndarray:
        """The count of each key in the window (0 for a key not seen)."""
        keys = np.asarray(keys, np.int64)
        if len(self.keys) == 0:
            return np.zeros(len(keys))
        at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return np.where(self.keys[at] == keys, self.counts[at], 0.0)

    def range(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """The keys in ``[lo, hi)`` with their counts."""
        a, b = np.searchsorted(self.keys, [lo, hi])
        return self.keys[a:b], self.counts[a:b]

    # -- state as data ------------------------------------------------------------------------
    def arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        """The counts as named arrays (for ``np.savez``); :meth:`from_arrays` loads them."""
        panes = sorted(self._panes)
        sizes = np.array([len(self._panes[p][0]) for p in panes], np.int64)
        return {
            f"{prefix}meta": np.array([self.window_ms, self.panes, self.now], np.int64),
            f"{prefix}late": np.array([self.late]),
            f"{prefix}pane_ids": np.array(panes, np.int64),
            f"{prefix}pane_sizes": sizes,
            f"{prefix}pane_keys": _cat([self._panes[p][0] for p in panes], np.int64),
            f"{prefix}pane_counts": _cat([self._panes[p][1] for p in panes], np.float64),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str = "") -> SlidingCounts:
        window_ms, panes, now = (int(x) for x in arrays[f"{prefix}meta"])
        self = cls(window_ms, panes)
        self.now, self.late = now, float(arrays[f"{prefix}late"][0])
        bounds = np.concatenate([[0], np.cumsum(arrays[f"{prefix}pane_sizes"])])
        keys, counts = arrays[f"{prefix}pane_keys"], arrays[f"{prefix}pane_counts"]
        for i, p in enumerate(arrays[f"{prefix}pane_ids"].tolist()):
            k, c = keys[bounds[i] : bounds[i + 1]], counts[bounds[i] : bounds[i + 1]]
            self._panes[p] = (k.copy(), c.copy())
            self.keys, self.counts = _merge(self.keys, self.counts, k, c)
        return self


def _merge(
    keys: np.ndarray, counts: np.ndarray, add_keys: np.ndarray, add: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique ``keys`` with ``add`` (for sorted unique ``add_keys``) added; keys
    whose count falls to zero are dropped (subtracting a pane)."""
    at = np.searchsorted(keys, add_keys)
    hit = at < len(keys)
    hit[hit] = keys[at[hit]] == add_keys[hit]
    counts = counts.copy()
    np.add.at(counts, at[hit], add[hit])
    keys = np.insert(keys, at[~hit], add_keys[~hit])
    counts = np.insert(counts, at[~hit], add[~hit])
    keep = counts > 1e-9
    return (keys, counts) if keep.all() else (keys[keep], counts[keep])


def _cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)
