"""The runtime's front object: starts Ray, hosts kinds in shards, routes batches, commits.

:class:`Runtime` is thin on purpose: a :class:`~runtime.coordinator.deployment.Deployment`
starts and places every actor, each kind's :class:`~runtime.entities.router.Router` sends
batches to its shards, and a :class:`~runtime.coordinator.checkpoint.Checkpointer` takes
and commits the checkpoints. Everything a feeder, an app or a command needs is a method.

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

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from runtime.cluster.handles import init_ray, resolve
from runtime.cluster.heap import limit_arenas
from runtime.cluster.placement import ActorSpec
from runtime.coordinator.checkpoint import DEAD_LETTERS, Checkpointer, PreparedCheckpoint
from runtime.coordinator.config import RuntimeConfig
from runtime.coordinator.deployment import Deployment, default_shards
from runtime.coordinator.routing import Routing, sum_stats
from runtime.entities.clients import ShardClient
from runtime.entities.kind import EntityKind, EntityRef, current_runtime
from runtime.errors import ConfigError, NotStartedError
from runtime.observe.run import RunMetrics
from runtime.state.store import Checkpoint, Store
from runtime.streams.sinks import TableSink
from runtime.streams.sources import rows_to_table
from runtime.topics.clients import AnyTopic, SubscriberClient, read_all

SINK_LINGER_S = 0.2
NOT_STARTED = "the runtime is not started: use `with Runtime(...) as rt:` or rt.start()"


class Runtime:
    """A running edgecore: use as a context manager, or call start() and stop()."""

    def __init__(self, config: RuntimeConfig | None = None, **overrides: Any) -> None:
        self.config = replace(config or RuntimeConfig(), **overrides)
        self.store: Store | None = None
        self.deployment = Deployment(self.config)
        self._checkpoints: Checkpointer | None = None
        self.restarts = 0
        self.routing = Routing(self.deployment)
        self._reports: dict[str, dict[str, Any]] = {}  # each app's latest summary
        self._checkpoint_at: float | None = None  # when the last checkpoint committed
        self._models: dict[str, dict[str, Any]] = {}  # each model kind's last committed card
        self._started_ray, self._token, self._board_at = False, None, 0.0
        #: the current run's metrics (set by the driver): on the board under "metrics"
        self.metrics: RunMetrics | None = None

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> Runtime:
        limit_arenas()  # before Ray's services and workers start: they inherit it
        if self.config.mode == "ray":
            self._started_ray = init_ray(self.config.address, self.config.num_cpus)
        self.store = Store(self.config.data_dir, warm=self.config.mode == "ray")  # Ray is up
        self._checkpoints = Checkpointer(self.config, self.store)
        self._checkpoints.load()
        self._started_at = time.time()
        self.deployment.start_board()
        self._token = current_runtime.set(self)
        return self

    def __enter__(self) -> Runtime:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop(checkpoint=exc[0] is None)

    def stop(self, checkpoint: bool = True) -> None:
        if self.store is None:
            return
        if checkpoint and self.deployment.kinds:
            self.settle_links()
            self.checkpoint()
            self.flush_topics()
        self.deployment.kill_all()
        if self._token is not None:
            current_runtime.reset(self._token)
            self._token = None
        if self._started_ray:
            import ray

            ray.shutdown()
            self._started_ray = False
        self.store.close()
        self.store = None

    def restart(self) -> None:
        """After an actor failure: stop every actor, go back to the last commit, and start
        the same kinds, topics and subscribers again where the policy puts them now.
        The caller replays its source from the committed position."""
        d = self.deployment
        kinds, subs = d.recipe()
        d.kill_all()
        self.routing.reset()
        self.checkpoints.load()
        d.start_board()
        for cls, config, per_site, sites, forward in kinds:
            self.register(cls, config, shards=per_site, sites=sites, forward=forward)
        for name, (topic, cls, args, kwargs, linger) in subs.items():
            self.subscribe(topic, cls, *args, name=name, linger_s=linger, **kwargs)
        self.restarts += 1

    def rebalance(self, positions: dict[str, int] | None = None) -> None:
        """Commit, then start every actor again where the policy puts it on the nodes alive
        now (how work moves back to an edge node that returned); nothing is lost."""
        self.checkpoint(positions)
        self.restart()

    @property
    def checkpoints(self) -> Checkpointer:
        """The checkpoint coordinator: the last commit, dedup, dead letters, event time."""
        if self._checkpoints is None or self.store is None:
            raise NotStartedError(NOT_STARTED)
        return self._checkpoints

    @property
    def n_shards(self) -> int:
        return default_shards(self.config)

    @property
    def data_dir(self) -> Path:
        return Path(self.config.data_dir)

    # -- topics -------------------------------------------------------------------------------
    def topic(self, name: str) -> AnyTopic:
        """The topic named ``name``, created on first use."""
        return self.deployment.topic(name, self.checkpoints.saved_topic(name))

    def subscribe(
        self, topic: str, subscriber_cls: type, *args: Any, name: str | None = None, **options: Any
    ) -> SubscriberClient:
        """Host ``subscriber_cls(*args)`` as an actor and push ``topic``'s batches to its
        ``on_batch``. ``options``: ``from_offset``; ``linger_s`` (batches pushed together at
        most that late); the rest go to ``subscriber_cls``."""
        name = name or f"{topic}:{subscriber_cls.__name__.lower()}"
        return self.deployment.subscribe(
            topic, self.topic, subscriber_cls, *args, name=name, **options
        )

    def has_subscriber(self, name: str) -> bool:
        return name in self.deployment.subscribers

    def sink_to_table(
        self, topic: str, table: str, key: str | tuple[str, ...] | None = None, wait: bool = True
    ) -> SubscriberClient:
        """Persist a topic into a LanceDB table of the data folder (idempotent with ``key``),
        pushed every 0.2 s at most; ``wait=False``: see ``Deployment.settle``."""
        args, name = (str(self.checkpoints.store.path), table, key), f"{topic}->{table}"
        return self.subscribe(topic, TableSink, *args, name=name, linger_s=SINK_LINGER_S, wait=wait)

    def read_topic(self, topic: str, offset: int = 0, max_rows: int = 100_000) -> pa.Table:
        """Rows retained from ``offset`` on, in every partition (partition by partition)."""
        return read_all(self.topic(topic), offset, max_rows)

    def flush_topics(self) -> None:
        resolve([t.flush() for t in self.deployment.topics.values()])

    # -- kinds and stages ---------------------------------------------------------------------
    def register(
        self,
        kind_cls: type[EntityKind],
        config: Any = None,
        shards: int | None = None,
        sites: list[str] | None = None,
        forward: dict[str, str] | None = None,
    ) -> None:
        """Host ``kind_cls`` in shards; its stored profiles are picked up from the data folder.

        A kind with a ``site_key`` gets ``shards`` shards for each of ``sites``, each placed
        (usually) at its site's edge. ``forward`` maps topics the kind emits to kinds
        registered before it: those rows go shard to shard (a stage graph), and a
        checkpoint drains the stages in order, so their state is one consistent cut.
        """
        ledger = self.checkpoints
        if not ledger.is_committed(kind_cls.name) and ledger.store.exists(kind_cls.name):
            ledger.store.drop(kind_cls.name)  # written by a checkpoint that never committed
        path = str(ledger.store.path)
        n = shards or self.n_shards
        self.deployment.deploy_kind(kind_cls, config, n, sites, dict(forward or {}), path, ledger)

    def has_kind(self, name: str) -> bool:
        return name in self.deployment.kinds

    def shards_of(self, kind: str) -> list[ShardClient]:
        """Every shard of ``kind``, in routing order."""
        return list(self.deployment.kind(kind).shards)

    def shards_by_site(self, kind: str) -> dict[str, list[ShardClient]]:
        """For a site-partitioned kind: each site's shards, in routing order."""
        return self.deployment.kind(kind).shards_by_site()

    def sites(self, kind: str) -> list[str]:
        return self.deployment.kind(kind).sites()

    def placement(self) -> list[dict[str, Any]]:
        return self.deployment.placement()

    def start_stage(
        self, cls: type, *args: Any, name: str, stage: str, site: str | None, **kwargs: Any
    ) -> Any:
        """Start a pipeline-stage actor placed by the policy (e.g. ingest at a site's edge);
        ``kwargs`` go to ``cls`` (``max_concurrency`` to Ray, for a threaded actor)."""
        spec = ActorSpec(name, "stage", stage, site)
        return self.deployment.spawn(cls, *args, spec=spec, **kwargs)

    def stop_stage(self, name: str) -> None:
        self.deployment.stop_actor(name)

    # -- routing (see Routing) ----------------------------------------------------------------
    def dispatch(self, kind: str, events: pa.Table, watermark: int | None = None) -> None:
        """Send ``events`` to the shards of ``kind`` without waiting (bounded in flight)."""
        self.routing.dispatch(kind, events, watermark)
        self.publish_status()

    def send(self, kind: str, events: pa.Table | list[dict[str, Any]]) -> dict[str, float]:
        """Apply ``events`` to their entities and wait; returns summed shard stats."""
        self.dispatch(kind, rows_to_table(events) if isinstance(events, list) else events)
        return sum_stats(self.routing.drain())

    def feedback(
        self,
        kind: str,
        rows: pa.Table | list[dict[str, Any]],
        *,
        source: str = "feedback",
        position: int = 0,
        wait: bool = True,
    ) -> dict[str, float]:
        """Hand rows of ``kind``'s feedback input (e.g. labels that came late) to the shards
        holding their entities; rows its feedback schema refuses are dead letters. Returns
        the counts (``feedback_in``, ``feedback_accepted``, ``feedback_dead_lettered``) and,
        with ``wait``, the shards' stats."""
        cls = self.deployment.kind(kind).cls
        if cls.feedback is None:
            raise ConfigError(
                f"entity kind {kind!r} takes no feedback input: {cls.__qualname__} declares "
                "no feedback schema"
            )
        table = rows_to_table(rows) if isinstance(rows, list) else rows
        ok, dead = cls.feedback.validate(
            table, source=source, first_position=position, per_record=isinstance(rows, list)
        )
        self.dead_letter(dead)
        if ok.num_rows:
            self.routing.feedback(kind, ok)
        counts = {
            "feedback_in": table.num_rows,
            "feedback_accepted": ok.num_rows,
            "feedback_dead_lettered": dead.num_rows,
        }
        return sum_stats([counts, *self.routing.drain()]) if wait else counts

    # -- what a commit carries besides state (see Checkpointer) -------------------------------
    def dead_letter(self, rows: pa.Table, publish: bool = True) -> None:
        """Refused rows: on the ``dead_letters`` topic now and in its table at the next
        checkpoint (``publish=False``: a feeder put them on the topic itself)."""
        if rows.num_rows:
            self.checkpoints.dead_letter(rows, self.topic(DEAD_LETTERS) if publish else None)
            if self.metrics is not None:
                self.metrics.dead_letters(rows)

    # -- checkpoints --------------------------------------------------------------------------
    def checkpoint(self, positions: dict[str, int] | None = None) -> Checkpoint:
        """Barrier: wait for in-flight batches, write every changed profile, commit positions."""
        return self.commit_checkpoint(self.prepare_checkpoint(), positions)

    def prepare_checkpoint(self, drains: dict[str, Any] | None = None) -> PreparedCheckpoint:
        """The quick half: wait for in-flight batches and take every shard's state as one cut;
        paused feeders may go on when it returns. ``drains``: shard name -> a drain a feeder
        sent behind its last batch of the cut."""
        started = time.time()
        self.routing.collect(self.routing.drain())  # kept for the next poll
        self.deployment.settle_syncs()  # a failed model sync fails the checkpoint
        prepared = self.checkpoints.prepare(self.deployment, drains or {}, started)
        self.routing.collect(prepared.shard_stats)
        return prepared

    def commit_checkpoint(
        self, prepared: PreparedCheckpoint, positions: dict[str, int] | None = None
    ) -> Checkpoint:
        """Write a prepared cut to LanceDB and commit it with the ``positions`` it reflects."""
        self.flush_topics()  # sinks hold what topics delivered up to the cut before it commits
        cp = self.checkpoints.commit(prepared, positions, list(self.deployment.kinds))
        # edge logs forget what the core committed (runtime.edge)
        self.deployment.links.committed(self.deployment, cp.meta.get("edge", {}))
        self._checkpoint_at = time.time()  # its age on the board: is state being committed?
        if self.config.export_dir and prepared.states:
            from runtime.streams.export import export_profiles

            export_profiles(self.config.export_dir, prepared.states, cp.epoch, time.time())
        for kind, _, card in prepared.models:  # the serving model's live metrics, for status
            self._models[kind] = card
        return cp

    def settle_links(self, timeout_s: float | None = None) -> int:
        """Wait until every edge link delivered what it holds to the core (at most
        ``link_settle_s``); the entries still waiting stay in the edges' logs."""
        return self.deployment.links.settle(
            self.config.link_settle_s if timeout_s is None else timeout_s
        )

    # -- single entities ----------------------------------------------------------------------
    def lookup(self, kind: str, keys: pa.Array | pa.ChunkedArray) -> pa.Table:
        """The current state of the ``kind`` entities named by ``keys``, row for row (null
        where there is none): one call per shard, for joining a stream with state."""
        return self.deployment.kind(kind).lookup(keys)

    def entity_state(self, kind: str, key: str) -> dict[str, Any]:
        return self.routing.entity_state(kind, key)

    def call_entity(self, kind: str, key: str, handler: str, *args: Any, **kwargs: Any) -> Any:
        return self.routing.call_entity(kind, key, handler, *args, **kwargs)

    def call_many(
        self, kind: str, keys: list[str] | pa.Array, handler: str, *args: Any, **kwargs: Any
    ) -> list[Any]:
        """Handler ``handler`` on each of ``keys``, one call per shard (a batched handler
        answers each shard's keys at once): one result per key, in order."""
        return self.deployment.kind(kind).call_many(keys, handler, args, kwargs)

    def ref(self, kind: str, key: str) -> EntityRef:
        self.deployment.kind(kind)
        return EntityRef(self, kind, key)

    def shard_stats(self) -> dict[str, list[dict[str, float]]]:
        return self.routing.shard_stats()

    # -- status -------------------------------------------------------------------------------
    def report(self, app: str, summary: dict[str, Any]) -> None:
        """An app's latest summary, shown by ``edgecore status --address``."""
        self._reports[app] = summary
        self.publish_status(force=True)

    def status(self) -> dict[str, Any]:
        """Per shard: rows sent, batches in flight (its queue) and rows/s since start."""
        d, elapsed = self.deployment, max(time.time() - self._started_at, 1e-9)
        # topics whose partitions live in shards are listed for `edgecore tail`
        hosted, stages = d.hosted_topic_shards(), d.shard_status(elapsed)
        out = {
            "stages": stages,
            "restarts": self.restarts,
            "checkpoint_at": self._checkpoint_at,
            "apps": self._reports,
            "models": {
                k: {
                    "version": c.get("version"),
                    "training_rows": c.get("training_rows"),
                    "metrics": c.get("metrics"),
                }
                for k, c in self._models.items()
            },  # fmt: skip
            "topics": hosted,
            # edge -> core links: up, what they hold for the core (runtime.edge)
            "links": self._links(),
            # where its tables are, for commands attached to it (`edgecore sql --address`)
            "data": str(self.data_dir.resolve()),
        }
        if self.metrics is not None:  # the run's metrics, as Registry.snapshot() has them
            self.refresh_metrics(stages)
            out["metrics"] = self.metrics.registry.snapshot()
        return out

    def _links(self) -> list[dict[str, Any]]:
        links = self.deployment.links.status() if self.deployment.links.shards else []
        if links and self.metrics is not None:
            self.metrics.links(links)
        return links

    def refresh_metrics(self, stages: list[dict[str, Any]] | None = None) -> None:
        """Bring the run's metrics up to date with the shards' queues and the models."""
        if self.metrics is not None:
            elapsed = max(time.time() - self._started_at, 1e-9)
            self.metrics.stages(stages or self.deployment.shard_status(elapsed))
            self.metrics.models(self._models)

    def publish_status(self, force: bool = False) -> None:
        """Keep the status board fresh for `edgecore status --address` (at most once a second)."""
        now = time.time()
        board = self.deployment.board
        if board is None or (not force and now - self._board_at < 1.0):
            return
        self._board_at = now
        board.update(self.status())  # fire and forget
