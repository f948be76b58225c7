"""Keyed event-time windows with watermarks and late data, vectorized over batches.

Tumbling (``slide_ms=None``) and sliding windows of ``size_ms``, and session windows
(``WindowSpec.session(gap_ms)``: a key's events less than a gap apart, from the first
event to the last + gap); aggregates count, sum, min, max and mean of one value column,
and optionally, per window, the ``top_k`` values of an ``item`` column by number of
events (ties: smaller value first), exact.

The watermark is the largest event time seen minus ``out_of_orderness_ms``, or the one
the runtime sends with the batch (computed at the sources, see
:mod:`runtime.eventtime.watermarks`); lateness is judged against the watermark before the batch.
A window fires once the watermark passes its end (``final``); an event that arrives
later but within ``allowed_lateness_ms`` updates its window, which fires again
(``update``); an event later than that is returned as late (for the ``late_events``
topic) and counted, never dropped silently. For sessions, that is an event whose own
session [t, t + gap) would be past its end + lateness, or that would join a session
that is. With ``early_fire_ms``, windows with new data that have not fired final are
also emitted every so often of processing time (``early``). A session that moves (an
earlier event extends it back, or an event bridges two sessions) takes back what it
emitted under its old start with a ``retract`` row: a consumer keeps the last row per
(key, window_start) and deletes it on ``retract``.

>>> import pyarrow as pa
>>> w = Windows(WindowSpec(size_ms=10), key="k", time="t", value="v")
>>> out = w.process(pa.table({"k": ["a", "a", "b"], "t": [1, 4, 12], "v": [1.0, 2.0, 5.0]}))
>>> out.fired.select(["k", "window_start", "count", "sum", "emit"]).to_pylist()
[{'k': 'a', 'window_start': 0, 'count': 2, 'sum': 3.0, 'emit': 'final'}]
>>> out = w.process(pa.table({"k": ["a"], "t": [3], "v": [10.0]}))   # late for a closed window
>>> out.late.num_rows, w.late_count
(1, 1)
>>> s = Windows(WindowSpec.session(gap_ms=5, out_of_orderness_ms=10), "k", "t", "v")
>>> _ = s.process(pa.table({"k": ["a", "a", "a"], "t": [1, 3, 10], "v": [1.0, 1.0, 1.0]}))
>>> out = s.process(pa.table({"k": ["a"], "t": [6], "v": [1.0]}), watermark=20)  # bridges both
>>> out.fired.select(["window_start", "window_end", "count", "emit"]).to_pylist()
[{'window_start': 1, 'window_end': 15, 'count': 4, 'emit': 'final'}]
"""

from __future__ import annotations

import time as _time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from runtime.errors import ConfigError
from runtime.eventtime.firing import Firing
from runtime.eventtime.sessions import SessionWindows
from runtime.eventtime.watermarks import event_times
from runtime.state.index import HashIndex
from runtime.state.keys import hash_keys
from runtime.state.snapshot import State, pack, reading, unpack

_MIX = np.uint64(0x9E3779B97F4A7C15)
_MIN, _MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)

# One array per column, one row ("slot") per window; absorbed sessions keep count 0 until
# the next compaction. The shown_* columns remember what was emitted, to retract it.
_STATE: dict[str, tuple[type, object]] = {
    "key": (object, None),
    "kh": (np.uint64, 0),
    "start": (np.int64, 0),
    "end": (np.int64, 0),
    "count": (np.int64, 0),
    "sum": (np.float64, 0.0),
    "min": (np.float64, np.inf),
    "max": (np.float64, -np.inf),
    "fired": (bool, False),  # fired final already: later firings are updates
    "dirty": (bool, False),  # new data since the last final/update
    "fresh": (bool, False),  # new data since the last early firing
    "shown": (bool, False),  # emitted as (shown_start, shown_end)
    "shown_start": (np.int64, 0),
    "shown_end": (np.int64, 0),
}


