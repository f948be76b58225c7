"""The layout of a batch grouped by entity, as the apps' vectorized ``apply`` methods use it.

>>> import numpy as np
>>> from types import SimpleNamespace
>>> batch = SimpleNamespace(slots=np.array([7, 5, 7]), order=np.array([1, 0, 2]), starts=np.array([0, 1]))
>>> [a.tolist() for a in by_entity(batch)]
[[5, 7, 7], [1, 2], [0, 1, 1], [0, 0, 1], [5, 7]]
"""

from __future__ import annotations

import numpy as np

from runtime import Batch


def by_entity(
    batch: Batch,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(s, gsize, grp, rank, gslot)`` of the rows in grouped order (``batch.order``: by
    entity, arrival order kept): each row's state slot, each group's size, each row's
    group and its place in it, and each group's slot."""
    gstart = batch.starts
    s = batch.slots[batch.order]
    n = len(s)
    gsize = np.diff(np.append(gstart, n))
    grp = np.repeat(np.arange(len(gstart)), gsize)
    rank = np.arange(n) - gstart[grp]
    return s, gsize, grp, rank, s[gstart]
