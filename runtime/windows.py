"""Keyed event-time windows with watermarks and late data, vectorized over batches.

Tumbling (``slide_ms=None``) and sliding windows of ``size_ms``; aggregates count,
sum, min, max and mean of one value column. The watermark is the largest event time
seen minus ``out_of_orderness_ms``, and advances after each batch. A window fires
once the watermark passes its end (``final``); an event that arrives later but
within ``allowed_lateness_ms`` updates its window and the window fires again
(``update``); an event later than that for every window it belongs to is returned
as late (for the ``late_events`` topic) and counted, never dropped silently.

>>> import pyarrow as pa
>>> w = Windows(WindowSpec(size_ms=10), key="k", time="t", value="v")
>>> out = w.process(pa.table({"k": ["a", "a", "b"], "t": [1, 4, 12], "v": [1.0, 2.0, 5.0]}))
>>> out.fired.select(["k", "window_start", "count", "sum", "emit"]).to_pylist()
[{'k': 'a', 'window_start': 0, 'count': 2, 'sum': 3.0, 'emit': 'final'}]
>>> out = w.process(pa.table({"k": ["a"], "t": [3], "v": [10.0]}))   # late for a closed window
>>> out.late.num_rows, w.late_count
(1, 1)
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from runtime.errors import ConfigError
from runtime.index import HashIndex
from runtime.keys import hash_keys

_MIX = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class WindowSpec:
    size_ms: int
    slide_ms: int | None = None  # None: tumbling
    allowed_lateness_ms: int = 0
    out_of_orderness_ms: int = 0

    def __post_init__(self) -> None:
        if self.size_ms <= 0:
            raise ConfigError(f"window size must be > 0 ms, not {self.size_ms}")
        if self.slide_ms is not None and (self.slide_ms <= 0 or self.size_ms % self.slide_ms):
            raise ConfigError(
                f"a sliding window's size ({self.size_ms}) must be a multiple of its slide ({self.slide_ms})"
            )

    @property
    def step(self) -> int:
        return self.slide_ms or self.size_ms


@dataclass
class Fired:
    fired: pa.Table  # key, window_start, window_end, count, sum, min, max, mean, emit
    late: pa.Table  # the input rows that were too late for every window


class Windows:
    """Window state for many keys; a plain class, checkpointed with :meth:`snapshot`."""

    def __init__(self, spec: WindowSpec, key: str, time: str, value: str) -> None:
        self.spec, self.key, self.time, self.value = spec, key, time, value
        self.watermark = np.iinfo(np.int64).min
        self.late_count = 0
        self._index = HashIndex()
        self._keys = np.empty(0, dtype=object)
        self._start = np.empty(0, dtype=np.int64)
        self._count = np.empty(0, dtype=np.int64)
        self._sum = np.empty(0, dtype=np.float64)
        self._min = np.empty(0, dtype=np.float64)
        self._max = np.empty(0, dtype=np.float64)
        self._fired = np.empty(0, dtype=bool)
        self._dirty = np.empty(0, dtype=bool)

    def process(self, batch: pa.Table) -> Fired:
        spec = self.spec
        t = (
            batch.column(self.time).cast(pa.int64()).to_numpy()
            if pa.types.is_timestamp(batch.schema.field(self.time).type)
            else batch.column(self.time).to_numpy().astype(np.int64)
        )
        v = batch.column(self.value).to_numpy(zero_copy_only=False).astype(np.float64)
        kh = hash_keys(batch.column(self.key))
        per = spec.size_ms // spec.step
        base = np.floor_divide(t, spec.step) * spec.step
        starts = (base[:, None] - np.arange(per)[None, :] * spec.step).reshape(-1)  # event x window
        rows = np.repeat(np.arange(len(t)), per)
        open_ = starts + spec.size_ms + spec.allowed_lateness_ms > self.watermark
        late_rows = np.ones(len(t), dtype=bool)
        late_rows[rows[open_]] = False
        self.late_count += int(late_rows.sum())
        rows, starts = rows[open_], starts[open_]
        if len(rows):
            self._merge(rows, starts, kh, batch.column(self.key), v)
        if len(t):
            self.watermark = max(self.watermark, int(t.max()) - spec.out_of_orderness_ms)
        fired = self._fire()
        return Fired(fired, batch.filter(pa.array(late_rows)))

    def _merge(
        self,
        rows: np.ndarray,
        starts: np.ndarray,
        kh: np.ndarray,
        keys: pa.ChunkedArray,
        v: np.ndarray,
    ) -> None:
        with np.errstate(over="ignore"):
            ids = kh[rows] ^ (starts.astype(np.uint64) * _MIX)
        uniq, first, inv = np.unique(ids, return_index=True, return_inverse=True)
        cnt = np.bincount(inv, minlength=len(uniq))
        sm = np.bincount(inv, weights=v[rows], minlength=len(uniq))
        mn = np.full(len(uniq), np.inf)
        mx = np.full(len(uniq), -np.inf)
        np.minimum.at(mn, inv, v[rows])
        np.maximum.at(mx, inv, v[rows])
        slots = self._index.lookup(uniq)
        new = slots < 0
        if new.any():
            n_new = int(new.sum())
            fresh = np.arange(len(self._start), len(self._start) + n_new)
            key_rows = rows[first[new]]
            self._keys = np.concatenate(
                [self._keys, keys.take(pa.array(key_rows)).to_numpy(zero_copy_only=False)]
            )
            self._start = np.concatenate([self._start, starts[first[new]]])
            self._count = np.concatenate([self._count, np.zeros(n_new, dtype=np.int64)])
            self._sum = np.concatenate([self._sum, np.zeros(n_new)])
            self._min = np.concatenate([self._min, np.full(n_new, np.inf)])
            self._max = np.concatenate([self._max, np.full(n_new, -np.inf)])
            self._fired = np.concatenate([self._fired, np.zeros(n_new, dtype=bool)])
            self._dirty = np.concatenate([self._dirty, np.zeros(n_new, dtype=bool)])
            self._index.insert(uniq[new], fresh)
            slots[new] = fresh
        self._count[slots] += cnt
        self._sum[slots] += sm
        self._min[slots] = np.minimum(self._min[slots], mn)
        self._max[slots] = np.maximum(self._max[slots], mx)
        self._dirty[slots] = True

    def _fire(self) -> pa.Table:
        """Emit windows the watermark has passed (first time: final; again: update); purge
        the ones past their allowed lateness."""
        end = self._start + self.spec.size_ms
        due = (end <= self.watermark) & self._dirty
        idx = np.flatnonzero(due)
        emit = np.where(self._fired[idx], "update", "final")
        out = pa.table(
            {
                self.key: pa.array(self._keys[idx], pa.string()),
                "window_start": self._start[idx],
                "window_end": end[idx],
                "count": self._count[idx],
                "sum": self._sum[idx],
                "min": self._min[idx],
                "max": self._max[idx],
                "mean": self._sum[idx] / np.maximum(self._count[idx], 1),
                "emit": pa.array(emit, pa.string()),
            }
        )
        self._fired[idx] = True
        self._dirty[idx] = False
        gone = end + self.spec.allowed_lateness_ms <= self.watermark
        if gone.sum() > max(1024, len(gone) // 4):  # purge in bulk, not every batch
            self._compact(~gone)
        return out

    def _compact(self, keep: np.ndarray) -> None:
        with np.errstate(over="ignore"):
            ids = hash_keys(pa.array(self._keys[keep].tolist(), pa.string())) ^ (
                self._start[keep].astype(np.uint64) * _MIX
            )
        for name in ("_keys", "_start", "_count", "_sum", "_min", "_max", "_fired", "_dirty"):
            setattr(self, name, getattr(self, name)[keep])
        self._index = HashIndex()
        self._index.insert(ids, np.arange(len(ids)))

    def close(self) -> pa.Table:
        """End of stream: fire every window still waiting for the watermark."""
        self.watermark = np.iinfo(np.int64).max - self.spec.size_ms - self.spec.allowed_lateness_ms
        return self._fire()

    def open_windows(self) -> int:
        return int(
            (self._start + self.spec.size_ms + self.spec.allowed_lateness_ms > self.watermark).sum()
        )

    def snapshot(self) -> bytes:
        """Everything needed to continue after a restart (saved with the checkpoint)."""
        return pickle.dumps(self)

    @staticmethod
    def restore(blob: bytes) -> Windows:
        return pickle.loads(blob)