@dataclass(frozen=True)
class WindowSpec:
    """Tumbling (``size_ms``), sliding (``size_ms``, ``slide_ms``) or session (``gap_ms``,
    best made with :meth:`session`) windows."""

    size_ms: int = 0
    slide_ms: int | None = None  # None: tumbling
    allowed_lateness_ms: int = 0
    out_of_orderness_ms: int = 0
    gap_ms: int | None = None  # sessions: a key's session ends after gap_ms without events
    early_fire_ms: int | None = None  # emit 'early' results every N ms of processing time

    def __post_init__(self) -> None:
        if self.gap_ms is not None:
            if self.gap_ms <= 0:
                raise ConfigError(f"a session gap must be > 0 ms, not {self.gap_ms}")
            if self.size_ms or self.slide_ms is not None:
                raise ConfigError(
                    "session windows have a gap, no size or slide: WindowSpec.session()"
                )
        elif self.size_ms <= 0:
            raise ConfigError(f"window size must be > 0 ms, not {self.size_ms}")
        elif self.slide_ms is not None and (self.slide_ms <= 0 or self.size_ms % self.slide_ms):
            raise ConfigError(
                f"a sliding window's size ({self.size_ms}) must be a multiple of its slide ({self.slide_ms})"
            )
        if self.allowed_lateness_ms < 0 or self.out_of_orderness_ms < 0:
            raise ConfigError("allowed_lateness_ms and out_of_orderness_ms must be >= 0")
        if self.early_fire_ms is not None and self.early_fire_ms <= 0:
            raise ConfigError(f"early_fire_ms must be > 0 (or None), not {self.early_fire_ms}")

    @classmethod
    def session(
        cls,
        gap_ms: int,
        allowed_lateness_ms: int = 0,
        out_of_orderness_ms: int = 0,
        early_fire_ms: int | None = None,
    ) -> WindowSpec:
        """Session windows: a key's events less than ``gap_ms`` apart form one session,
        from its first event to its last event + gap."""
        return cls(
            gap_ms=gap_ms,
            allowed_lateness_ms=allowed_lateness_ms,
            out_of_orderness_ms=out_of_orderness_ms,
            early_fire_ms=early_fire_ms,
        )

    @property
    def step(self) -> int:
        return self.slide_ms or self.size_ms

    @property
    def retention_ms(self) -> int:
        """How long past its end a window is kept. A session stays a gap longer than its
        lateness: until then a late event could still have merged into it, and is refused."""
        return self.allowed_lateness_ms + (self.gap_ms or 0)


@dataclass
class Fired:
    # key, window_start, window_end, count, sum, min, max, mean, emit[, top_items]
    fired: pa.Table
    late: pa.Table  # the input rows that were too late


