"""The pipeline API for streaming ETL: named steps from a source to an entity kind and sinks.

    source -> validate -> map / filter / flat_map (batch-wise) -> key_by -> entity -> sinks

Every step has a name, checked when the pipeline is built (unique, lowercase): the
name shows up in dead letters, in metrics and in errors. ``build()`` gives the
:class:`~runtime.dataflow.app.App` the runtime runs; ``run()`` runs it on a runtime, and
``edgecore run module:pipeline`` runs one from the command line.

>>> import tempfile, pyarrow as pa, pyarrow.compute as pc
>>> from runtime import Column, EventSchema, Runtime
>>> from runtime.testing import MemorySource, Tally
>>> rows = [{"event_id": i, "key": f"k{i % 2}", "value": float(i)} for i in range(6)]
>>> flow = (
...     Pipeline("tallies")
...     .source(MemorySource(rows))
...     .validate(EventSchema("e", [Column("event_id", "int64"), Column("key", "string"), Column("value", "float64")]))
...     .filter("positive", lambda t: pc.greater(t["value"], 0))
...     .map("double", lambda t: t.set_column(2, "value", pc.multiply(t["value"], 2)))
...     .key_by("key")
...     .to_entity("count", Tally)
... )
>>> with Runtime(data_dir=tempfile.mkdtemp(), mode="local") as rt:
...     stats = flow.run(rt)
...     Tally.ref("k1").get()["total"]
18.0
>>> (stats.input, stats.accepted, stats.filtered)
(6, 5, 1)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from runtime.dataflow.app import App, EventTime, RunStats, Stage, Step, run
from runtime.entities.kind import EntityKind
from runtime.errors import ConfigError
from runtime.eventtime.windows import WindowSpec
from runtime.operators.joins import join_kind
from runtime.operators.windowed import argmax_kind, emit_kind, window_kind
from runtime.state.fields import NAME_RE
from runtime.streams.schema import EventSchema
from runtime.streams.sources import Source

if TYPE_CHECKING:  # the coordinator is imported where a runtime starts, not to read an app
    from runtime.coordinator.runtime import Runtime


class Pipeline:
    def __init__(self, name: str) -> None:
        if not NAME_RE.match(name):
            raise ConfigError(f"pipeline name {name!r}: use lowercase letters, digits and '_'")
        self.name = name
        self._source: Source | None = None
        self._schema: EventSchema | None = None
        self._steps: list[Step] = []
        self._key: str | None = None
        self._kind: tuple[str, type[EntityKind], Any] | None = None
        self._sinks: dict[str, tuple[str, str | tuple[str, ...] | None]] = {}
        self._event_id = "event_id"
        self._summarize: Callable[[dict[str, float]], dict[str, Any]] | None = None
        self._event_time: EventTime | None = None
        self._stages: list[tuple[str, Stage]] = []

    def _named(self, name: str) -> None:
        taken = (
            [s.name for s in self._steps]
            + ([self._kind[0]] if self._kind else [])
            + [n for n, _ in self._stages]
        )
        if name in taken:
            raise ConfigError(f"pipeline {self.name!r}: a step is already named {name!r}")

    def source(self, source: Source) -> Pipeline:
        self._source = source
        return self

    @property
    def input(self) -> Source | None:
        """The source set with :meth:`source` (None until then)."""
        return self._source

    def validate(self, schema: EventSchema, event_id: str = "event_id") -> Pipeline:
        """Check and type every row; refused rows go to dead letters with a reason."""
        self._schema, self._event_id = schema, event_id
        return self

    def map(self, name: str, fn: Callable[[pa.Table], pa.Table]) -> Pipeline:
        self._named(name)
        self._steps.append(Step(name, "map", fn))
        return self

    def filter(self, name: str, fn: Callable[[pa.Table], Any]) -> Pipeline:
        self._named(name)
        self._steps.append(Step(name, "filter", fn))
        return self

    def flat_map(self, name: str, fn: Callable[[pa.Table], pa.Table]) -> Pipeline:
        self._named(name)
        self._steps.append(Step(name, "flat_map", fn))
        return self

    def key_by(self, column: str) -> Pipeline:
        self._key = column
        return self

    def to_entity(self, name: str, kind: type[EntityKind], config: Any = None) -> Pipeline:
        self._named(name)
        if self._kind is not None:
            raise ConfigError(
                f"pipeline {self.name!r}: it already ends in {self._kind[0]!r}; "
                "chain further kinds with .then(topic, name, Kind)"
            )
        self._kind = (name, kind, config)
        return self

    def event_time(
        self,
        column: str,
        out_of_orderness_ms: int = 0,
        partition: str | None = None,
        idle_ms: float | None = None,
    ) -> Pipeline:
        """Event time for windows and joins: see :class:`~runtime.dataflow.app.EventTime`."""
        self._event_time = EventTime(column, out_of_orderness_ms, partition, idle_ms)
        return self

    def _time(self, step: str) -> str:
        if self._event_time is None:
            raise ConfigError(
                f"pipeline {self.name!r}: step {step!r} needs event time; "
                "add .event_time('column', out_of_orderness_ms=...) before it"
            )
        if self._key is None:
            raise ConfigError(f"pipeline {self.name!r}: add .key_by(column) before {step!r}")
        return self._event_time.column

    def window(self, name: str, spec: WindowSpec, value: str, **options: Any) -> Pipeline:
        """Keyed event-time windows over ``value`` (count, sum, min, max, mean; ``top_k``):
        results on topic ``name``, late events on ``late_events``."""
        return self.to_entity(
            name, window_kind(name, spec, self._key or "", self._time(name), value, **options)
        )

    def join(
        self,
        name: str,
        size_ms: int | None,
        side: str,
        left: str,
        right: str,
        columns: dict[str, str] | None = None,
        distinct: bool = False,
    ) -> Pipeline:
        """Rows with ``side == left`` joined with rows with ``side == right`` on the key,
        within tumbling windows of ``size_ms`` (or over all time with None): pairs on
        topic ``name``; see :func:`~runtime.operators.joins.join_kind`."""
        if size_ms is None:
            if self._key is None:
                raise ConfigError(f"pipeline {self.name!r}: add .key_by(column) before {name!r}")
            time = self._event_time.column if self._event_time else ""
        else:
            time = self._time(name)
        kind = join_kind(name, size_ms, self._key or "", time, side, left, right, columns, distinct)
        return self.to_entity(name, kind)

    def to_topic(self, name: str) -> Pipeline:
        """Publish the transformed events to topic ``name`` (no entity state), spread over
        shards by the ``key_by`` column."""
        if self._key is None:
            raise ConfigError(f"pipeline {self.name!r}: add .key_by(column) before {name!r}")
        return self.to_entity(name, emit_kind(name, self._key))

    def argmax(self, name: str, value: str) -> Pipeline:
        """Per window (rows carry ``window_start``/``window_end``, keyed by the window), the
        rows with the largest ``value`` once the window closes; on topic ``name``."""
        self._time(name)
        return self.to_entity(name, argmax_kind(name, value, self._key or ""))

    def then(self, topic: str, name: str, kind: type[EntityKind], config: Any = None) -> Pipeline:
        """Feed what the last kind emits on ``topic`` to ``kind``, shard to shard."""
        self._named(name)
        if self._kind is None:
            raise ConfigError(f"pipeline {self.name!r}: .then() follows .to_entity() or .window()")
        self._stages.append((name, Stage(topic, kind, config)))
        return self

    def sink(self, topic: str, table: str, key: str | tuple[str, ...] | None = None) -> Pipeline:
        """Persist a topic a step publishes to a LanceDB table: upsert by ``key`` (a column,
        or several together such as ``("user", "window_start")`` for window results, so a
        window's update replaces its earlier emission), or append without one."""
        self._sinks[topic] = (table, key)
        return self

    def summarize(self, fn: Callable[[dict[str, float]], dict[str, Any]]) -> Pipeline:
        self._summarize = fn
        return self

    def build(self) -> App:
        if self._schema is None:
            raise ConfigError(
                f"pipeline {self.name!r}: add .validate(schema) so bad rows are caught"
            )
        if self._kind is None:
            raise ConfigError(f"pipeline {self.name!r}: add .to_entity(name, Kind)")
        _, kind, config = self._kind
        if self._key is not None and self._key != kind.key:
            raise ConfigError(
                f"pipeline {self.name!r}: key_by({self._key!r}) but {kind.__qualname__} is keyed by {kind.key!r}"
            )
        published = {t for k in [kind, *[st.kind for _, st in self._stages]] for t in k.topics}
        for topic in self._sinks:
            if topic not in published:
                raise ConfigError(
                    f"pipeline {self.name!r}: no step publishes a topic {topic!r}; "
                    f"published: {sorted(published)}"
                )
        return App(
            self.name,
            self._schema,
            kind,
            config,
            self._event_id,
            dict(self._sinks),
            self._summarize,
            steps=tuple(self._steps),
            event_time=self._event_time,
            stages=tuple(st for _, st in self._stages),
        )

    def run(
        self,
        rt: Runtime,
        progress: Callable[[RunStats], None] | None = None,
        end_of_stream: bool = True,
    ) -> RunStats:
        """Run the pipeline on ``rt`` until its source ends.

        With event time, the end of the source closes every window (the watermark moves
        to the end of time, and stays there in this data folder: later events are late).
        For a stream that a later run continues, pass ``end_of_stream=False``: windows
        then stay open across runs and fire as the next run's events move time on.
        """
        if self._source is None:
            raise ConfigError(f"pipeline {self.name!r}: add .source(...)")
        return run(rt, self.build(), self._source, progress=progress, end_of_stream=end_of_stream)
