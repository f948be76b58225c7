"""Session windows for :class:`~runtime.eventtime.windows.Windows`: which events are too
late for their key's sessions, and how a batch's sessions merge with the open ones.

A key's events less than a gap apart form one session. A batch can start sessions,
extend them (also back in time) and bridge two, which then fold into one; what a moved
session had emitted is retracted. Everything is vectorized over the batch's keys.

>>> import numpy as np
>>> _group_cummax(np.array([0, 0, 0, 1, 1]), np.array([3, 1, 4, 2, 0])).tolist()
[3, 3, 4, 2, 2]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from runtime.eventtime.windows import WindowSpec


class SessionWindows:
    """The session half of :class:`~runtime.eventtime.windows.Windows` (a mixin: it uses
    the window state, ``_new_slots``, ``_add``, ``_fold`` and ``_retract`` of the class)."""

    spec: WindowSpec
    watermark: int
    _s: dict[str, np.ndarray]

    def _sessions(
        self, batch: pa.Table, t: np.ndarray, kh: np.ndarray, v: np.ndarray
    ) -> np.ndarray:
        s = self._s
        ukh, kc = np.unique(kh, return_inverse=True)  # kc: key code of each event
        cand = np.flatnonzero((s["count"] > 0) & np.isin(s["kh"], ukh))  # sessions of these keys
        ck = np.searchsorted(ukh, s["kh"][cand])
        order = np.lexsort((s["start"][cand], ck))
        cand, ck = cand[order], ck[order]
        late = self._late_for_sessions(t, kc, ck, s["start"][cand], s["end"][cand])
        acc = np.flatnonzero(~late)
        if len(acc):
            acc = acc[np.lexsort((t[acc], kc[acc]))]
            self._add(batch, self._session_slots(batch, acc, t, kc, kh, cand, ck), acc, v)
        return late

    def _late_for_sessions(
        self, t: np.ndarray, kc: np.ndarray, ck: np.ndarray, cs: np.ndarray, ce: np.ndarray
    ) -> np.ndarray:
        """Late: the event's own session [t, t + gap) would be closed past its lateness, or it
        would touch (come within a gap of) a session that is: accepting it would reopen a
        result that was final for good. (ck, cs, ce): key code, start, end of the sessions
        kept for the batch's keys, sorted by key and start."""
        gap, lateness, wm = self.spec.gap_ms or 0, self.spec.allowed_lateness_ms, self.watermark
        late = t + gap + lateness <= wm
        if len(ck):
            # Sessions of a key are a gap apart, so an event touches at most the last one
            # that starts before t + gap and the one before that.
            j1 = _last_le(ck, cs, kc, t + gap - 1)
            for j in (j1, j1 - 1):
                jj = np.maximum(j, 0)
                touch = (j >= 0) & (ck[jj] == kc) & (ce[jj] > t)
                late |= touch & (ce[jj] + lateness <= wm)
        return late

    def _session_slots(
        self,
        batch: pa.Table,
        acc: np.ndarray,
        t: np.ndarray,
        kc: np.ndarray,
        kh: np.ndarray,
        cand: np.ndarray,
        ck: np.ndarray,
    ) -> np.ndarray:
        """The session slot of each accepted event (``acc``, sorted by key and time): merges
        the batch's sessions with the open ones of the same keys, creating and folding."""
        s, gap = self._s, self.spec.gap_ms or 0
        # the batch's own sessions: split where the key changes or a gap opens
        ta, ka = t[acc], kc[acc]
        split = np.r_[True, (ka[1:] != ka[:-1]) | (np.diff(ta) >= gap)]
        b_of = np.cumsum(split) - 1  # batch session of each accepted event
        bfirst = np.flatnonzero(split)
        blast = ta[np.r_[bfirst[1:], len(ta)] - 1]
        # With the open sessions, as intervals sorted by (key, start): one joins the one
        # before when it starts within a gap of the latest event so far (of its key).
        live = s["end"][cand] + self.spec.allowed_lateness_ms > self.watermark
        ik = np.r_[ck[live], ka[bfirst]]
        i0 = np.r_[s["start"][cand[live]], ta[bfirst]]
        tag = np.r_[cand[live], -1 - np.arange(len(bfirst))]  # slot, or -1 - batch session
        o = np.lexsort((i0, ik))
        ik, i0, tag = ik[o], i0[o], tag[o]
        reach = _group_cummax(ik, np.r_[s["end"][cand[live]] - gap, blast][o])
        new = np.r_[True, (ik[1:] != ik[:-1]) | (i0[1:] - reach[:-1] >= gap)]
        g = np.cumsum(new) - 1
        gfirst = np.flatnonzero(new)
        g0, g1 = i0[gfirst], reach[np.r_[gfirst[1:], len(ik)] - 1] + gap
        # a merged session keeps the slot of its earliest open session; the others fold in
        old = tag >= 0
        target = np.full(len(gfirst), -1, np.int64)
        with_old, firsts = np.unique(g[old], return_index=True)
        target[with_old] = tag[old][firsts]
        folded = old & (tag != target[g])
        if folded.any():
            self._fold(tag[folded], target[g[folded]])
        kept = target >= 0
        ts = target[kept]
        self._retract(ts[s["shown"][ts] & (g0[kept] < s["start"][ts])])  # moved back
        s["start"][ts], s["end"][ts] = g0[kept], g1[kept]
        if not kept.all():
            rows = acc[bfirst[-1 - tag[gfirst[~kept]]]]  # all members are the batch's
            target[~kept] = self._new_slots(batch, rows, kh[rows], g0[~kept], g1[~kept])
        group_of_b = np.empty(len(bfirst), np.int64)
        group_of_b[-1 - tag[~old]] = g[~old]
        return target[group_of_b[b_of]]


def _last_le(keys: np.ndarray, pos: np.ndarray, qkeys: np.ndarray, qpos: np.ndarray) -> np.ndarray:
    """For each query (qkey, qpos), the index of the last entry of the (keys, pos)-sorted
    entries that is <= it, or -1: a searchsorted over two columns, by one merged sort."""
    n = len(keys)
    kind = np.r_[np.zeros(n, np.int8), np.ones(len(qpos), np.int8)]  # entries before queries
    order = np.lexsort((kind, np.r_[pos, qpos], np.r_[keys, qkeys]))
    last = np.maximum.accumulate(np.where(order < n, order, -1))
    out = np.empty(len(qpos), np.int64)
    out[order[order >= n] - n] = last[order >= n]
    return out


def _group_cummax(group: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Running max of ``x`` restarting at each group (``group``: sorted small ints): one
    accumulate over ranks offset per group, which never carry across groups."""
    order = np.argsort(x, kind="stable")
    rank = np.empty(len(x), np.int64)
    rank[order] = np.arange(len(x))
    offset = group.astype(np.int64) * len(x)
    return x[order[np.maximum.accumulate(offset + rank) - offset]]
