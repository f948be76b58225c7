"""Firing for :class:`~runtime.eventtime.windows.Windows`: the rows a window emits
(``final``, ``update``, ``early``), the ``retract`` rows of sessions that moved, and
each window's top items.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from runtime.eventtime.windows import WindowSpec


class Firing:
    """The output half of :class:`~runtime.eventtime.windows.Windows` (a mixin: it reads
    the window state and compacts it through ``_compact`` of the class)."""

    spec: WindowSpec
    key: str
    watermark: int
    top_k: int | None
    clock: Callable[[], float]
    purge_after: int
    _s: dict[str, np.ndarray]
    _items: dict[str, np.ndarray]
    _item_type: pa.DataType
    _retracts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    _last_early: float

    def _emit(self) -> pa.Table:
        """Retractions, then windows the watermark passed (first time: final; again: update),
        then early firings if due; purge the windows past their retention, in bulk."""
        s, spec = self._s, self.spec
        parts = [self._retracted()] if self._retracts else []
        due = np.flatnonzero((s["end"] <= self.watermark) & s["dirty"])
        parts.append(self._rows(due, np.where(s["fired"][due], "update", "final")))
        s["fired"][due] = True
        s["dirty"][due] = s["fresh"][due] = False
        now = self.clock()
        if spec.early_fire_ms and (now - self._last_early) * 1000 >= spec.early_fire_ms:
            self._last_early = now
            early = np.flatnonzero(s["fresh"] & ~s["fired"])
            parts.append(self._rows(early, np.full(len(early), "early")))
            s["fresh"][early] = False
        gone = (s["end"] + spec.retention_ms <= self.watermark) | (s["count"] == 0)
        if gone.sum() > max(self.purge_after, len(gone) // 4):
            self._compact(~gone)
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]

    def _schema(self) -> pa.Schema:
        fields = [(self.key, pa.string()), ("window_start", pa.int64()), ("window_end", pa.int64())]
        fields += [("count", pa.int64())] + [
            (c, pa.float64()) for c in ("sum", "min", "max", "mean")
        ]
        fields += [("emit", pa.string())]
        if self.top_k:
            item = pa.struct([("item", self._item_type), ("count", pa.int64())])
            fields += [("top_items", pa.list_(item))]
        return pa.schema(fields)

    def _rows(self, idx: np.ndarray, emit: np.ndarray) -> pa.Table:
        s = self._s
        s["shown"][idx] = True
        s["shown_start"][idx], s["shown_end"][idx] = s["start"][idx], s["end"][idx]
        count = s["count"][idx]
        cols = [pa.array(s["key"][idx], pa.string()), s["start"][idx], s["end"][idx], count]
        cols += [s["sum"][idx], s["min"][idx], s["max"][idx], s["sum"][idx] / np.maximum(count, 1)]
        cols += [pa.array(emit, pa.string())] + ([self._top(idx)] if self.top_k else [])
        return pa.Table.from_arrays(cols, schema=self._schema())

    def _retract(self, slots: np.ndarray) -> None:
        s = self._s
        if not len(slots):
            return
        self._retracts.append((s["key"][slots], s["shown_start"][slots], s["shown_end"][slots]))
        s["shown"][slots] = False

    def _retracted(self) -> pa.Table:
        """Rows that take back what a session emitted under a start it no longer has."""
        keys, starts, ends = (np.concatenate(c) for c in zip(*self._retracts, strict=True))
        self._retracts = []
        schema, n = self._schema(), len(keys)
        cols = [pa.array(keys, pa.string()), pa.array(starts), pa.array(ends)]
        cols += [pa.nulls(n, schema.field(c).type) for c in ("count", "sum", "min", "max", "mean")]
        cols += [pa.array(["retract"] * n, pa.string())]
        cols += [pa.nulls(n, schema.field("top_items").type)] if self.top_k else []
        return pa.Table.from_arrays(cols, schema=schema)

    def _top(self, idx: np.ndarray) -> pa.Array:
        """For each window of ``idx``: its top_k items by count (ties: smaller item first)."""
        it = self._items
        pos = np.full(len(self._s["start"]), -1, np.int64)
        pos[idx] = np.arange(len(idx))
        sel = np.flatnonzero(pos[it["slot"]] >= 0)
        g, count, item = pos[it["slot"][sel]], it["count"][sel], it["item"][sel]
        rank = np.unique(item, return_inverse=True)[1] if len(item) else np.zeros(0, np.int64)
        o = np.lexsort((rank, -count, g))
        g, count, item = g[o], count[o], item[o]
        keep = np.arange(len(g)) - np.searchsorted(g, g) < (self.top_k or 0)  # place in window
        g, count, item = g[keep], count[keep], item[keep]
        offsets = pa.array(np.searchsorted(g, np.arange(len(idx) + 1)).astype(np.int32))
        values = pa.StructArray.from_arrays(
            [pa.array(item, self._item_type), pa.array(count, pa.int64())], names=["item", "count"]
        )
        return pa.ListArray.from_arrays(offsets, values)
