"""The deployment: every actor of a runtime, started where the placement policy wants it.

It spawns shards, topics, subscribers, stages and the status board under the names of
:mod:`runtime.cluster.names`, records what it placed where (for ``placement()`` and for a
restart, which starts the same actors again), and holds each kind's shards and router
(:class:`DeployedKind`). State to start from comes from the checkpointer's last commit.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from runtime.cluster import names
from runtime.cluster.handles import (
    Handle,
    actor_nodes,
    nodes,
    resolve,
    spawn,
    spawn_hosted,
    wait_ready,
)
from runtime.cluster.host import Host, hostable
from runtime.cluster.placement import ActorSpec, DefaultPolicy, Placement, PlacementPolicy, selector
from runtime.cluster.status import BoardClient, StatusBoard
from runtime.cluster.wire import receiving
from runtime.coordinator.config import RuntimeConfig
from runtime.coordinator.deployed import DeployedKind
from runtime.edge.wiring import Links, core_acks
from runtime.entities.clients import ShardClient
from runtime.entities.kind import EntityKind
from runtime.entities.router import Router
from runtime.entities.shard import Shard
from runtime.errors import ConfigError
from runtime.streams.schema import DEAD_LETTERS
from runtime.streams.sinks import TableSink
from runtime.topics.clients import AnyTopic, SubscriberClient, TopicClient
from runtime.topics.colocated import ColocatedTopic, as_standalone, outlet, split_snapshot
from runtime.topics.segments import TOPICS_DIR
from runtime.topics.topic import Topic

if TYPE_CHECKING:
    from runtime.coordinator.checkpoint import Checkpointer

#: topics every step may write to: never hosted by one kind's shards
SHARED_TOPICS = frozenset({DEAD_LETTERS, "late_events"})
#: spawn options only an actor of its own can have: a class started with one is not hosted
OWN_ACTOR_OPTIONS = frozenset({"num_cpus", "max_concurrency", "resources", "max_restarts"})


class Deployment:
    """Every runtime actor: spawned where the policy wants it, named once, restartable."""

    def __init__(self, config: RuntimeConfig) -> None:
        self.config = config
        self.policy: PlacementPolicy = config.policy or DefaultPolicy()
        #: actor name -> (what it is, wanted placement, placement given the nodes, handle)
        self.placed: dict[str, tuple[ActorSpec, Placement, Placement, Handle]] = {}
        self.kinds: dict[str, DeployedKind] = {}
        self.topics: dict[str, AnyTopic] = {}
        self.subscribers: dict[str, SubscriberClient] = {}
        #: how each subscriber was started, to start it again after a restart
        self.subscriptions: dict[str, tuple[str, type, tuple[Any, ...], dict[str, Any], float]] = {}
        self.board: BoardClient | None = None
        self._starting: list[Handle] = []  # subscribers spawned with wait=False
        self._syncing: list[Any] = []  # kind syncs in flight (sync_kinds)
        #: edge shards whose forwards go through durable links (runtime.edge)
        self.links = Links()

    def spawn(self, cls: type, *args: Any, spec: ActorSpec, **kwargs: Any) -> Handle:
        """Start an actor where the placement policy wants it, among the nodes alive now;
        a hostable class (runtime.cluster.host) in the host of that placement."""
        want = self.policy.place(spec)
        sel, got = None, want
        if self.config.mode == "ray":
            sel, got = selector(want, [n for n in nodes() if n["alive"]])
            if hostable(cls) and not OWN_ACTOR_OPTIONS & kwargs.keys():
                handle = spawn_hosted(self._host(sel, got), cls, *args, name=spec.name, **kwargs)
                self.placed[spec.name] = (spec, want, got, handle)
                return handle
        handle = spawn(
            cls, *args, name=spec.name, mode=self.config.mode, label_selector=sel, **kwargs
        )
        self.placed[spec.name] = (spec, want, got, handle)
        return handle

    def _host(self, sel: dict[str, str] | None, got: Placement) -> Handle:
        """The host of the placement ``got`` (started on first use)."""
        name = names.host(got.role, got.site) if sel is not None else names.host("any")
        if name not in self.placed:
            handle = spawn(Host, name=name, mode=self.config.mode, label_selector=sel)
            self.placed[name] = (ActorSpec(name, "host", got.role, got.site), got, got, handle)
        return self.placed[name][3]

    def start_board(self) -> None:
        if self.config.mode == "ray":
            spec = ActorSpec(names.BOARD, "stage", "status")
            self.board = BoardClient(self.spawn(StatusBoard, spec=spec))

    def stop_actor(self, name: str) -> None:
        entry = self.placed.pop(name, None)
        if entry is not None:
            with contextlib.suppress(Exception):  # already gone with its node
                entry[3].kill()

    def recipe(self) -> tuple[list[tuple[Any, ...]], dict[str, tuple[Any, ...]]]:
        """What a restart starts again: (kind class, config, shards per site, sites,
        forwards) per kind, in registration order, and every subscription."""
        kinds = [
            (k.cls, k.config, k.per_site, k.sites() or None, k.forward) for k in self.kinds.values()
        ]
        return kinds, dict(self.subscriptions)

    def kill_all(self) -> None:
        self.links.close()
        # hosts last: the shards' topics push to the sinks hosted there until they go
        for name in sorted(self.placed, key=lambda n: n.startswith(names.HOST_PREFIX)):
            self.stop_actor(name)
        self.kinds, self.topics, self.subscribers, self.subscriptions = {}, {}, {}, {}
        self._syncing = []  # their shards are gone: nothing to wait for
        self.board, self.links = None, Links()

    # -- topics and subscribers ---------------------------------------------------------------
    def topic(self, name: str, saved: dict[str, Any] | None) -> AnyTopic:
        """The topic ``name``, started on first use from its ``saved`` snapshot."""
        if name not in self.topics:
            partitions, key = self.config.topic_partitions.get(name, (1, None))
            if saved is not None and "colocated" in saved:  # saved by the shards hosting it
                partitions, saved = as_standalone(saved)
            spec = ActorSpec(names.topic(name), "topic", name)
            rows, size, age = self.config.retention
            topic = TopicClient(
                self.spawn(
                    Topic,
                    name,
                    rows,
                    size,
                    age,
                    partitions=partitions,
                    partition_key=key,
                    log_dir=self.topic_log_dir,
                    spec=spec,
                )
            )
            if saved is not None:  # offsets and consumer groups go on from the last commit
                resolve([topic.restore(saved)])
            self.topics[name] = topic
        return self.topics[name]

    @property
    def topic_log_dir(self) -> str | None:
        """Where topics keep their log on disk (None: in memory only)."""
        if not self.config.topic_log:
            return None
        return os.path.join(os.path.abspath(self.config.data_dir), TOPICS_DIR)

    def subscribe(
        self,
        topic_name: str,
        topics: Callable[[str], AnyTopic],
        cls: type,
        *args: Any,
        name: str,
        from_offset: Any = None,
        linger_s: float = 0.0,
        wait: bool = True,
        **kwargs: Any,
    ) -> SubscriberClient:
        """Host ``cls(*args, **kwargs)`` as subscriber ``name`` of ``topics(topic_name)``.
        ``wait=False``: return while its actor is still starting; :meth:`settle` waits for
        it (several subscribers then start side by side, not one after the other)."""
        for needed in ("on_batch", "flush"):
            if not callable(getattr(cls, needed, None)):
                raise ConfigError(f"subscriber {cls.__qualname__} must define {needed}()")
        topic = topics(topic_name)
        role = "sink" if cls is TableSink else "subscriber"
        group = args[1] if cls is TableSink else name  # a sink is placed by its table
        spec = ActorSpec(names.subscriber(name), role, group)
        # it gets batches packed (runtime.cluster.wire), its on_batch tables
        sub = SubscriberClient(self.spawn(receiving(cls), *args, spec=spec, **kwargs))
        # up before the topic relies on it: deliveries to an actor still starting (seconds
        # on a small machine) pile up and hold back every publisher
        self._starting.append(sub.handle)
        if wait:
            self.settle()
        resolve([topic.subscribe(name, sub, from_offset, linger_s)])
        self.subscribers[name] = sub
        self.subscriptions[name] = (topic_name, cls, args, kwargs, linger_s)
        return sub

    def settle(self) -> None:
        """Wait until every subscriber started with ``wait=False`` is up."""
        starting, self._starting = self._starting, []
        wait_ready(starting)

    def hosted_topics(self, kind: str) -> list[str]:
        """The topics whose partitions live in ``kind``'s shards."""
        return [
            n for n, t in self.topics.items() if isinstance(t, ColocatedTopic) and t.kind == kind
        ]

    def standalone_topics(self) -> dict[str, TopicClient]:
        return {n: t for n, t in self.topics.items() if isinstance(t, TopicClient)}

    # -- kinds --------------------------------------------------------------------------------
    def kind(self, name: str) -> DeployedKind:
        if name not in self.kinds:
            raise ConfigError(
                f"no entity kind {name!r} is registered; registered: {sorted(self.kinds)}"
            )
        return self.kinds[name]

    def max_active(self, kind_cls: type[EntityKind]) -> int:
        """Entities a shard of ``kind_cls`` keeps in memory before passivating."""
        if self.config.max_active is not None:
            return self.config.max_active
        return max(1, int(self.config.shard_memory_mb * 2**20 / kind_cls.spec().bytes_per_entity()))

    def deploy_kind(
        self,
        kind_cls: type[EntityKind],
        config: Any,
        n: int,
        sites: list[str] | None,
        forward: dict[str, str],
        store_path: str,
        saved: Checkpointer,
    ) -> DeployedKind:
        """Start ``n`` shards of ``kind_cls`` (per site for a site-partitioned kind) from the
        last commit; its own output topics live in its shards (runtime.topics.colocated)
        unless they exist already, are shared by several steps, or have a key of their own."""
        name = kind_cls.name
        self._check_kind(kind_cls, sites, forward)
        total = n * (len(sites or []) if kind_cls.site_key else 1)  # shards over all sites
        snapshots, own = saved.start_snapshots(kind_cls, total)
        emitted = [t for t in kind_cls(config).active_topics() if t not in forward]
        hosted = [
            t
            for t in emitted
            if t not in self.topics
            and t not in SHARED_TOPICS
            and t not in self.config.topic_partitions
        ]
        topics = {t: self.topic(t, saved.saved_topic(t)) for t in emitted if t not in hosted}
        shares = {t: split_snapshot(saved.saved_topic(t), total) for t in hosted}
        plan = self.links.plan(self, kind_cls, forward, sites, saved.saved_edge())
        forwards = {
            t: (self.kinds[k].cls, self.kinds[k].shards, self.kinds[k].per_site)
            for t, k in forward.items()
            if plan is None
        }
        layout = sites if kind_cls.site_key else [None]
        # what each shard applied from edge links at the last commit (runtime.edge.inbox)
        acks = core_acks(
            saved.saved_edge(), name, [names.shard(name, i, s) for s in layout for i in range(n)]
        )
        shards: list[ShardClient] = []
        by_site: dict[str | None, list[int]] = {}
        for site in layout:
            for i in range(n):
                j, shard_name = len(shards), names.shard(name, i, site)
                by_site.setdefault(site, []).append(j)
                links = self.links.specs(self, plan, shard_name, site)
                handle = self.spawn(
                    Shard,
                    kind_cls,
                    config,
                    i,
                    n,
                    store_path,
                    self.max_active(kind_cls),
                    topics,
                    snapshots[j],
                    self.config.idle_seconds,
                    forwards=forwards,
                    channel=shard_name,
                    outlets={
                        t: outlet(j, self.config.retention, shares[t][j], self.topic_log_dir)
                        for t in hosted
                    },
                    site=site,
                    shard_snapshot=own[j],
                    export=self.config.export_dir,
                    links=links,
                    acks=acks[j],
                    spec=ActorSpec(shard_name, "shard", name, site),
                )
                shards.append(ShardClient(handle))
                self.links.add(shards[-1], links)
        resolve([s.ping() for s in shards])  # surfaces start-up errors here
        for t in hosted:
            self.topics[t] = ColocatedTopic(t, shards, name)
        for target in set(forward.values()):  # downstream watermarks wait for all of these
            upstream = [u for u, k in self.kinds.items() if target in k.forward.values()]
            inputs = [s.name for u in upstream for s in self.kinds[u].shards] + [
                s.name for s in shards
            ]
            resolve([s.set_inputs(inputs) for s in self.kinds[target].shards])
        site_list = [s for s in by_site if s is not None]
        router = Router(kind_cls, shards, n, site_list, self.config.max_inflight)
        self.kinds[name] = DeployedKind(kind_cls, config, shards, router, by_site, n, forward)
        return self.kinds[name]

    def _check_kind(
        self, kind_cls: type[EntityKind], sites: list[str] | None, forward: dict[str, str]
    ) -> None:
        kind_cls.check()
        name = kind_cls.name
        if name in self.kinds:
            raise ConfigError(f"entity kind {name!r} is registered already")
        if kind_cls.site_key and not sites:
            raise ConfigError(
                f"entity kind {name!r} is partitioned by {kind_cls.site_key!r}: "
                "register it with sites=[...]"
            )
        for topic, target in forward.items():
            if topic not in kind_cls.topics:
                raise ConfigError(
                    f"entity kind {name!r} forwards topic {topic!r}, which it does not declare; "
                    f"add it to {kind_cls.__qualname__}.topics"
                )
            if target not in self.kinds:
                raise ConfigError(
                    f"entity kind {name!r} forwards {topic!r} to {target!r}: register {target!r} "
                    f"first; registered: {sorted(self.kinds)}"
                )

    def sync_kinds(self) -> None:
        """Merge each kind's shard replicas (an online model) without waiting for it.

        Every shard snapshots behind the batches sent before; the first merges those
        snapshots and loads the result, the others load what it merged. Ray runs one
        caller's calls to an actor in order and hands a call the results it takes when
        they are done, so no batch runs between a shard's snapshot and its restore, and the
        caller goes on routing meanwhile: waiting here for the round trips stalled a 2M
        replay's driver for 0.2-0.5 s a sync. What the calls return is looked at by
        :meth:`settle_syncs`, at the next sync and at each checkpoint.
        """
        self.settle_syncs()
        for k in self.kinds.values():
            if k.cls.snapshot_scope == "shard" or len(k.shards) < 2:
                continue  # each shard's own state, or one replica: nothing to share
            first, *rest = k.shards
            merged = first.merge_kind([s.snapshot_kind() for s in k.shards])
            self._syncing += [merged, *(s.restore_kind(merged) for s in rest)]

    def settle_syncs(self) -> None:
        """Wait for the syncs in flight (done long since, as a rule); raise what one raised."""
        pending, self._syncing = self._syncing, []
        resolve(pending)

    # -- where everything runs ----------------------------------------------------------------
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
        for name, (spec, _, _, handle) in self.placed.items():
            node_id = where.get(handle.actor, "")  # a hosted one runs where its host does
            node = info.get(node_id, {})
            out.append(
                {
                    "actor": name,
                    "kind": spec.kind,
                    "role": node.get("role", ""),
                    "site": node.get("site", ""),
                    "node_id": node_id,
                }
            )
        return out

    def shard_status(self, elapsed: float) -> list[dict[str, Any]]:
        """Per shard: rows sent, batches in flight (its queue) and rows/s over ``elapsed``."""
        return [
            {
                "actor": s.name,
                "rows": rows,
                "rows_per_s": round(rows / elapsed, 1),
                "queue_depth": len(queue),
            }
            for k in self.kinds.values()
            for s, queue, rows in zip(k.shards, k.router.inflight, k.router.rows_sent, strict=True)
        ]

    def hosted_topic_shards(self) -> dict[str, list[str]]:
        """Topic -> the shards hosting its partitions, in partition order."""
        return {
            t: [s.name for s in self.kinds[k].shards]
            for k in self.kinds
            for t in self.hosted_topics(k)
        }


def default_shards(config: RuntimeConfig) -> int:
    """Shards per kind: as configured, else one per CPU."""
    return config.shards or max(1, os.cpu_count() or 1)
