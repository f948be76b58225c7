"""Fixed-width "last N" lists per entity, updated for a whole batch at once.

A ring is a row of a 2-D int64 state column: its values oldest first, newest last,
left-padded with 0 (empty). :func:`push` appends each entity's new values of a batch
(rows grouped by entity, arrival order kept) and keeps the last N.

>>> old = np.array([[0, 0, 7], [0, 0, 0]])
>>> vals = np.array([1, 2, 3, 4]); grp = np.array([0, 0, 1, 1]); gstart = np.array([0, 2])
>>> push(old, vals, np.array([True, True, False, True]), grp, gstart).tolist()
[[7, 1, 2], [0, 0, 4]]
>>> compact(np.array([[5, 0, 6]])).tolist()
[[0, 5, 6]]
"""

from __future__ import annotations

import numpy as np


def push(
    old: np.ndarray, values: np.ndarray, valid: np.ndarray, grp: np.ndarray, gstart: np.ndarray
) -> np.ndarray:
    """Rings ``old`` (one row per group) with the ``valid`` ``values`` of each group appended
    in order, the last ``old.shape[1]`` kept."""
    g, width = old.shape
    if not valid.any():
        return old.copy()
    v = valid.astype(np.int64)
    cum = np.cumsum(v)
    before = (cum - v)[gstart]  # valid rows before each group
    total = np.add.reduceat(v, gstart)
    from_end = total[grp] - (cum - before[grp])  # 0 for a group's last valid value
    sel = valid & (from_end < width)
    new = np.zeros((g, width), np.int64)
    new[grp[sel], width - 1 - from_end[sel]] = values[sel]
    return compact(np.concatenate([old, new], axis=1))[:, -width:]


def compact(rings: np.ndarray) -> np.ndarray:
    """Each row's non-zero values moved to its end, their order kept."""
    idx = np.argsort(rings != 0, axis=1, kind="stable")
    return np.take_along_axis(rings, idx, axis=1)
