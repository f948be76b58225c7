"""The layout of a :class:`~runtime.eventtime.windows.Windows` snapshot: typed arrays,
Arrow tables and JSON, never a pickle (see :mod:`runtime.state.snapshot`).

Everything windows hold is data: per window its key (text), key hash, bounds, count,
sum, min, max, flags and the bounds it last showed; per counted item (top-k) its window,
hash, count and value, in the item column's own Arrow type; the spec, the watermark and
the late count. The hash indexes are rebuilt from the columns on the way in, as a
compaction does.

>>> import pyarrow as pa
>>> from runtime.eventtime.windows import WindowSpec
>>> w = Windows(WindowSpec(size_ms=10), "k", "t", "v", top_k=1, item="i")
>>> _ = w.process(pa.table({"k": ["a"], "t": [1], "v": [2.0], "i": [7]}))
>>> meta, arrays, tables = to_state(w)
>>> sorted(tables), tables["items"].schema.field("item").type, arrays["count"].tolist()
(['items', 'keys'], DataType(int64), [1])
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa

from runtime.eventtime.windows import _MIX, _STATE, Windows, WindowSpec, _item_ids
from runtime.state.snapshot import State


def to_state(w: Windows) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, pa.Table]]:
    """(meta, arrays, tables) of a ``windows`` snapshot of ``w`` (see :meth:`Windows.snapshot`)."""
    s, it = w._s, w._items
    meta = {
        "spec": asdict(w.spec),
        "columns": [w.key, w.time, w.value],
        "top_k": w.top_k,
        "item": w.item,
        "watermark": int(w.watermark),
        "late_count": int(w.late_count),
    }
    arrays = {name: col for name, col in s.items() if name != "key"}
    arrays |= {"item_slot": it["slot"], "item_hash": it["ih"], "item_count": it["count"]}
    tables = {
        "keys": pa.table({"key": pa.array(s["key"], pa.string())}),
        "items": pa.table({"item": pa.array(it["item"], w._item_type)}),
    }
    if w._retracts:  # emitted by the next batch or watermark (none after a process call)
        keys, starts, ends = (np.concatenate(c) for c in zip(*w._retracts, strict=True))
        tables["retracts"] = pa.table(
            {"key": pa.array(keys, pa.string()), "start": starts, "end": ends}
        )
    return meta, arrays, tables


def from_state(state: State, clock: Callable[[], float] = time.monotonic) -> Windows:
    """Windows from an unpacked ``windows`` snapshot, checked column by column; KeyError,
    TypeError or ValueError for one that does not hold what :func:`to_state` writes."""
    meta, arrays, tables = state.meta, state.arrays, state.tables
    key, time_col, value = meta["columns"]
    spec = WindowSpec(**meta["spec"])
    w = Windows(spec, key, time_col, value, top_k=meta["top_k"], item=meta["item"], clock=clock)
    w.watermark, w.late_count = int(meta["watermark"]), int(meta["late_count"])
    keys = _text(tables["keys"].column("key"))
    w._s = {"key": keys} | {
        name: _column(arrays[name], dtype, len(keys))
        for name, (dtype, _) in _STATE.items()
        if name != "key"
    }
    items = tables["items"].column("item")
    n = len(items)
    w._item_type = items.type
    w._items = {
        "slot": _column(arrays["item_slot"], np.int64, n),
        "ih": _column(arrays["item_hash"], np.uint64, n),
        "item": items.to_numpy(zero_copy_only=False).astype(object),
        "count": _column(arrays["item_count"], np.int64, n),
    }
    if n and not (w._items["slot"].min() >= 0 and w._items["slot"].max() < len(keys)):
        raise ValueError("an item count names a window that is not there")
    if "retracts" in tables:
        r = tables["retracts"]
        start, end = (
            _column(r.column(c).to_numpy(), np.int64, r.num_rows) for c in ("start", "end")
        )
        w._retracts = [(_text(r.column("key")), start, end)]
    if not spec.gap_ms:  # fixed windows are found by the hash of (key, start)
        with np.errstate(over="ignore"):
            ids = w._s["kh"] ^ (w._s["start"].astype(np.uint64) * _MIX)
        w._index.insert(ids, np.arange(len(ids)))
    w._item_index.insert(_item_ids(w._items["slot"], w._items["ih"]), np.arange(n))
    w._last_early = clock()
    return w


def _text(col: pa.ChunkedArray) -> np.ndarray:
    """Keys as the window state keeps them: an object array of str."""
    if not pa.types.is_string(col.type):
        raise TypeError(f"keys must be text, not {col.type}")
    return col.to_numpy(zero_copy_only=False).astype(object)


def _column(a: np.ndarray, dtype: type, n: int) -> np.ndarray:
    """A saved column as the window state keeps it: ``dtype``, one dimension, ``n`` rows."""
    if a.shape != (n,):
        raise ValueError(f"a column of shape {a.shape} where ({n},) was expected")
    return a.astype(dtype, copy=False)
