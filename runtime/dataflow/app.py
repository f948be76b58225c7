"""Run a stream through an app: validate → deduplicate → route to entities → publish.

An :class:`App` names the event schema, the entity kind the events drive, and
where its topics are persisted. :func:`run` drives a source through it on a
runtime, checkpointing as it goes, and reconciles the counts:
``accepted + dead_lettered + duplicates == input``.

>>> import tempfile, pyarrow as pa
>>> from runtime import EntityKind, EventSchema, Column, Runtime, IteratorSource
>>> class Counter(EntityKind):
...     name, key, state = "counters", "user_id", {"clicks": "int64"}
...     def on_event(self, state, event):
...         state["clicks"] += 1
>>> app = App("clicks", EventSchema("click", [Column("event_id", "int64"), Column("user_id", "string")]), Counter)
>>> events = pa.table({"event_id": [1, 2, 2, 3], "user_id": ["a", "b", "b", None]})
>>> with Runtime(data_dir=tempfile.mkdtemp(), mode="local") as rt:
...     stats = run(rt, app, IteratorSource("mem", lambda: iter([events])))
>>> (stats.input, stats.accepted, stats.duplicates, stats.dead_lettered)
(4, 2, 1, 1)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from runtime.entities.kind import EntityKind
from runtime.errors import ConfigError
from runtime.ingest.queries import Query
from runtime.state.fields import NAME_RE
from runtime.streams.schema import EventSchema
from runtime.streams.sources import Source

if TYPE_CHECKING:  # the coordinator is imported where a runtime starts, not to read an app
    from runtime.coordinator.runtime import Runtime


@dataclass(frozen=True)
class Step:
    """A named batch-wise transform: ``map`` and ``flat_map`` return a table, ``filter`` a
    boolean mask (or array) over the rows. A step that raises refuses its batch: the rows
    go to dead letters with the step's name and the error, the stream goes on."""

    name: str
    op: str  # "map" | "filter" | "flat_map"
    fn: Callable[[pa.Table], Any]

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name):
            raise ConfigError(f"step name {self.name!r}: use lowercase letters, digits and '_'")
        if self.op not in ("map", "filter", "flat_map"):
            raise ConfigError(f"step {self.name!r}: unknown operation {self.op!r}")

    def __call__(self, table: pa.Table) -> pa.Table:
        out = self.fn(table)
        if self.op == "filter":
            mask = (
                out
                if isinstance(out, (pa.Array, pa.ChunkedArray))
                else pa.array(np.asarray(out, dtype=bool))
            )
            return table.filter(mask)
        if not isinstance(out, pa.Table):
            raise TypeError(
                f"a {self.op} step must return a pyarrow Table, not {type(out).__name__}"
            )
        return out


@dataclass(frozen=True)
class EventTime:
    """Which column holds event time (ms, or a timestamp) and how the watermark follows it.

    The watermark of each source partition is the latest event time it delivered minus
    ``out_of_orderness_ms``; the stream's is the least over partitions, leaving out a
    partition quiet for ``idle_ms`` so it does not hold everything back. Partitions are
    the values of ``partition`` (e.g. a site or gateway column), else the source."""

    column: str
    out_of_orderness_ms: int = 0
    partition: str | None = None
    idle_ms: float | None = None


@dataclass(frozen=True)
class Stage:
    """A further kind, fed shard to shard with what the previous kind emits on ``topic``
    (or on each of several topics: its ``apply`` tells them apart by ``batch.topic``).
    From a kind at an edge site to one at the core, the rows go through the edge's
    durable store-and-forward log (:mod:`runtime.edge`)."""

    topic: str | tuple[str, ...]
    kind: type[EntityKind]
    config: Any = None

    @property
    def topics(self) -> tuple[str, ...]:
        return (self.topic,) if isinstance(self.topic, str) else tuple(self.topic)


