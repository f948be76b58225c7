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

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pyarrow as pa

from runtime.cluster.handles import ready, resolve
from runtime.cluster.heap import trim_heap
from runtime.cluster.wire import unpack
from runtime.edge.calls import LinkCalls, open_links
from runtime.edge.inbox import Inbox
from runtime.entities.calls import EntityCalls, serialized
from runtime.entities.grouping import as_keys, group_rows
from runtime.entities.kind import Batch, EntityKind, from_topic, preload
from runtime.entities.residency import Residency
from runtime.entities.router import NO_WATERMARK, Router, ingested_at, read_tag
from runtime.errors import ConfigError, SnapshotError
from runtime.observe.raymirror import RayCounters
from runtime.state.store import Store
from runtime.streams.export import EventTap
from runtime.topics.colocated import OUTLET_CALLS
from runtime.topics.topic import Topic

if TYPE_CHECKING:
    from runtime.edge.link import LinkSpec
    from runtime.entities.clients import ShardClient
    from runtime.topics.clients import TopicClient

MAX_PENDING_PUBLISHES = 8


class Drained(NamedTuple):
    """What a shard hands over at a checkpoint."""

    table: pa.Table | None  # changed profiles
    snapshot: bytes | None  # the kind's own state (a model replica, windows)
    stats: dict[str, float]  # counters of downstream calls
    outlets: dict[str, Any]  # topic -> snapshot of the partition hosted here
    #: the kind's per-shard state beside a merged snapshot (EntityKind.shard_snapshot)
    own: bytes | None = None
    #: what it logged for the core (edge) and applied from edge links (core): LinkCalls
    edge: dict[str, Any] | None = None


