"""The coordinator: starts Ray, hosts kinds in shards, routes batches, takes checkpoints.

>>> import tempfile, pyarrow as pa
>>> from runtime.entities.kind import EntityKind
>>> class Counter(EntityKind):
...     name, key, state = "counters", "user_id", {"clicks": "int64"}
...     def on_event(self, state, event):
...         state["clicks"] += 1
>>> with Runtime(data_dir=tempfile.mkdtemp(), mode="local") as rt:
...     rt.register(Counter)
...     _ = rt.send("counters", [{"user_id": "u1"}, {"user_id": "u1"}])
...     Counter.ref("u1").get()["clicks"]
2
"""

from __future__ import annotations

import base64
import contextlib
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from runtime.cluster import names
from runtime.cluster.handles import (
    Handle,
    actor_nodes,
    init_ray,
    nodes,
    resolve,
    spawn,
    wait_ready,
)
from runtime.cluster.placement import ActorSpec, DefaultPolicy, Placement, PlacementPolicy, selector
from runtime.cluster.status import StatusBoard
from runtime.cluster.wire import pack_for, receiving
from runtime.entities.kind import EntityKind, EntityRef, current_runtime
from runtime.entities.router import Router
from runtime.entities.shard import Shard
from runtime.errors import ConfigError, NotStartedError, UnknownEntityError
from runtime.eventtime.watermarks import Watermarks
from runtime.state.index import SeenSet
from runtime.state.keys import hash_keys, shard_of
from runtime.state.store import Checkpoint, Store
from runtime.streams.schema import DEAD_LETTER_SCHEMA
from runtime.streams.sinks import TableSink
from runtime.topics.colocated import ColocatedTopic, as_standalone, outlet, split_snapshot
from runtime.topics.topic import Topic

DEAD_LETTERS = "dead_letters"
#: topics every step may write to: never hosted by one kind's shards
SHARED_TOPICS = frozenset({"dead_letters", "late_events"})
SINK_LINGER_S = 0.2
SEEN = "_seen"
SNAPSHOTS = "_snapshots"


@dataclass(frozen=True)
class RuntimeConfig:
    """Settings only; live state is rebuilt from the data folder when the runtime starts."""

    data_dir: str = "./edgecore-data"
    #: None: start an embedded local Ray; "auto" or "ray://..."/"host:port": attach
    address: str | None = None
    #: "ray" (actors in Ray) or "local" (in-process, for tests and debugging)
    mode: str = "ray"
    #: shards per entity kind; default: the number of CPUs
    shards: int | None = None
    #: memory for entity state per shard; the least recently used are passivated beyond it
    shard_memory_mb: float = 1024.0
    #: or a budget in entities per shard (overrides shard_memory_mb)
    max_active: int | None = None
    #: passivate entities not touched for this long (None: only when over budget)
    idle_seconds: float | None = 3600.0
    #: batches in flight per shard; bounds memory when a shard is slower than its source
    max_inflight: int = 2
    #: checkpoint after this many accepted events, or this many seconds
    checkpoint_rows: int = 2_000_000
    checkpoint_seconds: float = 30.0
    #: merge kind-wide state across shards (e.g. average model replicas) this often
    sync_rows: int = 250_000
    #: compact tables and drop old versions every N checkpoints
    compact_every: int = 5
    #: how many applied event ids are remembered for deduplication
    dedup_capacity: int = 50_000_000
    topic_retention_rows: int = 1_000_000
    topic_retention_bytes: int | None = 256 * 2**20
    topic_retention_seconds: float | None = 24 * 3600.0
    #: topics split into partitions: name -> (partitions, key column or None for round-robin)
    topic_partitions: dict[str, tuple[int, str | None]] = field(default_factory=dict)
    num_cpus: int | None = None
    #: where each actor runs (default: device work at the edge, the rest at the core)
    policy: Any = None
    #: restarts from the last checkpoint after actor failures before a run gives up
    max_restarts: int = 3

    def __post_init__(self) -> None:
        if self.mode not in ("ray", "local"):
            raise ConfigError(f"mode must be 'ray' or 'local', not {self.mode!r}")
        if self.shards is not None and not 1 <= self.shards <= 65_535:
            raise ConfigError(f"shards must be between 1 and 65535, not {self.shards}")


@dataclass
class PreparedCheckpoint:
    """A cut taken by :meth:`Runtime.prepare_checkpoint`, not written yet."""

    started: float
    #: (kind, key column, changed profiles)
    states: list[tuple[str, str, pa.Table]] = field(default_factory=list)
    snapshots: list[tuple[str, bytes]] = field(default_factory=list)
    dead: list[pa.Table] = field(default_factory=list)
    seen: list[tuple[str, np.ndarray]] = field(default_factory=list)
    topics: dict[str, Any] = field(default_factory=dict)
    watermarks: dict[str, str] = field(default_factory=dict)


