"""A shard hosts many entities of one kind: activation, batch apply, passivation.

Plain class (testable in-process); the runtime wraps it as a Ray actor in
:func:`runtime.cluster.handles.spawn`. An entity becomes active on its first event or
call: its stored profile is loaded from LanceDB if there is one, else it starts
from the defaults. When more than ``max_active`` entities are active, the least
recently used are passivated: their state moves to an outbox that the next
checkpoint writes to LanceDB, and their memory is reused.

>>> import pyarrow as pa, tempfile
>>> from runtime.entities.kind import EntityKind
>>> from runtime.state.keys import hash_keys
>>> class Counter(EntityKind):
...     name, key, state = "counters", "user_id", {"clicks": "int64"}
...     def on_event(self, state, event):
...         state["clicks"] += 1
>>> shard = Shard(Counter, None, 0, 1, tempfile.mkdtemp())
>>> events = pa.table({"user_id": ["a", "b", "a"]})
>>> events = events.append_column("_key_hash", pa.array(hash_keys(events["user_id"])))
>>> shard.apply(events)["rows"]
3
>>> shard.get("a")["clicks"]
2
"""

from __future__ import annotations

import bisect
import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from runtime.cluster.handles import ready, resolve
from runtime.cluster.wire import unpack
from runtime.entities.kind import Batch, EntityKind
from runtime.entities.router import NO_WATERMARK, Router, read_tag
from runtime.errors import ConfigError, UnknownEntityError
from runtime.state.fields import ColumnarState
from runtime.state.keys import as_signed, hash_keys, shard_of
from runtime.state.store import Store
from runtime.topics.topic import Topic

if TYPE_CHECKING:
    from runtime.entities.clients import ShardClient
    from runtime.topics.clients import TopicClient

MAX_PENDING_PUBLISHES = 8
#: what a co-located topic partition answers through :meth:`Shard.outlet`
OUTLET_CALLS = frozenset(
    {
        "publish",
        "subscribe",
        "flush",
        "snapshot",
        "end_offsets",
        "first_offsets",
        "read",
        "poll",
        "commit",
        "committed",
        "seek_committed",
        "groups",
        "stats",
    }
)


class Drained(NamedTuple):
    """What a shard hands over at a checkpoint."""

    table: pa.Table | None  # changed profiles
    snapshot: bytes | None  # the kind's own state (a model replica, windows)
    stats: dict[str, float]  # counters of downstream calls
    outlets: dict[str, Any]  # topic -> snapshot of the partition hosted here