class Windows(SessionWindows, Firing):
    """Window state for many keys; a plain class, checkpointed with :meth:`snapshot`.

    Fixed windows and the state are here; sessions come from
    :class:`~runtime.eventtime.sessions.SessionWindows`, the rows it emits from
    :class:`~runtime.eventtime.firing.Firing`."""

    #: the snapshot kind of its state (see :meth:`snapshot`)
    state_kind = "windows"
    #: windows past their retention are purged in bulk, once more than this many (and a
    #: quarter of all) are: compacting copies every array and rebuilds the indexes
    purge_after = 1024

    def __init__(
        self,
        spec: WindowSpec,
        key: str,
        time: str,
        value: str,
        *,
        top_k: int | None = None,
        item: str | None = None,
        clock: Callable[[], float] = _time.monotonic,
    ) -> None:
        if (top_k is None) != (item is None) or (top_k is not None and top_k < 1):
            raise ConfigError(
                f"top_k (>= 1) and item come together, not top_k={top_k}, item={item}"
            )
        self.spec, self.key, self.time, self.value = spec, key, time, value
        self.top_k, self.item, self.clock = top_k, item, clock
        self.watermark = _MIN
        self.late_count = 0
        self._s = {name: np.empty(0, dtype) for name, (dtype, _) in _STATE.items()}
        self._index = HashIndex()  # fixed windows: hash of (key, start) -> slot
        # top-k: an exact count per (slot, item); the top is taken when a window fires
        self._items = {"slot": np.empty(0, np.int64), "ih": np.empty(0, np.uint64)}
        self._items |= {"item": np.empty(0, object), "count": np.empty(0, np.int64)}
        self._item_index = HashIndex()  # hash of (slot, item) -> row of _items
        self._item_type: pa.DataType = pa.string()
        self._retracts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._last_early = clock()

    # -- input ---------------------------------------------------------------------------

    def process(self, batch: pa.Table, watermark: int | None = None) -> Fired:
        """Add a batch, then fire. ``watermark``, when given (computed at the sources), is used
        instead of the batch's own: the same for every shard, whatever rows it got."""
        t = event_times(batch.column(self.time))
        v = batch.column(self.value).to_numpy(zero_copy_only=False).astype(np.float64)
        kh = hash_keys(batch.column(self.key))
        if self.top_k and len(t):
            self._item_type = batch.schema.field(self.item).type
        # lateness is judged against the watermark before this batch, as the sources promised
        if self.spec.gap_ms:
            late = self._sessions(batch, t, kh, v)
        else:
            late = self._fixed(batch, t, kh, v)
        self.late_count += int(late.sum())
        if watermark is not None:
            self.watermark = max(self.watermark, int(watermark))
        elif len(t):
            self.watermark = max(self.watermark, int(t.max()) - self.spec.out_of_orderness_ms)
        return Fired(self._emit(), batch.filter(pa.array(late)))

    def advance(self, watermark: int | None = None) -> pa.Table:
        """Move the watermark (for a shard that got no rows) and fire what is due, including
        early firings when their time has come (``advance()`` only checks that)."""
        if watermark is not None:
            self.watermark = max(self.watermark, int(watermark))
        return self._emit()

    def _fixed(self, batch: pa.Table, t: np.ndarray, kh: np.ndarray, v: np.ndarray) -> np.ndarray:
        spec = self.spec
        per = spec.size_ms // spec.step
        base = np.floor_divide(t, spec.step) * spec.step
        starts = (base[:, None] - np.arange(per)[None, :] * spec.step).reshape(-1)  # event x window
        rows = np.repeat(np.arange(len(t)), per)
        open_ = starts + spec.size_ms + spec.allowed_lateness_ms > self.watermark
        late = np.ones(len(t), dtype=bool)
        late[rows[open_]] = False
        rows, starts = rows[open_], starts[open_]
        with np.errstate(over="ignore"):
            ids = kh[rows] ^ (starts.astype(np.uint64) * _MIX)
        uniq, first, inv = np.unique(ids, return_index=True, return_inverse=True)
        slots = self._index.lookup(uniq)
        new = slots < 0
        if new.any():
            r, s0 = rows[first[new]], starts[first[new]]
            slots[new] = self._new_slots(batch, r, kh[r], s0, s0 + spec.size_ms)
            self._index.insert(uniq[new], slots[new])
        self._add(batch, slots[inv], rows, v)
        return late

    # -- state ---------------------------------------------------------------------------

    def _new_slots(
        self, batch: pa.Table, rows: np.ndarray, kh: np.ndarray, start: np.ndarray, end: np.ndarray
    ) -> np.ndarray:
        s, n = self._s, len(rows)
        keys = batch.column(self.key).take(pa.array(rows)).to_numpy(zero_copy_only=False)
        given = {"key": keys, "kh": kh, "start": start, "end": end}
        base = len(s["start"])
        for name, (dtype, default) in _STATE.items():
            col = given[name].astype(dtype) if name in given else np.full(n, default, dtype)
            s[name] = np.concatenate([s[name], col])
        return np.arange(base, base + n)

    def _add(self, batch: pa.Table, slots: np.ndarray, rows: np.ndarray, v: np.ndarray) -> None:
        """Add the values of ``rows`` to the windows ``slots`` (one slot per row, repeats fine)."""
        s, x = self._s, v[rows]
        u, inv = np.unique(slots, return_inverse=True)
        s["count"][u] += np.bincount(inv, minlength=len(u))
        s["sum"][u] += np.bincount(inv, weights=x, minlength=len(u))
        np.minimum.at(s["min"], slots, x)
        np.maximum.at(s["max"], slots, x)
        s["dirty"][u] = True
        s["fresh"][u] = True
        if not self.top_k or not len(rows):
            return
        col = batch.column(self.item)
        valid = col.is_valid().to_numpy(zero_copy_only=False)[rows]  # null items are not counted
        rows, slots = rows[valid], slots[valid]
        ih = hash_keys(col)[rows]
        ids = _item_ids(slots, ih)
        u, first, inv = np.unique(ids, return_index=True, return_inverse=True)
        at = self._item_index.lookup(u)
        new = at < 0
        if new.any():
            it, n = self._items, len(self._items["slot"])
            r = rows[first[new]]
            add = {"slot": slots[first[new]], "ih": ih[first[new]]}
            add |= {"item": col.take(pa.array(r)).to_numpy(zero_copy_only=False).astype(object)}
            add |= {"count": np.zeros(len(r), np.int64)}
            self._items = {name: np.concatenate([it[name], add[name]]) for name in it}
            at[new] = np.arange(n, n + len(r))
            self._item_index.insert(u[new], at[new])
        self._items["count"][at] += np.bincount(inv, minlength=len(u))

    def _fold(self, src: np.ndarray, dst: np.ndarray) -> None:
        """Merge sessions ``src`` into ``dst`` (bridged by a new event); retract what they showed."""
        s = self._s
        self._retract(src[s["shown"][src]])
        np.add.at(s["count"], dst, s["count"][src])
        np.add.at(s["sum"], dst, s["sum"][src])
        np.minimum.at(s["min"], dst, s["min"][src])
        np.maximum.at(s["max"], dst, s["max"][src])
        np.logical_or.at(s["fired"], dst, s["fired"][src])
        s["count"][src] = 0  # empty: ignored from now on, dropped by the next compaction
        s["dirty"][src] = s["fresh"][src] = False
        if self.top_k:
            to = np.arange(len(s["start"]))
            to[src] = dst
            self._remap_items(to)

    def _remap_items(self, to: np.ndarray) -> None:
        """Renumber item counts' slots by ``to`` (-1: drop), adding up those that now coincide."""
        it = self._items
        slot = to[it["slot"]]
        keep = slot >= 0
        ids = _item_ids(slot[keep], it["ih"][keep])
        u, first, inv = np.unique(ids, return_index=True, return_inverse=True)
        count = np.zeros(len(u), np.int64)
        np.add.at(count, inv, it["count"][keep])
        self._items = {name: it[name][keep][first] for name in ("ih", "item")}
        self._items |= {"slot": slot[keep][first], "count": count}
        self._item_index = HashIndex()
        self._item_index.insert(u, np.arange(len(u)))

    def _compact(self, keep: np.ndarray) -> None:
        to = np.full(len(keep), -1, np.int64)
        to[keep] = np.arange(int(keep.sum()))
        self._s = {name: col[keep] for name, col in self._s.items()}
        if not self.spec.gap_ms:
            with np.errstate(over="ignore"):
                ids = self._s["kh"] ^ (self._s["start"].astype(np.uint64) * _MIX)
            self._index = HashIndex()
            self._index.insert(ids, np.arange(len(ids)))
        if self.top_k:
            self._remap_items(to)

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> pa.Table:
        """End of stream: fire every window still waiting for the watermark."""
        self.watermark = _MAX - self.spec.size_ms - self.spec.retention_ms
        return self._emit()

    def open_windows(self) -> int:
        s, lateness = self._s, self.spec.allowed_lateness_ms
        return int(((s["count"] > 0) & (s["end"] + lateness > self.watermark)).sum())

    def snapshot(self) -> bytes:
        """Everything needed to continue after a restart (saved with the checkpoint), as a
        ``windows`` snapshot (see :mod:`runtime.state.snapshot`); not the clock, which
        belongs to the process. Its layout:

        * meta: the spec and columns, ``watermark``, ``late_count``;
        * arrays: one per window column but the key (``kh``, ``start``, ``end``, ``count``,
          ``sum``, ``min``, ``max``, the flags, ``shown_start``/``shown_end``), one row per
          window; the top-k counts ``item_slot``, ``item_hash``, ``item_count``;
        * tables: ``keys`` (each window's key), ``items`` (each counted item, in the item
          column's own Arrow type), ``retracts`` (retractions not emitted yet).

        The hash indexes are not saved: they are rebuilt from the columns, as a
        compaction does (see :mod:`runtime.eventtime.window_state`)."""
        return pack(self.state_kind, *self.to_state())

    def to_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, pa.Table]]:
        """(meta, arrays, tables) of :meth:`snapshot` (for operator kinds)."""
        from runtime.eventtime.window_state import to_state

        return to_state(self)

    @staticmethod
    def from_state(state: State, clock: Callable[[], float] = _time.monotonic) -> Windows:
        """Windows from an unpacked snapshot (see :mod:`runtime.eventtime.window_state`)."""
        from runtime.eventtime.window_state import from_state

        return from_state(state, clock)

    @staticmethod
    def restore(
        blob: bytes, clock: Callable[[], float] = _time.monotonic, where: str | None = None
    ) -> Windows:
        """The saved state, with ``clock``; early firing counts its period from now.
        :class:`~runtime.errors.SnapshotError` (naming ``where``) for anything but a
        ``windows`` snapshot.

        >>> w = Windows(WindowSpec(size_ms=10), key="k", time="t", value="v")
        >>> _ = w.process(pa.table({"k": ["a", "b"], "t": [1, 4], "v": [1.0, 2.0]}))
        >>> again = Windows.restore(w.snapshot())
        >>> sorted(again.close().select(["k", "count", "emit"]).to_pylist(), key=str)
        [{'k': 'a', 'count': 1, 'emit': 'final'}, {'k': 'b', 'count': 1, 'emit': 'final'}]
        """
        state = unpack(blob, Windows.state_kind, where=where)
        with reading(Windows.state_kind, where):
            return Windows.from_state(state, clock)


def _item_ids(slots: np.ndarray, item_hashes: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return item_hashes ^ (slots.astype(np.uint64) * _MIX)
