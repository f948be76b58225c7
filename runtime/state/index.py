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
import pyarrow as pa
import pyarrow.compute as pc


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
    """Set of int64 ids that remembers at least the ``capacity`` most recent ones.

    Ids live in generations of about ``generation`` ids, each a sorted array; new ids
    go into the newest generation, and the oldest generation is forgotten whole once
    the others still hold ``capacity`` ids. An insert touches the newest generation
    only, so the cost per batch stays flat on an endless stream; ids above every id
    seen (a file's or a log's rising ids) are appended to it in place, without a search.
    ``add_new`` answers, for each id of a batch, whether it is new, counting a repeat
    inside the same batch as seen (the first occurrence wins).
    """

    def __init__(self, capacity: int = 50_000_000, generation: int | None = None) -> None:
        self.capacity = capacity
        self.generation = generation or max(1 << 16, capacity // 8)
        self._gens: list[np.ndarray] = []  # oldest first; the last one takes new ids
        # the newest generation is a view of the front of this buffer, grown by doubling:
        # an insert then copies only what it adds (np.insert copied the whole generation,
        # 4 % of a replay's driver)
        self._tail: np.ndarray | None = None
        # small inserts (a live request's ids) go to a small sorted buffer first: copying a
        # generation of millions of ids for each would cost milliseconds per request
        self._recent = np.zeros(0, dtype=np.int64)
        self._buffer = min(1 << 16, self.generation)
        self._size = 0
        self._max = np.iinfo(np.int64).min  # the largest id ever added: above it, none is in

    def __len__(self) -> int:
        return self._size

    def ids(self) -> np.ndarray:
        """Every id remembered, oldest generation first (to hand the set to another process)."""
        return np.concatenate([*self._gens, self._recent])

    def contains(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        found = np.zeros(len(ids), dtype=bool)
        if (not self._gens and not len(self._recent)) or len(ids) == 0:
            return found
        order = np.argsort(ids)
        needles = ids[order]  # sorted needles keep each binary search in cache
        hit = np.zeros(len(ids), dtype=bool)
        for gen in [*self._gens, self._recent]:
            if len(gen):
                pos = np.minimum(np.searchsorted(gen, needles), len(gen) - 1)
                hit |= gen[pos] == needles
        found[order] = hit
        return found

    def add_new(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) and ids[0] > self._max and bool(np.all(ids[1:] > ids[:-1])):
            self.add(ids, ordered=True)  # rising and above all seen: every one is new
            return np.ones(len(ids), dtype=bool)
        new = ~self.contains(ids)
        _, first = np.unique(ids, return_index=True)
        first_mask = np.zeros(len(ids), dtype=bool)
        first_mask[first] = True
        new &= first_mask
        self.add(ids[new])
        return new

    def add(self, ids: np.ndarray, ordered: bool = False) -> None:
        """Add ids known to be absent and unique (``ordered``: and sorted already)."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return
        self._max = max(self._max, int(ids[-1] if ordered else ids.max()))
        if len(ids) < self._buffer:
            part = ids if ordered else np.sort(ids)
            self._recent = np.insert(self._recent, np.searchsorted(self._recent, part), part)
            if len(self._recent) < self._buffer:
                self._size += len(ids)
                self._forget()
                return
            ids, self._recent, ordered = self._recent, np.zeros(0, dtype=np.int64), True
            self._size -= len(ids) - len(part)  # they were counted when buffered
        while len(ids):
            if not self._gens or len(self._gens[-1]) >= self.generation:
                self._gens.append(np.zeros(0, dtype=np.int64))
                self._tail = None
            room = self.generation - len(self._gens[-1])
            part, ids = ids[:room], ids[room:]
            self._into_newest(part if ordered else np.sort(part))
            self._size += len(part)
        self._forget()

    def _into_newest(self, part: np.ndarray) -> None:
        """Merge sorted ``part`` into the newest generation (it has room for them)."""
        gen, n, k = self._gens[-1], len(self._gens[-1]), len(part)
        buf = self._tail
        if buf is None or len(buf) < n + k:
            grown = max(n + k, 2 * len(buf) if buf is not None else 0, 1 << 12)
            buf = np.empty(min(self.generation, grown), dtype=np.int64)
            buf[:n] = gen
            self._tail = buf
        if n == 0 or part[0] > buf[n - 1]:
            buf[n : n + k] = part  # after everything in it: an append
        else:
            buf[: n + k] = np.insert(buf[:n], np.searchsorted(buf[:n], part), part)
        self._gens[-1] = buf[: n + k]

    def _forget(self) -> None:
        while len(self._gens) > 1 and self._size - len(self._gens[0]) >= self.capacity:
            self._size -= len(self._gens.pop(0))


def seen_sets(rows: pa.Table, capacity: int) -> dict[str, SeenSet]:
    """Each scope's applied ids from the rows checkpoints saved (``scope``, ``event_id``,
    ``epoch``), oldest epoch first, so the oldest are forgotten first.

    Checkpoints append their ids epoch by epoch, so the rows are in order already but
    for a rare compaction: checking that costs 0.05 s for 20M ids, sorting the table
    3.3 s of a restart; one scope needs no filter (another 1.5 s).

    >>> rows = pa.table({"scope": ["a", "b", "a", "a"], "event_id": [3, 1, 2, 3], "epoch": [2, 1, 1, 1]})
    >>> {scope: s.ids().tolist() for scope, s in sorted(seen_sets(rows, 10).items())}
    {'a': [2, 3], 'b': [1]}
    """
    epochs = rows.column("epoch").to_numpy()
    if len(epochs) > 1 and bool((epochs[1:] < epochs[:-1]).any()):
        rows = rows.take(pa.array(np.argsort(epochs, kind="stable")))
    scopes = pc.unique(rows.column("scope")).to_pylist()
    out: dict[str, SeenSet] = {}
    for scope in scopes:
        part = rows if len(scopes) == 1 else rows.filter(pc.equal(rows.column("scope"), scope))
        ids = part.column("event_id").to_numpy()
        _, first = np.unique(ids, return_index=True)  # a repeat keeps its first place
        out[scope] = SeenSet(capacity)
        out[scope].add(ids[np.sort(first)])
    return out