def _serialized(method: Callable[..., Any]) -> Callable[..., Any]:
    """One call at a time, as a Ray actor runs them; in-process (local mode) a live gate's
    thread and the coordinator may call a shard at once."""

    @functools.wraps(method)
    def run(self: Shard, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return run


@dataclass
class Groups:
    """Rows of a batch grouped by key: ``order`` lists rows key by key, arrival order kept."""

    keys: np.ndarray  # sorted unique key hashes
    gid: np.ndarray  # group (index into keys) of each row
    order: np.ndarray  # rows, grouped
    starts: np.ndarray  # where each group begins in ``order``
    first: np.ndarray  # first row of each group


def group_rows(hashes: np.ndarray) -> Groups:
    """Group rows by key hash with two unstable sorts (a stable one costs 5x more).

    >>> g = group_rows(np.array([9, 4, 9, 4, 7], dtype=np.uint64))
    >>> g.keys.tolist(), g.order.tolist(), g.starts.tolist(), g.first.tolist()
    ([4, 7, 9], [1, 3, 4, 0, 2], [0, 2, 3], [1, 4, 0])
    """
    n = len(hashes)
    by_hash = np.argsort(hashes)
    sh = hashes[by_hash]
    start = np.empty(n, dtype=bool)
    start[:1] = True
    np.not_equal(sh[1:], sh[:-1], out=start[1:])
    starts = np.flatnonzero(start)
    gid = np.empty(n, dtype=np.int64)
    gid[by_hash] = np.cumsum(start) - 1
    if n < 1 << 21:
        order = np.argsort((gid << 21) | np.arange(n))
    else:
        order = np.argsort(gid, kind="stable")
    return Groups(sh[starts], gid, order, starts, order[starts])


def _as_keys(column: pa.ChunkedArray) -> pa.Array:
    """Entity keys are strings (an int key hashes like its decimal text, as routing does)."""
    keys = column.combine_chunks()
    return keys if pa.types.is_string(keys.type) else keys.cast(pa.string())


class Shard:
    def __init__(
        self,
        kind_cls: type[EntityKind],
        kind_config: Any,
        shard_id: int,
        n_shards: int,
        data_dir: str,
        max_active: int = 1_000_000,
        topics: dict[str, TopicClient] | None = None,
        kind_snapshot: bytes | None = None,
        idle_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        forwards: dict[str, tuple[type[EntityKind], list[ShardClient], int]] | None = None,
        channel: str | None = None,
        outlets: dict[str, dict[str, Any]] | None = None,
        site: str | None = None,
    ) -> None:
        self._lock = threading.RLock()
        #: the site this shard serves, for a site-partitioned kind: its stored profiles
        #: carry the site, so a restart loads each entity at its own site only
        self.site = site if kind_cls.site_key else None
        self.kind_cls = kind_cls
        self.kind = kind_cls(kind_config)
        self.name = kind_cls.name
        self.shard_id = shard_id
        self.n_shards = n_shards
        self.max_active = max(1, int(max_active))
        self.idle_seconds = idle_seconds
        # one entry per second of activity: when it began, when it last saw a batch, and
        # that batch's seq; maps "idle since" to a seq with at most idle_seconds entries
        self._clock_first: list[float] = []
        self._clock_last: list[float] = []
        self._clock_seq: list[int] = []
        self.now = clock
        self.state = ColumnarState(kind_cls.spec(), key=kind_cls.key)
        self.store = Store(data_dir)
        self.topics = topics or {}
        # topics whose rows go straight on to the shards of another kind (a stage graph)
        self.forwards = {
            t: Router(cls, handles, per_site)
            for t, (cls, handles, per_site) in (forwards or {}).items()
        }
        self.channel = channel or f"{self.name}/{shard_id}"
        # partitions of this kind's output topics, hosted here (runtime.topics.colocated)
        self.outlets: dict[str, Topic] = {}
        for name, spec in (outlets or {}).items():
            rows, size, age = spec["retention"]
            topic = Topic(name, rows, size, age, label=spec["label"])
            if spec.get("snapshot"):
                topic.restore(spec["snapshot"])
            self.outlets[name] = topic
        #: event-time watermark per input channel; the shard's is the least of them
        self._inputs: dict[str, int] = {"source": NO_WATERMARK}
        self._wm_on = False  # no input carried a watermark yet: kinds derive their own
        self._wm_told = NO_WATERMARK
        self._fwd_stats: list[dict[str, float]] = []
        self._pending: list[Any] = []
        self._outbox: list[pa.Table] = []
        self._outbox_hash = np.zeros(0, dtype=np.uint64)
        self._seq = 0
        self.counters = {"rows": 0, "batches": 0, "loaded": 0, "passivated": 0, "busy_s": 0.0}
        self._stored = np.zeros(0, dtype=np.uint64)  # sorted hashes with a stored profile
        if kind_snapshot is not None:
            self.kind.restore(kind_snapshot)
        self._warm_start()

    # -- activation ------------------------------------------------------------------------
    def _warm_start(self) -> None:
        """Learn which keys have stored profiles; load them now if they fit the budget."""
        self._tag_site = self.site is not None
        if not self.store.exists(self.name):
            return
        stored = self.store.read(self.name)
        hashes = stored.column("_key_hash").to_numpy().view(np.uint64)
        ours = shard_of(hashes, self.n_shards) == self.shard_id
        site_key = self.kind_cls.site_key
        if self.site is not None and site_key in stored.column_names:
            # the same shard index of every other site routes these hashes too: without
            # this, each site would hold a stale copy of the others' entities after a
            # restart, and a get or a handler call could reach it (no site: as before)
            here = pc.fill_null(pc.equal(stored.column(site_key), self.site), True)
            ours &= here.to_numpy(zero_copy_only=False)
        # profiles get the site column unless a table stored without one is there already
        self._tag_site = self.site is not None and site_key in stored.column_names
        mine = np.flatnonzero(ours)
        self._stored = np.sort(hashes[mine])
        if 0 < len(mine) <= self.max_active:
            self._activate_from(stored.take(pa.array(mine)))

    def _activate_from(self, rows: pa.Table) -> None:
        hashes = rows.column("_key_hash").to_numpy().view(np.uint64)
        slots, _ = self.state.activate(hashes, rows.column(self.kind_cls.key).combine_chunks())
        self.state.load(slots, rows)
        self.counters["loaded"] += rows.num_rows

    def _is_stored(self, hashes: np.ndarray) -> np.ndarray:
        if len(self._stored) == 0:
            return np.zeros(len(hashes), dtype=bool)
        pos = np.minimum(np.searchsorted(self._stored, hashes), len(self._stored) - 1)
        return self._stored[pos] == hashes

    def _activate(self, uniq: np.ndarray, keys: pa.Array, first: np.ndarray) -> np.ndarray:
        """Slots for sorted unique key hashes, bringing passivated/stored entities back first."""
        uslots = self.state.lookup(uniq)  # sorted needles: the searches walk forwards, in cache
        missing = uslots < 0
        if missing.any():
            want = uniq[missing]
            returned = self._from_outbox(want)
            stored = want[self._is_stored(want) & ~np.isin(want, returned)]
            if len(stored):
                in_list = ",".join(map(str, as_signed(stored).tolist()))
                rows = self.store.read(self.name, where=f"_key_hash IN ({in_list})")
                if rows.num_rows:
                    self._activate_from(rows)
            self.state.activate(uniq[missing], keys.take(pa.array(first[missing])))
            uslots = self.state.lookup(uniq)
        return uslots

    def _from_outbox(self, want: np.ndarray) -> np.ndarray:
        """Reactivate passivated entities still waiting in the outbox; returns their hashes."""
        if not len(self._outbox_hash):
            return np.zeros(0, dtype=np.uint64)
        back = np.isin(self._outbox_hash, want)
        if not back.any():
            return np.zeros(0, dtype=np.uint64)
        box = pa.concat_tables(self._outbox)
        self._outbox = [box.filter(pa.array(~back))]
        returning = box.filter(pa.array(back))
        self._outbox_hash = self._outbox_hash[~back]
        self._activate_from(returning)
        hashes = returning.column("_key_hash").to_numpy().view(np.uint64)
        self.state.dirty[self.state.lookup(hashes)] = True  # still unwritten
        return hashes

    def _idle_cutoff(self) -> int:
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

    def _tick(self) -> None:
        now = self.now()
        if self._clock_first and now - self._clock_first[-1] < 1.0:
            self._clock_last[-1], self._clock_seq[-1] = now, self._seq
        else:
            self._clock_first.append(now)
            self._clock_last.append(now)
            self._clock_seq.append(self._seq)

    def _passivate(self, keep_seq: int) -> None:
        """Move out entities idle for ``idle_seconds``, then the least recently used ones
        until 90% of the budget is used."""
        st = self.state
        victims = np.zeros(0, dtype=np.int64)
        cutoff = self._idle_cutoff()
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
        dirty = victims[st.dirty[victims]]
        if len(dirty):
            self._outbox.append(st.to_arrow(dirty))
            self._outbox_hash = np.concatenate([self._outbox_hash, st.key_hash[dirty]])
        st.release(victims)
        self.counters["passivated"] += len(victims)

    # -- event time --------------------------------------------------------------------------
    @_serialized
    def set_inputs(self, channels: list[str]) -> None:
        """The channels this shard hears from (the shards of the kinds forwarding to it)."""
        self._inputs = {c: self._inputs.get(c, NO_WATERMARK) for c in channels}

    @property
    def watermark(self) -> int | None:
        return min(self._inputs.values()) if self._wm_on else None

    def _heard(self, watermark: int, channel: str) -> None:
        self._wm_on = True
        if channel in self._inputs:
            self._inputs[channel] = max(self._inputs[channel], watermark)

    @_serialized
    def advance(self, watermark: int, channel: str = "source") -> dict[str, float]:
        """Event time reached ``watermark`` on ``channel``: let the kind fire what is due."""
        self._heard(watermark, channel)
        batch = Batch(
            events=pa.table({}),
            slots=np.zeros(0, dtype=np.int64),
            state=self.state,
            seq=self._seq,
            watermark=self.watermark,
        )
        if batch.watermark is not None and batch.watermark > self._wm_told:
            self.kind.on_watermark(batch)
            self._publish(batch.outputs)
            self._tell_downstream()
        return {**batch.stats, **self._forwarded()}

    def _tell_downstream(self) -> None:
        wm = self.watermark
        if wm is not None and wm > self._wm_told:
            self._wm_told = wm
            for router in self.forwards.values():
                router.advance(wm, self.channel)

    def _forwarded(self) -> dict[str, float]:
        """Counters of downstream calls that finished (rows are theirs to count)."""
        done = [s for r in self.forwards.values() for s in r.poll()] + self._fwd_stats
        self._fwd_stats = []
        out: dict[str, float] = {}
        for stats in done:
            for k, v in stats.items():
                if k not in ("rows", "outbox"):
                    out[k] = out.get(k, 0) + v
        return out

    # -- the hot path ------------------------------------------------------------------------
    @_serialized
    def apply(self, events: pa.Table) -> dict[str, float]:
        """Apply one batch of events (with a ``_key_hash`` column) to their entities."""
        t0 = time.perf_counter()
        events = unpack(events)
        self._seq += 1
        tagged = read_tag(events)
        if tagged is not None:
            self._heard(*tagged)
        if self.kind_cls.stateless:
            return self._apply_operator(events, t0)
        if self.idle_seconds:
            self._tick()
        hashes = events.column("_key_hash").to_numpy().view(np.uint64)
        groups = group_rows(hashes)
        uslots = self._activate(
            groups.keys, _as_keys(events.column(self.kind_cls.key)), groups.first
        )
        slots = uslots[groups.gid]
        batch = Batch(
            events=events,
            slots=slots,
            state=self.state,
            seq=self._seq,
            order=groups.order,
            starts=groups.starts,
            watermark=self.watermark,
        )
        self.kind.apply(batch)
        self.state.dirty[slots] = True
        self.state.last_used[slots] = self._seq
        self._publish(batch.outputs)
        self._tell_downstream()
        self._passivate(self._seq)
        self.counters["rows"] += events.num_rows
        self.counters["batches"] += 1
        self.counters["busy_s"] += time.perf_counter() - t0
        return {
            "rows": events.num_rows,
            "outbox": int(len(self._outbox_hash)),
            **batch.stats,
            **self._forwarded(),
        }

    def _apply_operator(self, events: pa.Table, t0: float) -> dict[str, float]:
        """A stateless kind (window, join): the whole batch, no entity activation."""
        batch = Batch(
            events=events,
            slots=np.zeros(0, dtype=np.int64),
            state=self.state,
            seq=self._seq,
            watermark=self.watermark,
        )
        self.kind.apply(batch)
        self._publish(batch.outputs)
        self._tell_downstream()
        self.counters["rows"] += events.num_rows
        self.counters["batches"] += 1
        self.counters["busy_s"] += time.perf_counter() - t0
        return {"rows": events.num_rows, "outbox": 0, **batch.stats, **self._forwarded()}

    def _publish(self, outputs: dict[str, list[pa.Table]]) -> None:
        for topic, tables in outputs.items():
            if topic in self.forwards:
                self.forwards[topic].send(
                    pa.concat_tables(tables, promote_options="default"),
                    self.watermark,
                    self.channel,
                )
                continue
            if topic in self.outlets:  # a partition hosted here: a local call, no hop
                self.outlets[topic].publish(pa.concat_tables(tables, promote_options="default"))
                continue
            handle = self.topics.get(topic)
            if handle is None:
                if topic in self.kind_cls.topics:
                    raise ConfigError(
                        f"shard {self.name}:{self.shard_id} was started without topic {topic!r}"
                    )
                raise ConfigError(
                    f"entity kind {self.name!r} emitted to topic {topic!r}, which it did not "
                    f"declare; add it to {self.kind_cls.__qualname__}.topics"
                )
            self._pending.append(handle.publish(pa.concat_tables(tables)))
        if len(self._pending) > MAX_PENDING_PUBLISHES:  # backpressure from slow topics
            done, self._pending = ready(self._pending, len(self._pending) - MAX_PENDING_PUBLISHES)
            resolve(done)

    # -- checkpoints -------------------------------------------------------------------------
    @_serialized
    def drain(self) -> Drained:
        """Hand over every changed profile (live and passivated), the kind's snapshot, the
        counters of downstream calls and the offsets of the topic partitions hosted here.
        Rows forwarded to other kinds are applied there before this returns, so draining
        upstream kinds first makes a consistent cut."""
        pending, self._pending = self._pending, []  # a failure is reported once, not forever
        resolve(pending)
        for router in self.forwards.values():
            self._fwd_stats.extend(router.drain())
        fwd = self._forwarded()
        self._passivate(self._seq + 1)  # idle entities leave with this checkpoint
        st = self.state
        dirty = np.flatnonzero(st.dirty & st.active)
        parts = [*self._outbox, st.to_arrow(dirty)] if len(dirty) or self._outbox else []
        st.dirty[dirty] = False
        self._outbox, self._outbox_hash = [], np.zeros(0, dtype=np.uint64)
        table = None
        if parts:
            table = (
                pa.concat_tables([p for p in parts if p.num_rows])
                if any(p.num_rows for p in parts)
                else None
            )
        if table is not None:
            new = table.column("_key_hash").to_numpy().view(np.uint64)
            self._stored = np.union1d(self._stored, new)
            table = self.kind.export(table)
            if self._tag_site and self.kind_cls.site_key not in table.column_names:
                site = pa.array([self.site] * table.num_rows, pa.string())
                table = table.append_column(self.kind_cls.site_key, site)
        outlets = {name: topic.snapshot() for name, topic in self.outlets.items()}
        return Drained(table, self.kind.snapshot(), fwd, outlets)

    @_serialized
    def outlet(self, topic: str, method: str, *args: Any) -> Any:
        """Call ``method`` of the partition of ``topic`` hosted here (for
        :class:`runtime.topics.colocated.ColocatedTopic`)."""
        if topic not in self.outlets:
            raise ConfigError(f"shard {self.name}:{self.shard_id} hosts no partition of {topic!r}")
        if method not in OUTLET_CALLS:
            raise ConfigError(f"topic {topic!r}: {method!r} is not a topic operation")
        if method == "publish":
            args = (unpack(args[0]),)
        return getattr(self.outlets[topic], method)(*args)

    @_serialized
    def restore_kind(self, blob: bytes) -> None:
        self.kind.restore(blob)

    @_serialized
    def snapshot_kind(self) -> bytes | None:
        """The kind-wide state (e.g. a model replica), for syncing between checkpoints."""
        return self.kind.snapshot()

    # -- single-entity access -----------------------------------------------------------------
    def _slot(self, key: str, create: bool) -> int:
        keys = pa.array([key])
        h = hash_keys(keys)
        if (
            not create
            and self.state.lookup(h)[0] < 0
            and not self._is_stored(h)[0]
            and not np.isin(h, self._outbox_hash)[0]
        ):
            raise UnknownEntityError(self.name, key)
        slot = int(self._activate(h, keys, np.zeros(1, dtype=np.int64))[0])
        self._seq += 1
        self.state.last_used[slot] = self._seq
        return slot

    @_serialized
    def lookup(self, keys: pa.Array) -> pa.Table:
        """The current state of each of ``keys`` (null where the shard knows no such entity),
        in their order: the state side of a stream–state join. Nothing is created."""
        keys = _as_keys(pa.chunked_array([keys]))
        h = hash_keys(keys)
        uniq, inv = np.unique(h, return_inverse=True)
        slots = self.state.lookup(uniq)
        known = (slots >= 0) | self._is_stored(uniq) | np.isin(uniq, self._outbox_hash)
        if (known & (slots < 0)).any():  # passivated or stored: bring them back first
            first = np.zeros(len(uniq), dtype=np.int64)
            first[inv] = np.arange(len(h))
            pick = np.flatnonzero(known)
            slots[pick] = self._activate(
                uniq[pick], keys.take(pa.array(first[pick])), np.arange(len(pick))
            )
        rows = self.state.to_arrow(np.maximum(slots, 0)).drop_columns(["_key_hash"])
        idx = pa.array(np.where(known, np.arange(len(uniq)), -1)[inv], mask=~known[inv])
        found = rows.take(idx)
        self._passivate(self._seq)  # what was loaded for the lookup keeps to the budget
        return found

    @_serialized
    def get(self, key: str) -> dict[str, Any]:
        slot = self._slot(key, create=False)
        return {self.kind_cls.key: key, **self.state.row(slot)}

    @_serialized
    def call(self, key: str, handler_name: str, args: tuple[Any, ...]) -> Any:
        fn = self.kind_cls.handlers().get(handler_name)
        if fn is None:
            raise ConfigError(
                f"entity kind {self.name!r} has no handler {handler_name!r}; "
                f"it has {sorted(self.kind_cls.handlers())}"
            )
        slot = self._slot(key, create=True)
        row = self.state.row(slot)
        result = fn(self.kind, row, *args)
        self.state.set_row(slot, row)
        return result

    @_serialized
    def stats(self) -> dict[str, float]:
        return {
            **self.counters,
            "active": self.state.n_active,
            "outbox": int(len(self._outbox_hash)),
        }

    def ping(self) -> int:
        return self.shard_id
