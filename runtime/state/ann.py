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
from typing import Any

import numpy as np

from runtime.errors import ConfigError

_KMEANS_ITERS = 8
_ASSIGN_CHUNK = 1 << 15
#: (query, list) visits up to which each query scores its own lists: below it the per-list
#: grouping costs more in numpy calls than it saves in products
_FEW_VISITS = 64  # rows assigned to lists at once: bounds the (rows, lists) scores


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
        vectors = arrays["vectors"]  # in row order, as _set takes them
        rows = arrays["rows"]
        list_of = np.repeat(np.arange(len(arrays["centres"])), np.diff(arrays["offsets"]))
        assign = np.empty(len(rows), np.int64)
        assign[rows] = list_of
        self._set(vectors, arrays["centres"], assign, nprobe)
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
        exclude: Sequence[np.ndarray] | np.ndarray | None = None,
        nprobe: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` rows by cosine similarity for each query: ``(ids, scores)``, both
        ``(queries, k)``, best first; ``-1`` / ``-inf`` pad a query that found fewer.

        ``allowed`` (a bool per row) narrows this search beyond :meth:`set_allowed`;
        ``exclude[i]`` holds row ids query ``i`` must not return (a list of arrays, or a
        2-D array padded with -1).

        Queries are answered together, list by list: each probed list scores all the
        queries that probe it with one matrix product and keeps their best few, so a batch
        of thousands costs about as many products as there are lists."""
        q = unit(np.atleast_2d(queries))
        if q.shape[1] != self.dim:
            raise ConfigError(f"queries have {q.shape[1]} dimensions; the index has {self.dim}")
        n_q = len(q)
        ids = np.full((n_q, max(k, 0)), -1, np.int64)
        scores = np.full((n_q, max(k, 0)), -np.inf, np.float32)
        if k <= 0 or n_q == 0:
            return ids, scores
        ok = self._allowed if allowed is None else self._allowed & np.asarray(allowed)[self.rows]
        ex = _padded(exclude, n_q)
        probe = max(1, min(nprobe or self.nprobe, len(self.centres)))
        todo = np.arange(n_q)
        with _one_blas_thread():
            while len(todo):
                got_ids, got_scores = self._probe(q[todo], ex[todo], ok, k, probe)
                ids[todo], scores[todo] = got_ids, got_scores
                short = (got_ids[:, -1] < 0) & (probe < len(self.centres))
                # too few allowed rows found: widen (to every list at most)
                todo, probe = todo[short], min(probe * 2, len(self.centres))
        return ids, scores

    def _probe(
        self, q: np.ndarray, ex: np.ndarray, ok: np.ndarray, k: int, probe: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top ``k`` over the ``probe`` lists nearest each query."""
        n_q, n_lists = len(q), len(self.centres)
        near = q @ self.centres.T
        lists = (
            np.argpartition(-near, probe - 1, axis=1)[:, :probe]
            if probe < n_lists
            else np.broadcast_to(np.arange(n_lists), (n_q, n_lists))
        )
        keep = k + ex.shape[1]  # excluded rows may take places in a list's best
        # grouping by list pays when lists are shared: a grouped list costs about twice
        # what one query's visit to a list costs alone
        if n_q * probe < 2 * len(np.unique(lists)):
            return self._probe_each(q, lists, ex, ok, k, keep)
        cand = np.full((n_q, probe, keep), -1, np.int64)  # positions in list order
        cand_s = np.full((n_q, probe, keep), -np.inf, np.float32)
        flat = lists.ravel()
        by_list = np.argsort(flat, kind="stable")
        bounds = np.searchsorted(flat[by_list], np.arange(n_lists + 1))
        for c in np.flatnonzero(np.diff(bounds)).tolist():
            pick = by_list[bounds[c] : bounds[c + 1]]
            qi, slot = pick // probe, pick % probe
            lo, hi = int(self.offsets[c]), int(self.offsets[c + 1])
            if hi == lo:
                continue
            s = q[qi] @ self.vectors[lo:hi].T
            s[:, ~ok[lo:hi]] = -np.inf
            m = min(keep, hi - lo)
            top = np.argpartition(-s, m - 1, axis=1)[:, :m] if hi - lo > m else np.arange(m)[None]
            top = np.broadcast_to(top, (len(qi), m))
            cand[qi, slot, :m] = lo + top
            cand_s[qi, slot, :m] = np.take_along_axis(s, top, axis=1)
        cand, cand_s = cand.reshape(n_q, -1), cand_s.reshape(n_q, -1)
        rows = np.where(cand >= 0, self.rows[np.maximum(cand, 0)], -1)
        if ex.shape[1]:
            hit = (rows[:, :, None] == ex[:, None, :]).any(axis=2)
            cand_s[hit] = -np.inf
        best = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        out_s = np.take_along_axis(cand_s, best, axis=1)
        out = np.where(np.isfinite(out_s), np.take_along_axis(rows, best, axis=1), -1)
        if out.shape[1] < k:  # fewer candidates than k in all: pad
            pad = k - out.shape[1]
            out = np.pad(out, ((0, 0), (0, pad)), constant_values=-1)
            out_s = np.pad(out_s, ((0, 0), (0, pad)), constant_values=-np.inf)
        return out, out_s

    def _probe_each(
        self, q: np.ndarray, lists: np.ndarray, ex: np.ndarray, ok: np.ndarray, k: int, keep: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Few queries: each scores its lists (contiguous slices, no copy) in one pass."""
        out = np.full((len(q), k), -1, np.int64)
        out_s = np.full((len(q), k), -np.inf, np.float32)
        for i in range(len(q)):
            spans = [(int(self.offsets[c]), int(self.offsets[c + 1])) for c in lists[i].tolist()]
            s = np.concatenate([self.vectors[lo:hi] @ q[i] for lo, hi in spans])
            pos = np.concatenate([np.arange(lo, hi) for lo, hi in spans])
            s[~ok[pos]] = -np.inf
            if len(s) > keep:
                top = np.argpartition(-s, keep - 1)[:keep]
                pos, s = pos[top], s[top]
            rows = self.rows[pos]
            if ex.shape[1]:
                gone = (rows[:, None] == ex[i][None, :]).any(axis=1)
                s = np.where(gone, -np.inf, s)
            best = np.argsort(-s, kind="stable")[:k]
            fine = np.isfinite(s[best])
            m = int(fine.sum())
            out[i, :m], out_s[i, :m] = rows[best][fine], s[best][fine]
        return out, out_s


_BLAS: list[Any] = []


def _one_blas_thread() -> Any:
    """BLAS on one thread for the search's many small products: OpenBLAS threads that wake
    for a (100 x 64) @ (64 x 300) product cost 10x the product itself, and 300x (9 ms a
    product, measured) when the cores are busy with other actors."""
    if not _BLAS:
        from threadpoolctl import ThreadpoolController

        _BLAS.append(ThreadpoolController())
    return _BLAS[0].limit(limits=1, user_api="blas")


def _padded(exclude: Sequence[np.ndarray] | np.ndarray | None, n: int) -> np.ndarray:
    """Per-query exclusions as an (n, width) array padded with -1."""
    if exclude is None:
        return np.full((n, 0), -1, np.int64)
    if isinstance(exclude, np.ndarray) and exclude.ndim == 2:
        return exclude.astype(np.int64)
    width = max((len(e) for e in exclude), default=0)
    out = np.full((n, width), -1, np.int64)
    for i, e in enumerate(exclude[:n]):
        out[i, : len(e)] = e
    return out


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
