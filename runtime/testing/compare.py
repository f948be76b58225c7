"""Comparing what two runs of a kind left: the first differing field, rows as multisets.

>>> first_difference({"n": 1, "x": 1.0}, {"n": 1, "x": 1.5})
'x: 1.0 != 1.5'
>>> [b.num_rows for b in split(pa.table({"x": list(range(8))}))]
[1, 2, 3, 2]
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa

from runtime.entities.kind import EntityKind

SMALL_BATCHES = (1, 2, 3, 5)  # irregular sizes, cycled: boundaries fall everywhere
FLOAT_REL, FLOAT_ABS = 1e-9, 1e-9  # summation order may change the last bits of a float sum


def where(kind_cls: type[EntityKind]) -> str:
    return f"entity kind {kind_cls.name!r} ({kind_cls.__qualname__})"


# -- comparing values ------------------------------------------------------------------------
def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """Where ``a`` and ``b`` first differ (``path: a != b``), floats within tolerance.

    >>> first_difference({"n": 1, "x": [1.0, 2.0]}, {"n": 1, "x": [1.0, 2.5]})
    'x[1]: 2.0 != 2.5'
    >>> first_difference({"s": 0.1 + 0.2}, {"s": 0.3}) is None
    True
    """
    if isinstance(a, np.ndarray):
        a = a.tolist()
    if isinstance(b, np.ndarray):
        b = b.tolist()
    if isinstance(a, dict) and isinstance(b, dict):
        for k in [*a, *(k for k in b if k not in a)]:
            if k not in a or k not in b:
                side = "missing" if k not in a else "present"
                return f"{f'{path}.' if path else ''}{k}: {side} on one side only"
            found = first_difference(a[k], b[k], f"{path}.{k}" if path else str(k))
            if found:
                return found
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{path}: {len(a)} items != {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = first_difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None
    if isinstance(a, float) and isinstance(b, float):
        if (math.isnan(a) and math.isnan(b)) or math.isclose(
            a, b, rel_tol=FLOAT_REL, abs_tol=FLOAT_ABS
        ):
            return None
        return f"{path}: {a!r} != {b!r}"
    return None if a == b else f"{path}: {a!r} != {b!r}"


def _sort_key(row: dict[str, Any]) -> str:
    # floats to 9 digits: rows that agree within tolerance sort to the same place
    return repr([(k, f"{v:.9g}" if isinstance(v, float) else v) for k, v in row.items()])


def rows_of(table: pa.Table, drop: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Rows without topic bookkeeping (``_offset``...) and ``drop`` columns, sorted: a
    multiset, as emitted rows may come in any order across shards and batches."""
    keep = [c for c in table.column_names if not c.startswith("_") and c not in drop]
    return sorted(table.select(keep).to_pylist(), key=_sort_key)


def multiset_minus(rows: list[dict], earlier: list[dict]) -> list[dict]:
    """``rows`` without one occurrence of each of ``earlier`` (both from :func:`rows_of`)."""
    left = {}
    for r in earlier:
        left[_sort_key(r)] = left.get(_sort_key(r), 0) + 1
    out = []
    for r in rows:
        k = _sort_key(r)
        if left.get(k, 0):
            left[k] -= 1
        else:
            out.append(r)
    return out


def last_per_key(rows: pa.Table, keys: list[str]) -> pa.Table:
    """The last row of each key, in arrival order (a key's rows share a partition).

    >>> last_per_key(pa.table({"k": [1, 2, 1], "v": [5, 6, 7]}), ["k"]).to_pylist()
    [{'k': 2, 'v': 6}, {'k': 1, 'v': 7}]
    """
    n = pa.array(np.arange(rows.num_rows))
    last = rows.append_column("_n", n).group_by(keys, use_threads=False).aggregate([("_n", "max")])
    return rows.take(pa.array(np.sort(last.column("_n_max").to_numpy())))


def keys_of(kind_cls: type[EntityKind], events: pa.Table) -> list[str]:
    col = events.column(kind_cls.key)
    return sorted({str(k) for k in col.to_pylist() if k is not None})


def split(events: pa.Table, sizes: tuple[int, ...] = SMALL_BATCHES) -> list[pa.Table]:
    """``events`` cut into batches of the cycled ``sizes``."""
    out, lo, i = [], 0, 0
    while lo < events.num_rows:
        out.append(events.slice(lo, sizes[i % len(sizes)]))
        lo += sizes[i % len(sizes)]
        i += 1
    return out
