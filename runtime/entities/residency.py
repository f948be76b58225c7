"""Which entities of a shard are in memory and which in LanceDB, and moving them between.

An entity becomes active on its first event or call: its stored profile is loaded if
there is one, else it starts from the defaults. When more than ``max_active`` are
active (or some were idle for ``idle_seconds``), the least recently used are
passivated: changed state moves to an outbox that the next checkpoint writes, and
their memory is reused. An entity asked for again before that comes back from the
outbox, so nothing written is ever read stale.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from runtime.entities.kind import EntityKind
from runtime.state.fields import ColumnarState
from runtime.state.keys import as_signed, shard_of
from runtime.state.store import Store

#: stored entities brought back at once up to which an ``IN`` filter reads them; more
#: are found in one scan of the table (see Residency._read_stored)
IN_LIST_MAX = 20_000


class Residency:
    """One shard's entities: live in ``state``, the rest stored or in the outbox."""

    def __init__(
        self,
        kind_cls: type[EntityKind],
        store: Store,
        max_active: int,
        idle_seconds: float | None,
        clock: Callable[[], float],
        counters: dict[str, Any],
        site: str | None = None,
    ) -> None:
        self.name, self.key, self.site_key = kind_cls.name, kind_cls.key, kind_cls.site_key
        #: the site served (site-partitioned kinds): stored profiles carry it
        self.site = site
        self.state = ColumnarState(kind_cls.spec(), key=kind_cls.key)
        self.store = store
        self.max_active = max(1, int(max_active))
        self.idle_seconds = idle_seconds
        self.now = clock
        self.counters = counters  # the shard's: loaded and passivated are counted here
        # one entry per second of activity: when it began, when it last saw a batch, and
        # that batch's seq; maps "idle since" to a seq with at most idle_seconds entries
        self._clock_first: list[float] = []
        self._clock_last: list[float] = []
        self._clock_seq: list[int] = []
        self.outbox: list[pa.Table] = []
        self.outbox_hash = np.zeros(0, dtype=np.uint64)
        # what the last drain took out of the outbox: the commit that writes it to LanceDB
        # comes after the feeders resume, so until the next drain (the commit is done by
        # then) an entity asked for comes back from here, not from an older stored row
        self.handed: pa.Table | None = None
        self.handed_hash = np.zeros(0, dtype=np.uint64)
        self._drained_live = np.zeros(0, dtype=np.uint64)  # drained while in memory
        self.stored = np.zeros(0, dtype=np.uint64)  # sorted hashes with a stored profile
        self.tag_sites = site is not None

    @property
    def outbox_size(self) -> int:
        return int(len(self.outbox_hash))

    def known_elsewhere(self, hashes: np.ndarray) -> np.ndarray:
        """Which of ``hashes`` are stored or waiting in the outbox (not in memory)."""
        return self.is_stored(hashes) | np.isin(hashes, self.outbox_hash)

    def warm_start(self, shard_id: int, n_shards: int) -> None:
        """Learn which keys have stored profiles; load them now if they fit the budget."""
        self.tag_sites = self.site is not None
        if not self.store.exists(self.name):
            return
        # the keys first (8 bytes a row): the whole table only when it is loaded whole
        with_site = self.site is not None and self.store.has_column(self.name, self.site_key)
        columns = ["_key_hash", *([self.site_key] if with_site else [])]
        stored = self.store.read(self.name, columns=columns)
        hashes = stored.column("_key_hash").to_numpy().view(np.uint64)
        ours = shard_of(hashes, n_shards) == shard_id
        site_key = self.site_key
        if self.site is not None and site_key in stored.column_names:
            # the same shard index of every other site routes these hashes too: without
            # this, each site would hold a stale copy of the others' entities after a
            # restart, and a get or a handler call could reach it (no site: as before)
            here = pc.fill_null(pc.equal(stored.column(site_key), self.site), True)
            ours &= here.to_numpy(zero_copy_only=False)
        # profiles get the site column unless a table stored without one is there already
        self.tag_sites = self.site is not None and site_key in stored.column_names
        mine = np.flatnonzero(ours)
        self.stored = np.sort(hashes[mine])
        if 0 < len(mine) <= self.max_active:
            whole = self.store.read(self.name)
            if whole.num_rows != stored.num_rows:  # pragma: no cover - written meanwhile
                raise RuntimeError(f"table {self.name!r} changed while a shard started")
            self._activate_from(whole.take(pa.array(mine)))

    def _activate_from(self, rows: pa.Table) -> None:
        hashes = rows.column("_key_hash").to_numpy().view(np.uint64)
        slots, _ = self.state.activate(hashes, rows.column(self.key).combine_chunks())
        self.state.load(slots, rows)
        self.counters["loaded"] += rows.num_rows

    def is_stored(self, hashes: np.ndarray) -> np.ndarray:
        if len(self.stored) == 0:
            return np.zeros(len(hashes), dtype=bool)
        pos = np.minimum(np.searchsorted(self.stored, hashes), len(self.stored) - 1)
        return self.stored[pos] == hashes

    def activate(self, uniq: np.ndarray, keys: pa.Array, first: np.ndarray) -> np.ndarray:
        """Slots for sorted unique key hashes, bringing passivated/stored entities back first."""
        uslots = self.state.lookup(uniq)  # sorted needles: the searches walk forwards, in cache
        missing = uslots < 0
        if missing.any():
            want = uniq[missing]
            returned = self._from_outbox(want)
            returned = np.concatenate([returned, self._from_handed(want, returned)])
            stored = want[self.is_stored(want) & ~np.isin(want, returned)]
            if len(stored):
                rows = self._read_stored(stored)
                if rows.num_rows:
                    self._activate_from(rows)
            self.state.activate(uniq[missing], keys.take(pa.array(first[missing])))
            uslots = self.state.lookup(uniq)
        return uslots

    def _read_stored(self, hashes: np.ndarray) -> pa.Table:
        """Stored profiles of ``hashes``: a few by an ``IN`` filter, many in one scan (at
        2M stored rows, 100k keys took 1.2 s by ``IN``, 0.3 s by the scan; 1k keys 0.1 s
        by ``IN``, 0.4 s by the scan)."""
        if len(hashes) > IN_LIST_MAX:
            return self.store.read_matching(self.name, "_key_hash", as_signed(hashes))
        in_list = ",".join(map(str, as_signed(hashes).tolist()))
        return self.store.read(self.name, where=f"_key_hash IN ({in_list})")

    def _from_outbox(self, want: np.ndarray) -> np.ndarray:
        """Reactivate passivated entities still waiting in the outbox; returns their hashes."""
        if not len(self.outbox_hash):
            return np.zeros(0, dtype=np.uint64)
        back = np.isin(self.outbox_hash, want)
        if not back.any():
            return np.zeros(0, dtype=np.uint64)
        box = pa.concat_tables(self.outbox)
        self.outbox = [box.filter(pa.array(~back))]
        returning = box.filter(pa.array(back))
        self.outbox_hash = self.outbox_hash[~back]
        self._activate_from(returning)
        hashes = returning.column("_key_hash").to_numpy().view(np.uint64)
        self.state.dirty[self.state.lookup(hashes)] = True  # still unwritten
        return hashes

    def _from_handed(self, want: np.ndarray, returned: np.ndarray) -> np.ndarray:
        """Reactivate entities the last drain handed to a commit that may not have landed
        (clean: that commit writes this very row); returns their hashes."""
        if self.handed is None:
            return np.zeros(0, dtype=np.uint64)
        back = np.isin(self.handed_hash, want) & ~np.isin(self.handed_hash, returned)
        if not back.any():
            return np.zeros(0, dtype=np.uint64)
        self._activate_from(self.handed.filter(pa.array(back)))
        return self.handed_hash[back]

    def _hand_clean(self, clean: np.ndarray) -> None:
        """Clean entities leaving memory that the last drain took while they were in it:
        their row goes with what that drain handed over (its commit may not have landed)."""
        if not len(clean) or not len(self._drained_live):
            return
        keep = clean[np.isin(self.state.key_hash[clean], self._drained_live)]
        if len(keep):
            rows = self.state.to_arrow(keep)
            parts = [rows] if self.handed is None else [self.handed, rows]
            self.handed = pa.concat_tables(parts)
            self.handed_hash = np.concatenate([self.handed_hash, self.state.key_hash[keep]])

    def idle_cutoff(self) -> int:
        """The newest batch seq older than the idle time (entities last used then are idle)."""
        if not self.idle_seconds or not self._clock_last:
            return 0
        aged = bisect.bisect_right(self._clock_last, self.now() - self.idle_seconds)
        if aged == 0:
            return 0
        cutoff = self._clock_seq[aged - 1]
        for entries in (self._clock_first, self._clock_last, self._clock_seq):
            del entries[: aged - 1]  # older entries can no longer matter
        return cutoff

    def tick(self, seq: int) -> None:
        now = self.now()
        if self._clock_first and now - self._clock_first[-1] < 1.0:
            self._clock_last[-1], self._clock_seq[-1] = now, seq
        else:
            self._clock_first.append(now)
            self._clock_last.append(now)
            self._clock_seq.append(seq)

    def passivate(self, keep_seq: int) -> None:
        """Move out entities idle for ``idle_seconds``, then the least recently used ones
        until 90% of the budget is used."""
        st = self.state
        victims = np.zeros(0, dtype=np.int64)
        cutoff = self.idle_cutoff()
        if cutoff:
            victims = np.flatnonzero(
                st.active & (st.last_used <= cutoff) & (st.last_used < keep_seq)
            )
        excess = st.n_active - len(victims) - int(self.max_active * 0.9)
        if st.n_active - len(victims) > self.max_active and excess > 0:
            cand = np.flatnonzero(st.active & (st.last_used < keep_seq) & (st.last_used > cutoff))
            if len(cand):
                excess = min(excess, len(cand))
                lru = cand[np.argpartition(st.last_used[cand], excess - 1)[:excess]]
                victims = np.concatenate([victims, lru])
        if len(victims) == 0:
            return
        self._hand_clean(victims[~st.dirty[victims]])
        dirty = victims[st.dirty[victims]]
        if len(dirty):
            self.outbox.append(st.to_arrow(dirty))
            self.outbox_hash = np.concatenate([self.outbox_hash, st.key_hash[dirty]])
        st.release(victims)
        self.counters["passivated"] += len(victims)

    def take_changed(self) -> pa.Table | None:
        """Every changed profile, live and passivated, for a checkpoint (now clean)."""
        st = self.state
        dirty = np.flatnonzero(st.dirty & st.active)
        parts = [*self.outbox, st.to_arrow(dirty)] if len(dirty) or self.outbox else []
        st.dirty[dirty] = False
        self.handed = pa.concat_tables(self.outbox) if self.outbox else None
        self.handed_hash = self.outbox_hash
        self._drained_live = np.sort(st.key_hash[dirty])
        self.outbox, self.outbox_hash = [], np.zeros(0, dtype=np.uint64)
        parts = [p for p in parts if p.num_rows]
        if not parts:
            return None
        table = pa.concat_tables(parts)
        new = table.column("_key_hash").to_numpy().view(np.uint64)
        self.stored = np.union1d(self.stored, new)
        return table

    def tag_site(self, table: pa.Table) -> pa.Table:
        """Profiles as stored: with the site column (unless stored without one before)."""
        if self.tag_sites and self.site_key not in table.column_names:
            site = pa.array([self.site] * table.num_rows, pa.string())
            table = table.append_column(self.site_key, site)
        return table
