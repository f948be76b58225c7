"""Drift detectors as plain numpy classes: fed in batches, state as arrays and JSON.

No Ray and no I/O here: an actor owns a detector, calls ``update`` with a batch of
thousands of values, and saves ``state()`` (numbers, strings and numpy arrays only,
so ``np.savez(..., allow_pickle=False)`` or JSON holds it; never a pickle).

* ``PSI``: population stability index of a current window (exponentially decayed,
  or the last ``size`` values) against a reference histogram. The bin edges are
  given, or the quantiles of the first ``reference_size`` values. NaN/inf values
  are dropped and counted. ``merge`` adds another instance's histograms (same edges).
* ``PageHinkley``: the Page-Hinkley test for an increase of the mean of a stream of
  per-event errors (0/1 misclassification, log loss); vectorized over the batch
  (cumulative sums), reports where in the batch it fired, and resets after a detection.
* :class:`runtime.ml.monitor.DriftMonitor` combines them for a scoring stage.

No ADWIN: Page-Hinkley covers the error stream, PSI the distributions.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> psi = PSI(bins=10, reference_size=10_000, half_life=5_000)
>>> for _ in range(5):
...     _ = psi.update(rng.normal(0, 1, 10_000))
>>> round(psi.value, 3) < 0.01, psi.drifted()
(True, False)
>>> _ = psi.update(rng.normal(1, 1, 20_000))
>>> psi.drifted(threshold=0.2)
True
>>> ph = PageHinkley(delta=0.01, threshold=50)
>>> ph.update((rng.random(20_000) < 0.05).astype(float))
False
>>> ph.update((rng.random(20_000) < 0.25).astype(float)), ph.position < 1_000
(True, True)
>>> again = PageHinkley.from_state(ph.state())
>>> again.state()["n"] == ph.state()["n"]
True
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["PSI", "PageHinkley"]

State = dict[str, Any]  # values: np.ndarray | float | int | str


def _finite(values, counter: list[int]) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).ravel()
    ok = np.isfinite(x)
    if not ok.all():
        counter[0] += int(x.size - np.count_nonzero(ok))
        x = x[ok]
    return x


class PSI:
    """Population stability index of a current window against a reference.

    ``edges``: the interior bin edges (values below the first go to the first bin,
    above the last to the last bin); if None, the quantiles of the first
    ``reference_size`` finite values (ties collapse bins). The reference is the
    first ``reference_size`` finite values; every later value goes to the current
    window: exponentially decayed with ``half_life`` events (``size=None``), or the
    last ``size`` values. ``value`` is NaN until the reference is complete and the
    window holds ``min_count`` values. Proportions are floored at ``eps``.
    """

    def __init__(
        self,
        bins: int = 10,
        edges=None,
        reference_size: int = 10_000,
        half_life: float = 5_000.0,
        size: int | None = None,
        eps: float = 1e-4,
        min_count: int = 1_000,
    ):
        if edges is not None:
            edges = np.unique(np.asarray(edges, dtype=np.float64))
            if edges.size == 0 or not np.isfinite(edges).all():
                raise ValueError("edges must be finite and non-empty")
        if reference_size < 1 or bins < 2:
            raise ValueError("reference_size >= 1 and bins >= 2")
        self.bins = int(bins)
        self.reference_size = int(reference_size)
        self.half_life = float(half_life)
        self.size = None if size is None else int(size)
        self.eps = float(eps)
        self.min_count = int(min_count)
        self.edges = edges  # None until fitted
        self.ref_n = 0
        self.ref_buffer = np.empty(0)
        self.ref_counts = None if edges is None else np.zeros(edges.size + 1)
        self.cur_counts = None if edges is None else np.zeros(edges.size + 1)
        self.ring = np.zeros(0 if self.size is None else self.size, dtype=np.int32)
        self.ring_pos = 0
        self.ring_len = 0
        self.n_seen = 0
        self.n_invalid = 0

    # -- feeding ----------------------------------------------------------------
    def update(self, values) -> float:
        """Add a batch (NaN/inf dropped and counted); returns the current PSI."""
        bad = [0]
        x = _finite(values, bad)
        self.n_invalid += bad[0]
        self.n_seen += x.size
        if self.ref_n < self.reference_size and x.size:
            take = min(x.size, self.reference_size - self.ref_n)
            self._add_reference(x[:take])
            x = x[take:]
        if x.size:
            self._add_current(x)
        return self.value

    def _bin(self, x: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.edges, x, side="right").astype(np.int32)

    def _add_reference(self, x: np.ndarray) -> None:
        self.ref_n += x.size
        if self.edges is None:
            self.ref_buffer = np.concatenate([self.ref_buffer, x])
            if self.ref_n < self.reference_size:
                return
            qs = np.linspace(0.0, 1.0, self.bins + 1)[1:-1]
            self.edges = np.unique(np.quantile(self.ref_buffer, qs))
            k = self.edges.size + 1
            self.ref_counts = np.zeros(k)
            self.cur_counts = np.zeros(k)
            x, self.ref_buffer = self.ref_buffer, np.empty(0)
        self.ref_counts += np.bincount(self._bin(x), minlength=self.ref_counts.size)

    def _add_current(self, x: np.ndarray) -> None:
        b = self._bin(x)
        k = self.cur_counts.size
        if self.size is None:
            decay = 0.5 ** (1.0 / self.half_life)
            w = decay ** np.arange(b.size - 1, -1, -1, dtype=np.float64)
            self.cur_counts *= decay**b.size
            self.cur_counts += np.bincount(b, weights=w, minlength=k)
            return
        W = self.size
        if b.size >= W:
            self.ring[:] = b[-W:]
            self.ring_pos, self.ring_len = 0, W
            self.cur_counts = np.bincount(self.ring, minlength=k).astype(np.float64)
            return
        idx = (self.ring_pos + np.arange(b.size)) % W
        evict = max(0, self.ring_len + b.size - W)
        if evict:
            self.cur_counts -= np.bincount(self.ring[idx[b.size - evict :]], minlength=k)
        self.cur_counts += np.bincount(b, minlength=k)
        self.ring[idx] = b
        self.ring_pos = (self.ring_pos + b.size) % W
        self.ring_len = min(W, self.ring_len + b.size)

    # -- reading ----------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.ref_n >= self.reference_size and float(self.cur_counts.sum()) >= self.min_count

    @property
    def value(self) -> float:
        if not self.ready:
            return float("nan")
        p = np.maximum(self.cur_counts / self.cur_counts.sum(), self.eps)
        q = np.maximum(self.ref_counts / self.ref_counts.sum(), self.eps)
        return float(np.sum((p - q) * np.log(p / q)))

    def drifted(self, threshold: float = 0.2) -> bool:
        return bool(self.value >= threshold)  # NaN (not ready) compares False

    def merge(self, other: PSI) -> PSI:
        """Add another instance's reference and current histograms (same edges, decayed
        windows only: a last-``size`` window has an order that cannot be merged)."""
        if self.size is not None or other.size is not None:
            raise ValueError("only decayed windows (size=None) merge")
        if self.edges is None or other.edges is None or not np.array_equal(self.edges, other.edges):
            raise ValueError("PSI instances merge only with the same fitted edges")
        self.ref_counts = self.ref_counts + other.ref_counts
        self.cur_counts = self.cur_counts + other.cur_counts
        self.ref_n = max(self.ref_n, other.ref_n)
        self.n_seen += other.n_seen
        self.n_invalid += other.n_invalid
        return self

    # -- state ------------------------------------------------------------------
    def state(self) -> State:
        fitted = self.edges is not None
        return {
            "kind": "PSI",
            "bins": self.bins,
            "reference_size": self.reference_size,
            "half_life": self.half_life,
            "size": -1 if self.size is None else self.size,
            "eps": self.eps,
            "min_count": self.min_count,
            "fitted": int(fitted),
            "edges": self.edges.copy() if fitted else np.empty(0),
            "ref_n": self.ref_n,
            "ref_buffer": self.ref_buffer.copy(),
            "ref_counts": self.ref_counts.copy() if fitted else np.empty(0),
            "cur_counts": self.cur_counts.copy() if fitted else np.empty(0),
            "ring": self.ring.copy(),
            "ring_pos": self.ring_pos,
            "ring_len": self.ring_len,
            "n_seen": self.n_seen,
            "n_invalid": self.n_invalid,
        }

    @classmethod
    def from_state(cls, d: State) -> PSI:
        size = int(d["size"])
        self = cls(
            bins=int(d["bins"]),
            reference_size=int(d["reference_size"]),
            half_life=float(d["half_life"]),
            size=None if size < 0 else size,
            eps=float(d["eps"]),
            min_count=int(d["min_count"]),
        )
        if int(d["fitted"]):
            self.edges = np.asarray(d["edges"], dtype=np.float64).copy()
            self.ref_counts = np.asarray(d["ref_counts"], dtype=np.float64).copy()
            self.cur_counts = np.asarray(d["cur_counts"], dtype=np.float64).copy()
        self.ref_n = int(d["ref_n"])
        self.ref_buffer = np.asarray(d["ref_buffer"], dtype=np.float64).copy()
        self.ring = np.asarray(d["ring"], dtype=np.int32).copy()
        self.ring_pos = int(d["ring_pos"])
        self.ring_len = int(d["ring_len"])
        self.n_seen = int(d["n_seen"])
        self.n_invalid = int(d["n_invalid"])
        return self


class PageHinkley:
    """Page-Hinkley test for an increase of the mean of a stream (errors, losses).

    Per event: ``mean`` is the running mean since the last reset,
    ``m = alpha * m + (x - mean - delta)``, ``m_min = min(m_min, m)``; a drift when
    ``m - m_min > threshold`` after ``min_instances`` events since the reset, and
    then every statistic resets. ``update`` runs this over a whole batch with
    cumulative sums (detections do not depend on how the stream is batched), sets
    ``position`` to the index in the batch of the first detection (``positions``:
    all of them) and returns whether there was one. NaN/inf are dropped and counted
    (positions then index the finite values).

    Tuning: on a stationary stream of variance ``var`` the statistic is a reflected
    random walk drifting down by ``delta``; an excursion above ``threshold`` has a
    probability of about ``exp(-2 * delta * threshold / var)``, so keep that exponent
    above ~15. The defaults suit 0/1 errors at a few percent (at 5%, var 0.05: exponent
    20, no alarm in 20M events; delta=0.005 gives 10 and about one alarm per 10M); at an
    error rate of 15% (var 0.13) the exponent falls to 8; for log loss (var ~0.3) use
    e.g. delta=0.02, threshold=150. ``alpha < 1`` shrinks
    ``m`` but not its running minimum, which adds false alarms unless ``threshold``
    is well above the spread of ``m``, about ``sqrt(var / (2 * (1 - alpha)))``.
    """

    def __init__(
        self,
        delta: float = 0.01,
        threshold: float = 50.0,
        alpha: float = 1.0,
        min_instances: int = 30,
    ):
        if not 0 < alpha <= 1:
            raise ValueError("alpha in (0, 1]")
        self.delta = float(delta)
        self.threshold = float(threshold)
        self.alpha = float(alpha)
        self.min_instances = int(min_instances)
        self.n = 0  # events since the last reset
        self.total = 0.0  # their sum, for the running mean
        self.m = 0.0
        self.m_min = 0.0
        self.n_seen = 0
        self.n_invalid = 0
        self.n_detections = 0
        self.value = 0.0  # m - m_min after the last event
        self.position: int | None = None
        self.positions: list[int] = []  # in the last batch
        self.values: list[float] = []  # the statistic at each of them

    def _reset(self) -> None:
        self.n, self.total, self.m, self.m_min = 0, 0.0, 0.0, 0.0

    def _recurrence(self, dev: np.ndarray) -> np.ndarray:
        """m_i = alpha * m_{i-1} + dev_i from self.m, in chunks where alpha**-L is safe."""
        if self.alpha == 1.0:
            return self.m + np.cumsum(dev)
        la = math.log(self.alpha)
        L = max(1, int(50 * math.log(10) / -la))
        out = np.empty_like(dev)
        m0 = self.m
        for s in range(0, dev.size, L):
            d = dev[s : s + L]
            j = np.arange(1, d.size + 1, dtype=np.float64)
            out[s : s + L] = np.exp(j * la) * (m0 + np.cumsum(d * np.exp(-j * la)))
            m0 = out[s + d.size - 1]
        return out

    def update(self, errors) -> bool:
        bad = [0]
        x = _finite(errors, bad)
        self.n_invalid += bad[0]
        self.n_seen += x.size
        self.positions, self.values = [], []
        start = 0
        while start < x.size:
            seg = x[start:]
            j = np.arange(1, seg.size + 1, dtype=np.float64)
            mean = (self.total + np.cumsum(seg)) / (self.n + j)
            m = self._recurrence(seg - mean - self.delta)
            stat = m - np.minimum(np.minimum.accumulate(m), self.m_min)
            hit = stat > self.threshold
            if self.n < self.min_instances:
                hit[: self.min_instances - self.n - 1] = False
            first = int(np.argmax(hit)) if hit.any() else -1
            if first < 0:
                self.n += seg.size
                self.total += float(seg.sum())
                self.m = float(m[-1])
                self.m_min = min(self.m_min, float(m.min()))
                self.value = float(stat[-1])
                break
            self.positions.append(start + first)
            self.values.append(float(stat[first]))
            self.n_detections += 1
            self.value = float(stat[first])
            self._reset()
            start += first + 1
        self.position = self.positions[0] if self.positions else None
        return bool(self.positions)

    def state(self) -> State:
        return {
            "kind": "PageHinkley",
            "delta": self.delta,
            "threshold": self.threshold,
            "alpha": self.alpha,
            "min_instances": self.min_instances,
            "n": self.n,
            "total": self.total,
            "m": self.m,
            "m_min": self.m_min,
            "n_seen": self.n_seen,
            "n_invalid": self.n_invalid,
            "n_detections": self.n_detections,
            "value": self.value,
        }

    @classmethod
    def from_state(cls, d: State) -> PageHinkley:
        self = cls(
            delta=float(d["delta"]),
            threshold=float(d["threshold"]),
            alpha=float(d["alpha"]),
            min_instances=int(d["min_instances"]),
        )
        self.n = int(d["n"])
        self.total = float(d["total"])
        self.m = float(d["m"])
        self.m_min = float(d["m_min"])
        self.n_seen = int(d["n_seen"])
        self.n_invalid = int(d["n_invalid"])
        self.n_detections = int(d["n_detections"])
        self.value = float(d["value"])
        return self