@dataclass
class _Kind:
    cls: type[EntityKind]
    config: Any
    shards: list[Handle]
    router: Router
    #: site-partitioned kinds: site -> indices into ``shards``; else {None: all}
    by_site: dict[str | None, list[int]] = field(default_factory=dict)
    per_site: int = 1
    #: topic -> the kind its rows go on to, shard to shard
    forward: dict[str, str] = field(default_factory=dict)

    @property
    def inflight(self) -> list[list[Any]]:
        return self.router.inflight


class Runtime:
    """A running edgecore: use as a context manager, or call start() and stop()."""

    def __init__(self, config: RuntimeConfig | None = None, **overrides: Any) -> None:
        self.config = replace(config or RuntimeConfig(), **overrides)
        self.store: Store | None = None
        self.kinds: dict[str, _Kind] = {}
        self.topics: dict[str, Handle] = {}
        self.subscribers: dict[str, Handle] = {}
        #: applied event ids per scope (an app's entity kind): ids are unique per stream
        self.seen: dict[str, SeenSet] = {}
        #: event-time watermark per scope, tracked where events come in
        self.watermarks: dict[str, Watermarks] = {}
        self.checkpoint_state = Checkpoint()
        self._new_seen: list[tuple[str, np.ndarray]] = []
        self._dead: list[pa.Table] = []
        self._dead_pending: list[Any] = []
        self._done: list[dict[str, float]] = []  # stats of finished shard calls
        self._started_ray = False
        self._token: Any = None
        self.n_checkpoints = 0
        self.policy: PlacementPolicy = self.config.policy or DefaultPolicy()
        #: actor name -> (what it is, wanted placement, placement given the nodes, handle)
        self.placed: dict[str, tuple[ActorSpec, Placement, Placement, Handle]] = {}
        self._subscriptions: dict[
            str, tuple[str, type, tuple[Any, ...], dict[str, Any], float]
        ] = {}
        self.restarts = 0
        self._board: Handle | None = None
        self._shard_names: dict[str, list[str]] = {}
        #: each app's latest summary (e.g. rows and bytes that crossed edge -> core)
        self.app_reports: dict[str, dict[str, Any]] = {}
        self._board_at = 0.0

    # -- life cycle --------------------------------------------------------------------------
    def start(self) -> Runtime:
        cfg = self.config
        if cfg.mode == "ray":
            self._started_ray = init_ray(cfg.address, cfg.num_cpus)
        self.store = Store(cfg.data_dir)
        self._started_at = time.time()
        self._load_committed()
        self._start_board()
        self._token = current_runtime.set(self)
        return self

    def _load_committed(self) -> None:
        """Bring the data folder back to its last commit and load what lives in memory."""
        assert self.store is not None
        cp = self.store.last_checkpoint()
        self.checkpoint_state = self.store.recover(
            sorted({DEAD_LETTERS, SEEN, SNAPSHOTS, *cp.versions})
        )
        self.seen = {}
        self._new_seen, self._dead, self._done = [], [], []
        self._dead_pending = []
        self.watermarks = {}
        for scope, snap in self.checkpoint_state.meta.get("watermarks", {}).items():
            self.watermarks[scope] = Watermarks.restore(base64.b64decode(snap))
        if self.store.exists(SEEN):
            seen = self.store.read(SEEN).sort_by("epoch")  # oldest first: forgotten first
            for scope in pc.unique(seen.column("scope")).to_pylist():
                ids = (
                    seen.filter(pc.equal(seen.column("scope"), scope)).column("event_id").to_numpy()
                )
                _, first = np.unique(ids, return_index=True)
                self._seen_set(scope).add(ids[np.sort(first)])

    def rebalance(self, positions: dict[str, int] | None = None) -> None:
        """Commit, then start every actor again where the policy puts it on the nodes alive now:
        how work moves back to an edge node that returned. Nothing is lost: the new actors
        load the state just committed."""
        self.checkpoint(positions)
        self.restart()

    def _start_board(self) -> None:
        if self.config.mode == "ray":
            self._board = self._spawn(StatusBoard, spec=ActorSpec(names.BOARD, "stage", "status"))

    def restart(self) -> None:
        """After an actor failure: stop every actor, go back to the last commit, and start
        the same kinds, topics and subscribers again where the policy puts them now.

        The caller replays its source from the committed position.
        """
        kinds = [
            (k.cls, k.config, k.per_site, self.sites(n) or None, k.forward)
            for n, k in self.kinds.items()
        ]
        subs = dict(self._subscriptions)
        for _, _, _, handle in self.placed.values():
            with contextlib.suppress(Exception):  # already gone with its node
                handle.kill()
        self.kinds, self.topics, self.subscribers = {}, {}, {}
        self.placed, self._subscriptions = {}, {}
        self._load_committed()
        self._start_board()
        for cls, config, per_site, sites, forward in kinds:
            self.register(cls, config, shards=per_site, sites=sites, forward=forward)
        for name, (topic, cls, args, kwargs, linger) in subs.items():
            self.subscribe(topic, cls, *args, name=name, linger_s=linger, **kwargs)
        self.restarts += 1

    def __enter__(self) -> Runtime:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop(checkpoint=exc[0] is None)

    def stop(self, checkpoint: bool = True) -> None:
        if self.store is None:
            return
        if checkpoint and self.kinds:
            self.checkpoint()
            self.flush_topics()
        for _, _, _, handle in self.placed.values():
            with contextlib.suppress(Exception):  # an actor may be gone with its node
                handle.kill()
        self.placed = {}
        if self._token is not None:
            current_runtime.reset(self._token)
            self._token = None
        if self._started_ray:
            import ray

            ray.shutdown()
            self._started_ray = False
        self.store = None

    def _need(self) -> Store:
        if self.store is None:
            raise NotStartedError(
                "the runtime is not started: use `with Runtime(...) as rt:` or rt.start()"
            )
        return self.store

    @property
    def n_shards(self) -> int:
        return self.config.shards or max(1, os.cpu_count() or 1)

    # -- topics ---------------------------------------------------------------------------------
    def topic(self, name: str) -> Handle:
        """The topic named ``name``, created on first use."""
        if name not in self.topics:
            partitions, key = self.config.topic_partitions.get(name, (1, None))
            saved = self.checkpoint_state.meta.get("topics", {}).get(name)
            if saved is not None and "colocated" in saved:  # saved by the shards hosting it
                partitions, saved = as_standalone(saved)
            handle = self._spawn(
                Topic,
                name,
                self.config.topic_retention_rows,
                self.config.topic_retention_bytes,
                self.config.topic_retention_seconds,
                partitions=partitions,
                partition_key=key,
                spec=ActorSpec(names.topic(name), "topic", name),
            )
            if saved is not None:  # offsets and consumer groups go on from the last commit
                resolve([handle.call("restore", saved)])
            self.topics[name] = handle
        return self.topics[name]

    def subscribe(
        self,
        topic: str,
        subscriber_cls: type,
        *args: Any,
        name: str | None = None,
        from_offset: int | None = None,
        linger_s: float = 0.0,
        **kwargs: Any,
    ) -> Handle:
        """Host ``subscriber_cls(*args)`` as an actor and push ``topic``'s batches to its
        ``on_batch``; with ``linger_s``, batches are pushed together at most that late (see
        :meth:`runtime.topics.topic.Topic.subscribe`)."""
        for needed in ("on_batch", "flush"):
            if not callable(getattr(subscriber_cls, needed, None)):
                raise ConfigError(
                    f"subscriber {subscriber_cls.__qualname__} must define {needed}()"
                )
        name = name or f"{topic}:{subscriber_cls.__name__.lower()}"
        role = "sink" if subscriber_cls is TableSink else "subscriber"
        group = args[1] if subscriber_cls is TableSink else name  # a sink is placed by its table
        handle = self._spawn(  # it gets batches packed (runtime.cluster.wire), its on_batch tables
            receiving(subscriber_cls),
            *args,
            spec=ActorSpec(names.subscriber(name), role, group),
            **kwargs,
        )
        # up before the topic relies on it: deliveries to an actor still starting (seconds
        # on a small machine) pile up and hold back every publisher
        wait_ready([handle])
        resolve([self.topic(topic).call("subscribe", name, handle, from_offset, linger_s)])
        self.subscribers[name] = handle
        self._subscriptions[name] = (topic, subscriber_cls, args, kwargs, linger_s)
        return handle

    def sink_to_table(
        self, topic: str, table: str, key: str | tuple[str, ...] | None = None
    ) -> Handle:
        """Persist a topic into a LanceDB table of the data folder (idempotent with ``key``).

        The topic pushes to it at most every 0.2 s: a table is written in large batches
        anyway, and one call per published batch cost the topic a tenth of a core at
        50,000 events/s."""
        return self.subscribe(
            topic,
            TableSink,
            str(self._need().path),
            table,
            key,
            name=f"{topic}->{table}",
            linger_s=SINK_LINGER_S,
        )

    def read_topic(self, topic: str, offset: int = 0, max_rows: int = 100_000) -> pa.Table:
        """Rows retained from ``offset`` on, in every partition (partition by partition)."""
        handle = self.topic(topic)
        partitions = resolve([handle.call("end_offsets")])[0]
        got = resolve([handle.call("read", offset, max_rows, p) for p in partitions])
        got = [g for g in got if g.num_rows] or got[:1]
        return pa.concat_tables(got, promote_options="default")

    def flush_topics(self) -> None:
        resolve([t.call("flush") for t in self.topics.values()])

    # -- kinds ----------------------------------------------------------------------------------
    def register(
        self,
        kind_cls: type[EntityKind],
        config: Any = None,
        shards: int | None = None,
        sites: list[str] | None = None,
        forward: dict[str, str] | None = None,
    ) -> None:
        """Host ``kind_cls`` in shards; its stored profiles are picked up from the data folder.

        A kind with a ``site_key`` is partitioned by site first: ``shards`` shards for
        each of ``sites``, each placed by the policy at (usually) the edge of its site.

        ``forward`` maps topics the kind emits to kinds registered before it: those rows
        go shard to shard, routed by the next kind's key, with their watermark (a stage
        graph, e.g. per-auction winners on to a per-category average). A checkpoint
        drains the stages in order, so the graph's state is one consistent cut.
        """
        store = self._need()
        kind_cls.check()
        if kind_cls.name in self.kinds:
            raise ConfigError(f"entity kind {kind_cls.name!r} is registered already")
        if kind_cls.site_key and not sites:
            raise ConfigError(
                f"entity kind {kind_cls.name!r} is partitioned by {kind_cls.site_key!r}: "
                "register it with sites=[...]"
            )
        if kind_cls.name not in self.checkpoint_state.versions and store.exists(kind_cls.name):
            store.drop(kind_cls.name)  # written by a checkpoint that never committed
        forward = dict(forward or {})
        for topic, target in forward.items():
            if topic not in kind_cls.topics:
                raise ConfigError(
                    f"entity kind {kind_cls.name!r} forwards topic {topic!r}, which it does not "
                    f"declare; add it to {kind_cls.__qualname__}.topics"
                )
            if target not in self.kinds:
                raise ConfigError(
                    f"entity kind {kind_cls.name!r} forwards {topic!r} to {target!r}: register "
                    f"{target!r} first; registered: {sorted(self.kinds)}"
                )
        n = shards or self.n_shards
        total = n * (len(sites or []) if kind_cls.site_key else 1)  # shards over all sites
        if kind_cls.snapshot_scope == "shard":
            snapshots = [self._load_snapshot(f"{kind_cls.name}#{i}") for i in range(total)]
            if self._load_snapshot(f"{kind_cls.name}#{total}") is not None:
                raise ConfigError(
                    f"entity kind {kind_cls.name!r} keeps state per shard and was saved with "
                    f"more than {total} shards; start it with the same shards and sites"
                )
        else:
            snapshots = [self._load_snapshot(kind_cls.name)] * total
        emitted = [t for t in kind_cls(config).active_topics() if t not in forward]
        # its own output topics live in its shards, a partition each (runtime.topics.colocated),
        # unless they exist already, are shared sinks of several steps, or are partitioned
        # by a key of their own
        colocated = [
            t
            for t in emitted
            if t not in self.topics
            and t not in SHARED_TOPICS
            and t not in self.config.topic_partitions
        ]
        topics = {t: self.topic(t) for t in emitted if t not in colocated}
        saved = self.checkpoint_state.meta.get("topics", {})
        shares = {t: split_snapshot(saved.get(t), total) for t in colocated}
        retention = (
            self.config.topic_retention_rows,
            self.config.topic_retention_bytes,
            self.config.topic_retention_seconds,
        )
        forwards = {
            t: (self.kinds[k].cls, self.kinds[k].shards, self.kinds[k].per_site)
            for t, k in forward.items()
        }
        handles: list[Handle] = []
        by_site: dict[str | None, list[int]] = {}
        for site in sites if kind_cls.site_key else [None]:
            for i in range(n):
                name = names.shard(kind_cls.name, i, site)
                by_site.setdefault(site, []).append(len(handles))
                handles.append(
                    self._spawn(
                        Shard,
                        kind_cls,
                        config,
                        i,
                        n,
                        str(store.path),
                        self._max_active(kind_cls),
                        topics,
                        snapshots[len(handles)],
                        self.config.idle_seconds,
                        forwards=forwards,
                        channel=name,
                        outlets={
                            t: outlet(len(handles), retention, shares[t][len(handles)])
                            for t in colocated
                        },
                        site=site,
                        spec=ActorSpec(name, "shard", kind_cls.name, site),
                    )
                )
        resolve([h.call("ping") for h in handles])  # surfaces start-up errors here
        for t in colocated:
            self.topics[t] = ColocatedTopic(t, handles, kind_cls.name)  # type: ignore[assignment]
        self._shard_names[kind_cls.name] = [h.name for h in handles]
        for target in set(forward.values()):  # downstream watermarks wait for all of these
            down = self.kinds[target]
            upstream = [u for u, k in self.kinds.items() if target in k.forward.values()]
            inputs = [c for u in upstream for c in self._shard_names[u]] + [h.name for h in handles]
            resolve([h.call("set_inputs", inputs) for h in down.shards])
        site_list = [s for s in by_site if s is not None]
        router = Router(kind_cls, handles, n, site_list, self.config.max_inflight)
        self.kinds[kind_cls.name] = _Kind(kind_cls, config, handles, router, by_site, n, forward)

    def shards_of(self, kind: str) -> list[Handle]:
        """Every shard of ``kind``, in routing order."""
        return list(self._kind(kind).shards)

    def shards_by_site(self, kind: str) -> dict[str, list[Handle]]:
        """For a site-partitioned kind: each site's shards, in routing order."""
        k = self._kind(kind)
        return {s: [k.shards[i] for i in idx] for s, idx in k.by_site.items() if s is not None}

    def sites(self, kind: str) -> list[str]:
        """The sites a site-partitioned kind serves."""
        return [s for s in self._kind(kind).by_site if s is not None]

    def _spawn(self, cls: type, *args: Any, spec: ActorSpec, **kwargs: Any) -> Handle:
        """Start an actor where the placement policy wants it, among the nodes alive now."""
        want = self.policy.place(spec)
        sel, got = None, want
        if self.config.mode == "ray":
            sel, got = selector(want, [n for n in nodes() if n["alive"]])
        handle = spawn(
            cls, *args, name=spec.name, mode=self.config.mode, label_selector=sel, **kwargs
        )
        self.placed[spec.name] = (spec, want, got, handle)
        return handle

    def placement(self) -> list[dict[str, Any]]:
        """Every runtime actor with the node it runs on, as Ray reports it (not as intended)."""
        if self.config.mode == "local":
            return [
                {
                    "actor": name,
                    "kind": spec.kind,
                    "role": "hybrid",
                    "site": "local",
                    "node_id": "local",
                }
                for name, (spec, _, _, _) in self.placed.items()
            ]
        wait_ready([h for _, _, _, h in self.placed.values()])
        where = actor_nodes()
        info = {n["node_id"]: n for n in nodes()}
        out = []
        for name, (spec, _, _, _) in self.placed.items():
            node = info.get(where.get(name, ""), {})
            out.append(
                {
                    "actor": name,
                    "kind": spec.kind,
                    "role": node.get("role", ""),
                    "site": node.get("site", ""),
                    "node_id": where.get(name, ""),
                }
            )
        return out

    def _max_active(self, kind_cls: type[EntityKind]) -> int:
        if self.config.max_active is not None:
            return self.config.max_active
        return max(1, int(self.config.shard_memory_mb * 2**20 / kind_cls.spec().bytes_per_entity()))

    def _kind(self, name: str) -> _Kind:
        if name not in self.kinds:
            raise ConfigError(
                f"no entity kind {name!r} is registered; registered: {sorted(self.kinds)}"
            )
        return self.kinds[name]

    def _load_snapshot(self, kind: str) -> bytes | None:
        store = self._need()
        if not store.exists(SNAPSHOTS):
            return None
        rows = store.read(SNAPSHOTS).to_pylist()
        blobs = [r["blob"] for r in rows if r["kind"] == kind]
        return blobs[0] if blobs else None

    # -- routing ---------------------------------------------------------------------------------
    def dispatch(self, kind: str, events: pa.Table, watermark: int | None = None) -> None:
        """Send ``events`` to the shards of ``kind`` without waiting (bounded in flight);
        with the source's event-time ``watermark`` when the app tracks one."""
        self._kind(kind).router.send(events, watermark)
        self.publish_status()

    def observe_time(self, scope: str, spec: Any, events: pa.Table, source: str) -> int:
        """Track event time of ``events`` (per partition, see :class:`EventTime`) for
        ``scope`` and return the watermark to send with them."""
        wm = self.watermarks.get(scope)
        if wm is None:
            wm = self.watermarks[scope] = Watermarks(spec.out_of_orderness_ms, spec.idle_ms)
        if events.num_rows:
            wm.observe_table(events, spec.column, spec.partition, source)
        return wm.current()

    def set_watermarks(self, scope: str, snapshot: bytes) -> None:
        """The event time a feeder tracks for ``scope`` (e.g. one site's), committed with
        the next checkpoint."""
        self.watermarks[scope] = Watermarks.restore(snapshot)

    def watermark_snapshot(self, scope: str) -> bytes | None:
        """What the last commit (or a feeder since) recorded of ``scope``'s event time."""
        marks = self.watermarks.get(scope)
        return marks.snapshot() if marks is not None else None

    def advance(self, kind: str, watermark: int) -> None:
        """Event time of the source reached ``watermark``: every shard of ``kind`` fires
        what is due, and passes it on down the stages it forwards to."""
        self._kind(kind).router.advance(watermark)

    def status(self) -> dict[str, Any]:
        """Per shard: rows sent, batches in flight (its queue) and rows/s since start."""
        stages = []
        elapsed = max(time.time() - self._started_at, 1e-9)
        for kind, k in self.kinds.items():
            for name, pending, rows in zip(
                self._shard_names[kind], k.router.inflight, k.router.rows_sent, strict=True
            ):
                stages.append(
                    {
                        "actor": name,
                        "rows": rows,
                        "rows_per_s": round(rows / elapsed, 1),
                        "queue_depth": len(pending),
                    }
                )
        hosted = {
            n: [s.name for s in t.shards]
            for n, t in self.topics.items()
            if isinstance(t, ColocatedTopic)
        }
        return {
            "stages": stages,
            "restarts": self.restarts,
            "apps": self.app_reports,
            "topics": hosted,  # topics whose partitions live in shards (for `edgecore tail`)
        }

    def publish_status(self, force: bool = False) -> None:
        """Keep the status board fresh for `edgecore status --address` (at most once a second)."""
        now = time.time()
        if self._board is None or (not force and now - self._board_at < 1.0):
            return
        self._board_at = now
        self._board.call("update", self.status())  # fire and forget

    def poll(self) -> list[dict[str, float]]:
        """Stats of the shard calls finished since the last poll (does not block)."""
        for k in self.kinds.values():
            self._done.extend(k.router.poll())
        out, self._done = self._done, []
        return out

    def drain_inflight(self) -> list[dict[str, float]]:
        """Wait for every batch in flight; stats of all calls not collected yet."""
        for k in self.kinds.values():
            self._done.extend(k.router.drain())
        out, self._done = self._done, []
        return out

    def send(self, kind: str, events: pa.Table | list[dict[str, Any]]) -> dict[str, float]:
        """Apply ``events`` to their entities and wait; returns summed shard stats."""
        if isinstance(events, list):
            events = pa.Table.from_pylist(events)
        self.dispatch(kind, events)
        return sum_stats(self.drain_inflight())

    def dead_letter(self, rows: pa.Table, publish: bool = True) -> None:
        """Refused rows: published on the ``dead_letters`` topic now (for `edgecore tail`
        and subscribers) and written to the ``dead_letters`` table with the next checkpoint.
        ``publish=False``: a feeder put them on the topic itself."""
        if rows.num_rows:
            self._dead.append(rows)
            if not publish:
                return
            topic = self.topic(DEAD_LETTERS)
            self._dead_pending.append(topic.call("publish", pack_for(topic, rows)))
            if len(self._dead_pending) > 8:  # bounded: a flood of bad input waits for the topic
                resolve(self._dead_pending[:-8])
                self._dead_pending = self._dead_pending[-8:]

    def _seen_set(self, scope: str) -> SeenSet:
        if scope not in self.seen:
            self.seen[scope] = SeenSet(self.config.dedup_capacity)
        return self.seen[scope]

    def applied_ids(self, scope: str) -> np.ndarray:
        """The event ids applied in ``scope`` that the runtime remembers (for ingest stages)."""
        return self._seen_set(scope).ids()

    def record_applied(self, scope: str, event_ids: np.ndarray) -> None:
        """Ids an ingest stage deduplicated and applied; saved with the next checkpoint."""
        if len(event_ids):
            self._seen_set(scope).add(event_ids[~self._seen_set(scope).contains(event_ids)])
            self._new_seen.append((scope, np.asarray(event_ids, dtype=np.int64)))

    def start_stage(
        self, cls: type, *args: Any, name: str, stage: str, site: str | None, **kwargs: Any
    ) -> Handle:
        """Start a pipeline-stage actor placed by the policy (e.g. ingest at a site's edge);
        ``kwargs`` go to ``cls`` (``max_concurrency`` to Ray, for a threaded actor)."""
        return self._spawn(cls, *args, spec=ActorSpec(name, "stage", stage, site), **kwargs)

    def stop_stage(self, name: str) -> None:
        entry = self.placed.pop(name, None)
        if entry is not None:
            with contextlib.suppress(Exception):
                entry[3].kill()

    def dedup(self, scope: str, event_ids: np.ndarray) -> np.ndarray:
        """Mask of ids not applied before in ``scope`` (in this run or before the last commit)."""
        new = self._seen_set(scope).add_new(event_ids)
        if new.any():
            self._new_seen.append((scope, np.asarray(event_ids, dtype=np.int64)[new]))
        return new

    # -- checkpoints -----------------------------------------------------------------------------
    def checkpoint(self, positions: dict[str, int] | None = None) -> Checkpoint:
        """Barrier: wait for in-flight batches, write every changed profile, commit positions."""
        return self.commit_checkpoint(self.prepare_checkpoint(), positions)

    def prepare_checkpoint(self, drains: dict[str, Any] | None = None) -> PreparedCheckpoint:
        """The quick half of a checkpoint: wait for in-flight batches and take every shard's
        changed state, the kind snapshots and the topic offsets as one cut.

        Feeders that paused their dispatch for it may go on as soon as this returns: what
        they send next belongs to the next checkpoint. :meth:`commit_checkpoint` writes it.
        ``drains``: shard name -> a drain a feeder already sent behind its last batch of
        the cut (and went on); those shards' state is taken from it.
        """
        drains = drains or {}
        self._need()
        started = time.time()
        finished = self.drain_inflight()  # (extend() would bind the list before it is swapped)
        self._done.extend(finished)
        prepared = PreparedCheckpoint(started=started)
        # kinds forward only to kinds registered before them: drain the later ones first
        for name, k in reversed(self.kinds.items()):
            drained = resolve(
                [drains[h.name] if h.name in drains else h.call("drain") for h in k.shards]
            )
            self._done.extend(d.stats for d in drained if d.stats)
            for topic, handle in self.topics.items():
                if isinstance(handle, ColocatedTopic) and handle.kind == name:
                    # partition offsets as of the cut, taken by the drain itself
                    prepared.topics[topic] = {
                        "version": 1,
                        "name": topic,
                        "colocated": [d.outlets[topic] for d in drained],
                    }
            tables = [d.table for d in drained if d.table is not None and d.table.num_rows]
            if tables:
                prepared.states.append(
                    (name, k.cls.key, pa.concat_tables(tables, promote_options="default"))
                )
            if k.cls.snapshot_scope == "shard":
                prepared.snapshots += [
                    (f"{name}#{i}", d.snapshot) for i, d in enumerate(drained) if d.snapshot
                ]
                continue
            blobs = [d.snapshot for d in drained if d.snapshot is not None]
            if blobs:
                merged = k.cls(None).merge_snapshots(blobs)
                if merged is not None:
                    prepared.snapshots.append((name, merged))
                    resolve([h.call("restore_kind", merged) for h in k.shards])
        prepared.dead, self._dead = self._dead, []
        prepared.seen, self._new_seen = self._new_seen, []
        resolve(self._dead_pending)  # the dead letters' topic has them before its snapshot
        self._dead_pending = []
        standalone = {n: h for n, h in self.topics.items() if not isinstance(h, ColocatedTopic)}
        prepared.topics.update(
            zip(standalone, resolve([h.call("snapshot") for h in standalone.values()]), strict=True)
        )
        prepared.watermarks = {
            s: base64.b64encode(w.snapshot()).decode() for s, w in self.watermarks.items()
        }
        return prepared

    def commit_checkpoint(
        self, prepared: PreparedCheckpoint, positions: dict[str, int] | None = None
    ) -> Checkpoint:
        """Write a prepared cut to LanceDB, then commit it with the source ``positions`` it
        reflects: one ``_checkpoints`` row naming every table version (the commit point)."""
        store = self._need()
        for name, key, table in prepared.states:
            store.upsert(name, table, key=key)
        if prepared.snapshots:
            store.upsert(
                SNAPSHOTS,
                pa.table(
                    {
                        "kind": [n for n, _ in prepared.snapshots],
                        "blob": [b for _, b in prepared.snapshots],
                    },
                    schema=pa.schema([("kind", pa.string()), ("blob", pa.binary())]),
                ),
                key="kind",
            )
        if prepared.dead:
            dead = pa.concat_tables(prepared.dead)
            store.upsert(DEAD_LETTERS, dead.cast(DEAD_LETTER_SCHEMA), key="dead_letter_id")
        if prepared.seen:
            ids = np.concatenate([i for _, i in prepared.seen])
            names = pa.array([s for s, _ in prepared.seen], pa.string())
            which = np.repeat(np.arange(len(prepared.seen)), [len(i) for _, i in prepared.seen])
            scope = names.take(pa.array(which))
            epoch = np.full(len(ids), self.checkpoint_state.epoch + 1, dtype=np.int64)
            store.append(
                SEEN,
                pa.table({"scope": scope, "event_id": pa.array(ids, pa.int64()), "epoch": epoch}),
            )
        managed = [n for n in [*self.kinds, DEAD_LETTERS, SEEN, SNAPSHOTS] if store.exists(n)]
        previous = self.checkpoint_state
        cp = Checkpoint(
            epoch=previous.epoch + 1,
            started_at=prepared.started,
            positions={**previous.positions, **(positions or {})},
            versions={**previous.versions, **{n: store.version(n) for n in managed}},
            meta={
                **previous.meta,
                # topics not started in this run keep their last saved offsets
                "topics": {**previous.meta.get("topics", {}), **prepared.topics},
                "watermarks": prepared.watermarks,
            },
        )
        store.commit(cp)
        self.checkpoint_state = cp
        self.n_checkpoints += 1
        if self.n_checkpoints % self.config.compact_every == 0:
            self._trim_seen(store, cp.epoch)
            for n in [*managed, "_checkpoints"]:
                store.compact(
                    n,
                    keep_newer_than=previous.started_at or prepared.started,
                    keep_version=cp.versions.get(n),
                )
        return cp

    def _trim_seen(self, store: Store, epoch: int) -> None:
        """Keep each scope's applied ids near the dedup capacity: drop whole old epochs."""
        if not store.exists(SEEN):
            return
        table, cap = store.table(SEEN), self.config.dedup_capacity
        for scope in self.seen:
            where = f"scope = '{scope}'"
            if table.count_rows(where) <= cap:
                continue
            lo, hi = 0, epoch  # the largest cutoff e with rows(epoch >= e) >= capacity
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if table.count_rows(f"{where} AND epoch >= {mid}") >= cap:
                    lo = mid
                else:
                    hi = mid - 1
            if lo > 0:
                table.delete(f"{where} AND epoch < {lo}")

    def sync_kinds(self) -> None:
        """Merge each kind's shard snapshots and hand the result back (no barrier).

        Calls to an actor run in the order they were sent, so each snapshot reflects
        every batch sent before it. Learning from a batch that a shard applies between
        its snapshot and the restore is overwritten; the next sync picks learning up again.
        """
        for k in self.kinds.values():
            if k.cls.snapshot_scope == "shard":
                continue  # each shard's own state: nothing to share
            blobs = [
                b for b in resolve([h.call("snapshot_kind") for h in k.shards]) if b is not None
            ]
            merged = k.cls(None).merge_snapshots(blobs) if len(blobs) > 1 else None
            if merged is not None:
                resolve([h.call("restore_kind", merged) for h in k.shards])

    # -- single entities -------------------------------------------------------------------------
    def _shard_for(self, kind: str, key: str) -> Handle:
        """The shard hosting ``key``; for a site-partitioned kind, the one that knows it."""
        k = self._kind(kind)
        i = int(shard_of(hash_keys(pa.array([key])), k.per_site)[0])
        candidates = [k.shards[idx[i]] for idx in k.by_site.values()]
        if len(candidates) == 1:
            return candidates[0]
        for h in candidates:  # a key lives at one site; ask each site's shard for it
            try:
                resolve([h.call("get", key)])
                return h
            except UnknownEntityError:
                continue
        return candidates[0]

    def lookup(self, kind: str, keys: pa.Array | pa.ChunkedArray) -> pa.Table:
        """The current state of the ``kind`` entities named by ``keys``, row for row (null
        where there is none): one call per shard, for joining a stream with state."""
        k = self._kind(kind)
        if k.cls.site_key:
            raise ConfigError(
                f"entity kind {kind!r} is partitioned by site: look its entities up at their site"
            )
        if isinstance(keys, pa.ChunkedArray):
            keys = keys.combine_chunks()
        if not pa.types.is_string(keys.type):
            keys = keys.cast(pa.string())
        sid = shard_of(hash_keys(keys), len(k.shards))
        parts = [np.flatnonzero(sid == i) for i in range(len(k.shards))]
        asked = [(i, p) for i, p in enumerate(parts) if len(p)]
        got = resolve([k.shards[i].call("lookup", keys.take(pa.array(p))) for i, p in asked])
        if not got:
            return resolve([k.shards[0].call("lookup", keys)])[0]
        order = np.concatenate([p for _, p in asked])
        table = pa.concat_tables(got)
        back = np.empty(len(order), dtype=np.int64)
        back[order] = np.arange(len(order))
        return table.take(pa.array(back))

    def entity_state(self, kind: str, key: str) -> dict[str, Any]:
        return resolve([self._shard_for(kind, key).call("get", key)])[0]

    def call_entity(self, kind: str, key: str, handler: str, *args: Any) -> Any:
        return resolve([self._shard_for(kind, key).call("call", key, handler, args)])[0]

    def ref(self, kind: str, key: str) -> EntityRef:
        self._kind(kind)
        return EntityRef(self, kind, key)

    def shard_stats(self) -> dict[str, list[dict[str, float]]]:
        return {n: resolve([h.call("stats") for h in k.shards]) for n, k in self.kinds.items()}

    @property
    def data_dir(self) -> Path:
        return Path(self.config.data_dir)


def sum_stats(stats: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for s in stats:
        for k, v in s.items():
            if k != "outbox":
                out[k] += v
    return dict(out)