@dataclass(frozen=True)
class App:
    """An application: which events, which entity kind, where its outputs go."""

    name: str
    schema: EventSchema
    kind: type[EntityKind]
    kind_config: Any = None
    event_id: str = "event_id"
    #: topic -> (LanceDB table, upsert key or None for append)
    sinks: dict[str, tuple[str, str | tuple[str, ...] | None]] = field(default_factory=dict)
    #: turns summed counters into the app's own summary fields
    summarize: Callable[[dict[str, float]], dict[str, Any]] | None = None
    #: makes the synthetic source that `edgecore demo` runs: (events, rate, entities) -> Source
    demo: Callable[[int, float | None, int], Source] | None = None
    #: for a kind partitioned by site: the sites it serves (one set of shards each)
    sites: tuple[str, ...] = ()
    #: batch-wise transforms applied to validated events before routing
    steps: tuple[Step, ...] = ()
    #: event time and watermarks, for windows and joins
    event_time: EventTime | None = None
    #: kinds after the first, each fed by the one before it (see :class:`Stage`)
    stages: tuple[Stage, ...] = ()
    #: what commands print about a run of the app, after the counts every run has
    #: (input, accepted, ...): RunStats -> fields, nested dicts allowed. None: the summary
    report: Callable[[RunStats], dict[str, Any]] | None = None
    #: the same app that also publishes every event's prediction and persists it to a
    #: ``predictions`` table (``edgecore replay --predictions``); None: it has none
    with_predictions: Callable[[], App] | None = None
    #: the same app learning from each event's label only ``delay`` ms (event time) after
    #: the event (``edgecore replay --label-delay``); None: it learns from no labels
    with_label_delay: Callable[[int], App] | None = None
    #: makes what the kinds read before the first event (e.g. a catalog table in the data
    #: folder), once per runtime, before its shards start: (runtime) -> None
    prepare: Callable[[Runtime], None] | None = None
    #: what ``edgecore demo`` adds to its summary once its stream is in, with the runtime
    #: still up (e.g. hit-rates against held-out ground truth): (runtime, the demo's
    #: source) -> fields
    demo_report: Callable[[Runtime, Source], dict[str, Any]] | None = None
    #: what ``edgecore serve`` answers on demand: ``GET /v1/<name>?...`` -> a handler
    queries: dict[str, Query] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            raise ConfigError(f"app {self.name!r}: step names must be unique, got {names}")
        if self.event_id not in [c.name for c in self.schema.columns]:
            raise ConfigError(
                f"app {self.name!r}: event id column {self.event_id!r} is not in its schema"
            )
        if self.kind.key not in [c.name for c in self.schema.columns] and not self.steps:
            raise ConfigError(
                f"app {self.name!r}: the kind's key {self.kind.key!r} is not in its schema"
            )
        if self.event_time is not None:
            col = next((c for c in self.schema.columns if c.name == self.event_time.column), None)
            if col is not None and not col.required:
                raise ConfigError(
                    f"app {self.name!r}: event time column {col.name!r} must be required in "
                    "the schema, so an event without a time is dead-lettered, not windowed"
                )
            if col is not None and col.type not in ("int64", "timestamp"):
                raise ConfigError(
                    f"app {self.name!r}: event time column {col.name!r} is {col.type}; use "
                    "int64 (ms since the epoch) or timestamp"
                )
        prev = self.kind
        for stage in self.stages:
            for topic in stage.topics or ("",):
                if topic not in prev.topics:
                    raise ConfigError(
                        f"app {self.name!r}: {prev.__qualname__} emits no topic {topic!r} "
                        f"to feed {stage.kind.__qualname__}; it emits {list(prev.topics)}"
                    )
            prev = stage.kind
        for name, query in self.queries.items():
            if not NAME_RE.match(name) or name in ("events", "labels"):
                raise ConfigError(f"app {self.name!r}: query name {name!r} is not allowed")
            if query.handler not in self.kind.handlers():
                raise ConfigError(
                    f"app {self.name!r}: query {name!r} names handler {query.handler!r}, "
                    f"which {self.kind.__qualname__} does not have"
                )

    def kinds(self) -> list[tuple[type[EntityKind], Any]]:
        """The app's kinds in stream order: the first, then each stage's."""
        return [(self.kind, self.kind_config), *[(s.kind, s.config) for s in self.stages]]


@dataclass
class RunStats:
    source: str = ""
    input: int = 0
    accepted: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    resumed_from: int = 0
    seconds: float = 0.0
    events_per_s: float = 0.0
    filtered: int = 0
    checkpoints: int = 0
    restarts: int = 0
    #: events a live gate applied again from its write-ahead log after a restart (their
    #: counts are in the others: they were acknowledged before it)
    replayed: int = 0
    counters: dict[str, float] = field(default_factory=dict)
    app: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def setup(rt: Runtime, app: App) -> None:
    """Register the app's kind and sinks on ``rt`` (once per runtime)."""
    chain = app.kinds()
    if app.prepare is not None and not all(rt.has_kind(cls.name) for cls, _ in chain):
        app.prepare(rt)
    for i in reversed(range(len(chain))):  # a kind forwards to kinds registered before it
        cls, config = chain[i]
        if rt.has_kind(cls.name):
            continue
        stage = app.stages[i] if i < len(app.stages) else None
        forward = {t: chain[i + 1][0].name for t in stage.topics} if stage else None
        sites = list(app.sites) or None if i == 0 else None
        rt.register(cls, config, sites=sites, forward=forward)
    for topic, (table, key) in app.sinks.items():
        if not rt.has_subscriber(f"{topic}->{table}"):
            rt.sink_to_table(topic, table, key, wait=False)  # the sinks start side by side
    rt.deployment.settle()
    if rt.config.export_dir:
        from runtime.streams.export import export_outputs

        export_outputs(rt, app, rt.config.export_dir)


def run(
    rt: Runtime,
    app: App,
    source: Source,
    progress: Callable[[RunStats], None] | None = None,
    max_events: int | None = None,
    end_of_stream: bool = True,
    feedback: Source | None = None,
) -> RunStats:
    """Drive ``source`` through ``app`` until it ends; resume where the last checkpoint left it.
    ``feedback``: rows of the kind's feedback input (labels) read beside the events.

    With event time, the end of a bounded source moves the watermark to the end of time
    (``end_of_stream``), so every window fires; pass False for a stream that goes on later.

    If a runtime actor dies (its node was lost), the runtime restarts from the last
    checkpoint with actors placed on the nodes alive now, and the source is read
    again from the committed position: nothing is lost or counted twice. The loop is
    :func:`runtime.dataflow.driver.drive`, shared by every feeder.
    """
    from runtime.dataflow.driver import SourceFeeder, drive
    from runtime.dataflow.feedback import FeedbackFeeder

    feeders: list[Any] = [SourceFeeder(source)]
    if feedback is not None:
        feeders.append(FeedbackFeeder(feedback))
    return drive(
        rt,
        app,
        feeders,
        progress=progress,
        max_events=max_events,
        end_of_stream=end_of_stream,
    )


def new_counts() -> dict[str, int]:
    """The counts every ingest path reports; they reconcile: input = the other four."""
    return {"input": 0, "accepted": 0, "dead_lettered": 0, "duplicates": 0, "filtered": 0}
