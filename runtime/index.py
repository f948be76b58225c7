"""Sorted-array indexes over 64-bit keys: vectorized lookup, insert and delete.

A Python dict costs ~1 µs per key; these cost a binary search per key done by
numpy over a whole batch, and a linear merge per batch that inserts anything.
They back the shard's key → slot map and the runtime's set of applied event ids.

>>> idx = HashIndex()
>>> idx.insert(np.array([30, 10], dtype=np.uint64), np.array([0, 1]))
>>> idx.lookup(np.array([10, 20, 30], dtype=np.uint64)).tolist()
[1, -1, 0]
>>> seen = SeenSet()
>>> seen.add_new(np.array([5, 6, 5, 7])).tolist()
[True, True, False, True]
>>> seen.add_new(np.array([7, 8])).tolist()
[False, True]
"""

from __future__ import annotations

import numpy as np


class HashIndex:
    """Map of unique uint64 keys to int64 values, kept as two sorted parallel arrays."""

    def __init__(self) -> None:
        self.keys = np.zeros(0, dtype=np.uint64)
        self.values = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.keys)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Value for each key, -1 where absent."""
        if len(self.keys) == 0:
            return np.full(len(keys), -1, dtype=np.int64)
        pos = np.searchsorted(self.keys, keys)
        pos_c = np.minimum(pos, len(self.keys) - 1)
        found = self.keys[pos_c] == keys
        return np.where(found, self.values[pos_c], -1)

    def insert(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Add keys that are not present yet (the caller guarantees both uniqueness and absence)."""
        if len(keys) == 0:
            return
        order = np.argsort(keys, kind="stable")
        keys = np.asarray(keys, dtype=np.uint64)[order]
        values = np.asarray(values, dtype=np.int64)[order]
        pos = np.searchsorted(self.keys, keys)
        self.keys = np.insert(self.keys, pos, keys)
        self.values = np.insert(self.values, pos, values)

    def delete(self, keys: np.ndarray) -> None:
        """Remove the given keys (absent ones are ignored)."""
        if len(keys) == 0 or len(self.keys) == 0:
            return
        keep = ~np.isin(self.keys, keys)
        self.keys = self.keys[keep]
        self.values = self.values[keep]


class SeenSet:
    """Set of int64 ids with a bounded size: the oldest-inserted ids are forgotten first.

    ``add_new`` answers, for each id of a batch, whether it is new, counting a
    repeat inside the same batch as seen (the first occurrence wins).
    """

    def __init__(self, capacity: int = 50_000_000) -> None:
        self.capacity = capacity
        self._sorted = np.zeros(0, dtype=np.int64)
        self._fifo: list[np.ndarray] = []  # insertion order, for eviction
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def contains(self, ids: np.ndarray) -> np.ndarray:
        if len(self._sorted) == 0:
            return np.zeros(len(ids), dtype=bool)
        pos = np.minimum(np.searchsorted(self._sorted, ids), len(self._sorted) - 1)
        return self._sorted[pos] == ids

    def add_new(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        new = ~self.contains(ids)
        _, first = np.unique(ids, return_index=True)
        first_mask = np.zeros(len(ids), dtype=bool)
        first_mask[first] = True
        new &= first_mask
        self.add(ids[new])
        return new

    def add(self, ids: np.ndarray) -> None:
        """Add ids known to be absent and unique."""
        if len(ids) == 0:
            return
        ids = np.asarray(ids, dtype=np.int64)
        srt = np.sort(ids)
        self._sorted = np.insert(self._sorted, np.searchsorted(self._sorted, srt), srt)
        self._fifo.append(ids)
        self._size += len(ids)
        while self._size > self.capacity and self._fifo:
            excess = self._size - self.capacity
            oldest = self._fifo[0]
            if len(oldest) <= excess:
                old = self._fifo.pop(0)
            else:  # forget only the oldest part of this batch
                old, self._fifo[0] = oldest[:excess], oldest[excess:]
            self._sorted = self._sorted[~np.isin(self._sorted, old)]
            self._size -= len(old)