class Shard(EntityCalls, LinkCalls):
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
        shard_snapshot: bytes | None = None,
        export: str | None = None,
        links: dict[str, LinkSpec] | None = None,
        acks: dict[str, int] | None = None,
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
        self.idle_seconds = idle_seconds
        self.topics = topics or {}
        # topics whose rows go straight on to the shards of another kind (a stage graph)
        self.channel = channel or f"{self.name}/{shard_id}"
        self.forwards: dict[str, Any] = {
            t: Router(cls, handles, per_site)
            for t, (cls, handles, per_site) in (forwards or {}).items()
        }
        # ... or through a durable log to a receiver at the core (runtime.edge)
        self.forwards.update(open_links(links, self.channel, self.site))
        self.inbox = Inbox(acks)  # what came over edge links: applied once
        # partitions of this kind's output topics, hosted here (runtime.topics.colocated)
        self.outlets: dict[str, Topic] = {}
        for name, spec in (outlets or {}).items():
            rows, size, age = spec["retention"]
            topic = Topic(name, rows, size, age, label=spec["label"], log_dir=spec.get("log_dir"))
            if spec.get("snapshot"):
                topic.restore(spec["snapshot"])
            self.outlets[name] = topic
        #: event-time watermark per input channel; the shard's is the least of them
        self._inputs: dict[str, int] = {"source": NO_WATERMARK}
        self._wm_on = False  # no input carried a watermark yet: kinds derive their own
        self._wm_told = NO_WATERMARK
        self._fwd_stats: list[dict[str, float]] = []
        self._pending: list[Any] = []
        #: what the last drain handed over of entities no longer in memory: until the
        #: checkpoint commits it, LanceDB still has their older rows (see live_snapshot)
        self._handed: pa.Table | None = None
        self._seq = 0
        self._ingested: float | None = None  # when the batch being applied was taken in
        #: analytics export of the events applied, for a kind the source feeds (see
        #: runtime.streams.export); a kind fed by another kind's shards writes none
        self._tap = EventTap(export, self.name) if export else None
        self.counters = {"rows": 0, "batches": 0, "loaded": 0, "passivated": 0, "busy_s": 0.0}
        # straight to Ray's metrics, once per batch (added up, handed over once a second)
        self._ray_rows = RayCounters(
            "edgecore_shard_applied_rows_total", "Rows each shard applied.", ("kind", "shard")
        )
        self._ray_tags = {"kind": self.name, "shard": f"{self.site or ''}:{shard_id}".lstrip(":")}
        # which entities are in memory, which in LanceDB, and moving them between the two
        self.res = Residency(
            kind_cls, Store(data_dir), max_active, idle_seconds, clock, self.counters, self.site
        )
        self.state = self.res.state
        #: a saved state the kind refused: ping() reports it, so the start stops with it
        #: (raised here, it would reach the driver as Ray's "actor died", without its text)
        self._refused: SnapshotError | None = None
        try:
            if kind_snapshot is not None:
                self.kind.restore(kind_snapshot)
            if shard_snapshot is not None:
                self.kind.restore_shard(shard_snapshot)
            self.kind.on_start(self.res.store)  # a kind may read its saved state here
        except SnapshotError as err:
            shard = f"{self.site}:{shard_id}" if self.site else str(shard_id)
            self._refused = SnapshotError(f"entity kind {self.name!r}, shard {shard}: {err}")
            return
        self.res.warm_start(shard_id, n_shards)
        preload(self.kind_cls.preload)

    # -- event time --------------------------------------------------------------------------
    @serialized
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

    @serialized
    def advance(self, watermark: int, channel: str = "source") -> dict[str, float]:
        """Event time reached ``watermark`` on ``channel``: let the kind fire what is due."""
        self._heard(watermark, channel)
        self._ingested = None  # what fires now was not just taken in: no latency for it
        batch = self._whole(pa.table({}))
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
    @serialized
    def apply(self, events: pa.Table) -> dict[str, float]:
        """Apply one batch of events (with a ``_key_hash`` column) to their entities."""
        t0 = time.perf_counter()
        # here, where the last batch's temporaries and the last cut's tables have been
        # freed (inside the drain they are still held, and a trim there left 80 MB of
        # holes: runtime.cluster.heap)
        trim_heap()
        events = unpack(events)
        self._seq += 1
        self._ingested = ingested_at(events)
        tagged = read_tag(events)
        if tagged is not None:
            self._heard(*tagged)
        if self.inbox.duplicate(events):  # sent again over an edge link: applied before
            return {"rows": 0, "outbox": self.res.outbox_size, "link_duplicates": 1}
        if self._tap is not None and "source" in self._inputs:
            self._tap.add(events)
        if self.kind_cls.stateless:
            out = self._apply_operator(events, t0)
            self.inbox.applied(events)
            return out
        if self.idle_seconds:
            self.res.tick(self._seq)
        hashes = events.column("_key_hash").to_numpy().view(np.uint64)
        groups = group_rows(hashes)
        uslots = self.res.activate(
            groups.keys, as_keys(events.column(self.kind_cls.key)), groups.first
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
        self.res.passivate(self._seq)
        self.counters["rows"] += events.num_rows
        self.counters["batches"] += 1
        self.counters["busy_s"] += time.perf_counter() - t0
        self._ray_rows.add(events.num_rows, **self._ray_tags)
        self.inbox.applied(events)
        return {
            "rows": events.num_rows,
            "outbox": self.res.outbox_size,
            **batch.stats,
            **self._forwarded(),
            **self._latency(events.num_rows, batch.outputs),
        }

    @serialized
    def feedback(self, rows: pa.Table) -> dict[str, float]:
        """Rows of the kind's feedback input (labels), routed here by key: no entity is
        loaded, the kind joins them to what it keeps (EntityKind.on_feedback)."""
        t0 = time.perf_counter()
        rows = unpack(rows)
        self._seq += 1
        batch = self._whole(rows)
        self.kind.on_feedback(batch)
        self._publish(batch.outputs)
        self.counters["busy_s"] += time.perf_counter() - t0
        return {"feedback_rows": rows.num_rows, **batch.stats, **self._forwarded()}

    def _apply_operator(self, events: pa.Table, t0: float) -> dict[str, float]:
        """A stateless kind (window, join): the whole batch, no entity activation."""
        batch = self._whole(events)
        self.kind.apply(batch)
        self._publish(batch.outputs)
        self._tell_downstream()
        self.counters["rows"] += events.num_rows
        self.counters["batches"] += 1
        self.counters["busy_s"] += time.perf_counter() - t0
        return {
            "rows": events.num_rows,
            "outbox": 0,
            **batch.stats,
            **self._forwarded(),
            **self._latency(events.num_rows, batch.outputs),
        }

    def _latency(self, rows: int, outputs: dict[str, list[pa.Table]]) -> dict[str, float]:
        """Seconds from when this batch's events were taken in to now (applied, and each
        topic's rows published), as ``_lat:<stage>`` with ``_lat_rows:<stage>`` rows: the
        driver's ingest latency histogram (runtime.observe.run), not counters to add up."""
        if self._ingested is None:
            return {}
        lat = max(0.0, time.time() - self._ingested)
        out = {"_lat:applied": lat, "_lat_rows:applied": float(rows)}
        for topic, tables in outputs.items():
            out[f"_lat:{topic}"] = lat
            out[f"_lat_rows:{topic}"] = float(sum(t.num_rows for t in tables))
        return out

    def _whole(self, rows: pa.Table) -> Batch:
        """A batch handed to the kind whole: no entity is activated for its rows."""
        empty = np.zeros(0, dtype=np.int64)
        return Batch(rows, empty, self.state, self._seq, watermark=self.watermark)

    def _publish(self, outputs: dict[str, list[pa.Table]]) -> None:
        for topic, tables in outputs.items():
            if topic in self.forwards:
                self.forwards[topic].send(
                    from_topic(pa.concat_tables(tables, promote_options="default"), topic),
                    self.watermark,
                    self.channel,
                    ingested=self._ingested,  # latency counts from the first ingest
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
    @serialized
    def drain(self) -> Drained:
        """Hand over every changed profile (live and passivated), the kind's snapshot, the
        counters of downstream calls and the offsets of the topic partitions hosted here.
        Rows forwarded to other kinds are applied there before this returns, so draining
        upstream kinds first makes a consistent cut."""
        pending, self._pending = self._pending, []  # a failure is reported once, not forever
        self._ray_rows.flush()
        resolve(pending)
        for router in self.forwards.values():
            self._fwd_stats.extend(router.drain())
        fwd = self._forwarded()
        if self._tap is not None:  # the events of the cut are in files before it commits
            self._tap.flush()
        self.res.passivate(self._seq + 1)  # idle entities leave with this checkpoint
        table = self.res.take_changed()
        if table is not None:
            table = self.res.tag_site(self.kind.export(table))
        self._handed = self._not_resident(table)
        outlets = {name: topic.snapshot() for name, topic in self.outlets.items()}
        own = self.kind.shard_snapshot() if self.kind_cls.snapshot_scope == "kind" else None
        return Drained(table, self.kind.snapshot(), fwd, outlets, own, self.link_cut())

    @serialized
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

    @serialized
    def restore_kind(self, blob: bytes | None) -> None:
        """Load a kind-wide snapshot (None: nothing to load, e.g. another shard's
        :meth:`merge_kind` found fewer than two replicas)."""
        if blob is not None:
            self.kind.restore(blob)

    @serialized
    def merge_kind(self, *snapshots: bytes | None) -> bytes | None:
        """Every shard's kind snapshot merged (the kind's ``merge_snapshots``) and loaded
        here; the merged one, for the other shards to load (None: fewer than two)."""
        blobs = [b for b in snapshots if b is not None]
        merged = self.kind.merge_snapshots(blobs) if len(blobs) > 1 else None
        if merged is not None:
            self.kind.restore(merged)
        return merged

    @serialized
    def snapshot_kind(self) -> bytes | None:
        """The kind-wide state (e.g. a model replica), for syncing between checkpoints."""
        return self.kind.snapshot()

    # -- single-entity access -----------------------------------------------------------------
    @serialized
    def stats(self) -> dict[str, float]:
        return {
            **self.counters,
            "active": self.state.n_active,
            "outbox": self.res.outbox_size,
        }

    def ping(self) -> int:
        if self._refused is not None:
            raise self._refused
        return self.shard_id
