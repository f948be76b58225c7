"""An in-memory IVF-flat index: cosine top-k over unit vectors in a few milliseconds.

:class:`~runtime.state.vectors.VectorTable` keeps vectors in LanceDB, searchable by SQL
and by ANN, but a LanceDB query costs tens of milliseconds at a million rows
(``scripts/bench_vectors.py``: p50 85 ms with a prefilter). A hot path that answers in
milliseconds keeps its vectors in memory - memory first, LanceDB behind - and searches
them with this index.

The rows are clustered by spherical k-means (on a sample) into ``~sqrt(n)`` lists and
stored list by list, so a list is one contiguous slice: a query scores the ``nprobe``
lists whose centres are nearest it with one matrix-vector product each, exactly (no
quantization). A row filter (``allowed``, e.g. in stock) is kept in list order and
applied to the scores; per-query ``exclude`` drops given rows (e.g. what is in the cart).
When fewer than ``k`` allowed rows are found, the probe widens (doubles) until it has
them or has seen every list.

Everything is numpy arrays (:meth:`MemoryIndex.arrays` / :meth:`MemoryIndex.from_arrays`),
so the index can be saved beside its table as data and loaded without rebuilding.

>>> rng = np.random.default_rng(0)
>>> v = rng.standard_normal((5_000, 16)).astype(np.float32)
>>> idx = MemoryIndex(v, seed=0)
>>> ids, scores = idx.search(v[:3], k=5)
>>> ids[:, 0].tolist()  # each row is its own nearest neighbour
[0, 1, 2]
>>> allowed = np.ones(5_000, bool); allowed[1] = False
>>> ids, _ = idx.search(v[1:2], k=3, allowed=allowed, exclude=[np.array([7])])
>>> 1 in ids[0] or 7 in ids[0]
False
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from runtime.errors import ConfigError

_KMEANS_ITERS = 8
_ASSIGN_CHUNK = 1 << 15  # rows assigned to lists at once: bounds the (rows, lists) scores


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as float32 (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, np.float32(1e-12))


class MemoryIndex:
    """Cosine top-k over ``vectors`` (n x d), IVF-flat, in memory."""

    def __init__(
        self,
        vectors: np.ndarray,
        n_lists: int | None = None,
        nprobe: int = 8,
        seed: int = 0,
        sample: int = 64,
    ) -> None:
        v = unit(vectors)
        if v.ndim != 2 or len(v) == 0:
            raise ConfigError(f"MemoryIndex needs a non-empty 2-D array, got shape {v.shape}")
        n = len(v)
        n_lists = n_lists or max(1, min(n // 32, round(math.sqrt(n))))
        rng = np.random.default_rng(seed)
        pick = rng.choice(n, size=min(n, n_lists * sample), replace=False)
        centres = _spherical_kmeans(v[pick], n_lists, rng)
        self._set(v, centres, _assign(v, centres), nprobe)

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], nprobe: int = 8) -> MemoryIndex:
        """An index from what :meth:`arrays` returned (no clustering again)."""
        self = cls.__new__(cls)
        vectors = arrays["vectors"]
        rows = arrays["rows"]
        back = np.empty_like(rows)
        back[rows] = np.arange(len(rows))
        list_of = np.repeat(np.arange(len(arrays["centres"])), np.diff(arrays["offsets"]))
        assign = np.empty(len(rows), np.int64)
        assign[rows] = list_of
        self._set(vectors[back], arrays["centres"], assign, nprobe)
        return self

    def _set(self, v: np.ndarray, centres: np.ndarray, assign: np.ndarray, nprobe: int) -> None:
        order = np.argsort(assign, kind="stable")
        self.rows = order  # position in list order -> row id
        self.pos = np.empty_like(order)
        self.pos[order] = np.arange(len(order))  # row id -> position
        self.vectors = np.ascontiguousarray(v[order])
        self.centres = centres.astype(np.float32)
        counts = np.bincount(assign, minlength=len(centres))
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self.nprobe = max(1, min(nprobe, len(centres)))
        self._allowed = np.ones(len(order), bool)  # in list order

    # -- state --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def arrays(self) -> dict[str, np.ndarray]:
        """The index as plain arrays (vectors in row order), for saving as data."""
        return {
            "vectors": self.vectors[self.pos],
            "centres": self.centres,
            "offsets": self.offsets,
            "rows": self.rows,
        }

    def vector(self, rows: np.ndarray) -> np.ndarray:
        """The unit vectors of row ids ``rows``."""
        return self.vectors[self.pos[rows]]

    def set_allowed(self, allowed: np.ndarray | None) -> None:
        """The rows every search may return from now on (None: all)."""
        if allowed is None:
            self._allowed[:] = True
        else:
            self._allowed = np.asarray(allowed, bool)[self.rows]

    # -- search -------------------------------------------------------------------------------
    def search(
        self,
        queries: np.ndarray,
        k: int,
        allowed: np.ndarray | None = None,
        exclude: Sequence[np.ndarray] | None = None,
        nprobe: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` rows by cosine similarity for each query: ``(ids, scores)``, both
        ``(queries, k)``, best first; ``-1`` / ``-inf`` pad a query that found fewer.

        ``allowed`` (a bool per row) narrows this search beyond :meth:`set_allowed`;
        ``exclude[i]`` holds row ids query ``i`` must not return."""
        q = unit(np.atleast_2d(queries))
        if q.shape[1] != self.dim:
            raise ConfigError(f"queries have {q.shape[1]} dimensions; the index has {self.dim}")
        n_q = len(q)
        ids = np.full((n_q, k), -1, np.int64)
        scores = np.full((n_q, k), -np.inf, np.float32)
        if k <= 0 or n_q == 0:
            return ids, scores
        ok = self._allowed if allowed is None else self._allowed & np.asarray(allowed)[self.rows]
        probe = max(1, min(nprobe or self.nprobe, len(self.centres)))
        by_centre = np.argsort(-(q @ self.centres.T), axis=1)
        for i in range(n_q):
            ex = exclude[i] if exclude is not None and i < len(exclude) else None
            ex_pos = self.pos[np.asarray(ex, np.int64)] if ex is not None and len(ex) else None
            p = probe
            while True:
                got = self._probe(q[i], by_centre[i, :p], ok, ex_pos, k)
                if len(got[0]) >= k or p >= len(self.centres):
                    break
                p *= 2
            m = len(got[0])
            ids[i, :m], scores[i, :m] = got
        return ids, scores

    def _probe(
        self,
        q: np.ndarray,
        lists: np.ndarray,
        ok: np.ndarray,
        ex_pos: np.ndarray | None,
        k: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores over the rows of ``lists``; the best ``k`` allowed ones."""
        pos = np.concatenate(
            [np.arange(self.offsets[c], self.offsets[c + 1]) for c in lists.tolist()]
        )
        s = self.vectors[pos] @ q
        keep = ok[pos]
        if ex_pos is not None:
            keep &= ~np.isin(pos, ex_pos)
        pos, s = pos[keep], s[keep]
        if len(s) > k:
            top = np.argpartition(-s, k - 1)[:k]
            pos, s = pos[top], s[top]
        best = np.argsort(-s, kind="stable")
        return self.rows[pos[best]], s[best]


def _spherical_kmeans(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` unit centres of the unit rows ``x`` (cosine k-means, a few Lloyd steps)."""
    k = min(k, len(x))
    centres = x[rng.choice(len(x), size=k, replace=False)].copy()
    for _ in range(_KMEANS_ITERS):
        assign = _assign(x, centres)
        sums = np.zeros_like(centres)
        np.add.at(sums, assign, x)
        empty = np.bincount(assign, minlength=k) == 0
        # an empty list takes a random row: no centre is wasted
        sums[empty] = x[rng.choice(len(x), size=int(empty.sum()))]
        centres = unit(sums)
    return centres


def _assign(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """The nearest centre of each row, in chunks (a 1M x 1k score matrix would be 4 GB)."""
    out = np.empty(len(x), np.int64)
    for lo in range(0, len(x), _ASSIGN_CHUNK):
        out[lo : lo + _ASSIGN_CHUNK] = np.argmax(x[lo : lo + _ASSIGN_CHUNK] @ centres.T, axis=1)
    return out
