"""Keyed event-time operators hosted in shards: windows, per-window arg-max, publish.

(Stream–stream joins, built the same way, are in :mod:`runtime.operators.joins`.)

Each factory returns an :class:`~runtime.entities.kind.EntityKind` that is ``stateless`` (the
shard hands it whole batches, no per-key activation) and keeps its state per shard
(``snapshot_scope = "shard"``), saved with every checkpoint together with the entity
state, so a restart gives the same results as a clean run. Results go to a topic named
after the step; events too late for every window go to the ``late_events`` topic with a
reason, and are counted (``<step>_late``), never dropped silently.

The watermark comes with the batches (see :mod:`runtime.entities.router`): the runtime tracks it
at the source, per partition, and every shard hears it even when it gets no rows.

>>> import pyarrow as pa
>>> from runtime.eventtime.windows import WindowSpec
>>> Hot = window_kind("hot", WindowSpec(size_ms=10), key="k", time="t", value="v")
>>> (Hot.name, Hot.key, Hot.topics, Hot.stateless)
('hot', 'k', ('hot', 'late_events'), True)
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from runtime.entities.kind import Batch, EntityKind
from runtime.errors import ConfigError
from runtime.eventtime.windows import Windows, WindowSpec
from runtime.state.fields import NAME_RE
from runtime.state.snapshot import State, pack, reading, unpack

LATE_EVENTS = "late_events"

LATE_SCHEMA = pa.schema(
    [
        ("step", pa.string()),
        ("key", pa.string()),
        ("event_time", pa.int64()),
        ("watermark", pa.int64()),
        ("reason", pa.string()),
        ("row", pa.string()),
    ]
)


def late_rows(step: str, rows: pa.Table, key: str, time: str, watermark: int) -> pa.Table:
    """The ``late_events`` topic's rows: one schema for every step, the event as JSON."""
    if rows.num_rows == 0:
        return LATE_SCHEMA.empty_table()
    clean = rows.drop_columns([c for c in rows.column_names if c.startswith("_")])
    return pa.table(
        {
            "step": pa.array([step] * rows.num_rows, pa.string()),
            "key": pc.cast(rows.column(key), pa.string()),
            "event_time": pc.cast(rows.column(time), pa.int64()),
            "watermark": pa.array(np.full(rows.num_rows, watermark, dtype=np.int64)),
            "reason": pa.array(
                [f"later than the allowed lateness of step {step!r}"] * rows.num_rows,
                pa.string(),
            ),
            "row": pa.array([json.dumps(r, default=str) for r in clean.to_pylist()], pa.string()),
        },
        schema=LATE_SCHEMA,
    )


def check_step(name: str, key: str) -> None:
    if not NAME_RE.match(name):
        raise ConfigError(f"step name {name!r}: use lowercase letters, digits and '_'")
    if not key:
        raise ConfigError(f"step {name!r}: name the key column to window by")


class OperatorKind(EntityKind):
    """Base of the operator kinds: a plain operator object ``self.op`` with a
    ``watermark``, ``process(events, watermark) -> (results, late rows)`` and
    ``advance(watermark) -> results``. Results go to the step's topic, late rows to
    ``late_events`` (reported by their ``time`` column) and are counted.

    The operator's state is what each shard saves at a checkpoint, as data (never a
    pickle: see :mod:`runtime.state.snapshot`). Its class declares how:

    * ``state_kind``: a name for its snapshots (e.g. ``"windows"``);
    * ``to_state() -> (meta, arrays, tables)``: JSON-able ``meta``, numpy ``arrays``
      (no objects), Arrow ``tables``;
    * ``from_state(state)`` (a class or static method): the operator from a
      :class:`~runtime.state.snapshot.State`; raise KeyError, TypeError or ValueError
      for one it cannot read.

    A kind whose operator lacks them is refused when it is registered (:meth:`check`),
    not at its first checkpoint."""

    stateless: ClassVar[bool] = True
    snapshot_scope: ClassVar[str] = "shard"
    time: ClassVar[str]

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.op = self.make()

    def make(self) -> Any:
        raise NotImplementedError

    @classmethod
    def check(cls) -> None:
        super().check()
        op = cls(None).op
        kind = getattr(op, "state_kind", None)
        missing = [n for n in ("to_state", "from_state") if not callable(getattr(op, n, None))]
        if not isinstance(kind, str) or not kind or missing:
            raise ConfigError(
                f"operator step {cls.name!r}: its operator {type(op).__qualname__} does not say "
                "how to save its state as data (operator state is never pickled): give it "
                "state_kind = '<name>', to_state() -> (meta, arrays, tables) and a classmethod "
                "from_state(state); see runtime.operators.windowed.OperatorKind"
            )

    def process(self, events: pa.Table, watermark: int | None) -> tuple[pa.Table, pa.Table]:
        return self.op.process(events, watermark)

    def apply(self, batch: Batch) -> None:
        before = self.op.watermark
        out, late = self.process(batch.events, batch.watermark)
        batch.emit(self.name, out)
        if late.num_rows:
            batch.emit(LATE_EVENTS, late_rows(self.name, late, self.key, self.time, before))
            batch.count(f"{self.name}_late", late.num_rows)

    def on_watermark(self, batch: Batch) -> None:
        if batch.watermark is not None:
            batch.emit(self.name, self.op.advance(batch.watermark))

    def snapshot(self) -> bytes | None:
        return pack(self.op.state_kind, *self.op.to_state())

    def restore(self, blob: bytes) -> None:
        op_cls = type(self.op)
        where = f"the snapshot of step {self.name!r}"
        state = unpack(blob, op_cls.state_kind, where=where)
        with reading(op_cls.state_kind, where):
            self.op = op_cls.from_state(state)


class WindowOperator(OperatorKind):
    """Keyed windows (:class:`runtime.eventtime.windows.Windows`) in a shard; see :func:`window_kind`."""

    window: ClassVar[WindowSpec]
    value: ClassVar[str]
    options: ClassVar[dict[str, Any]] = {}

    def make(self) -> Windows:
        return Windows(self.window, self.key, self.time, self.value, **self.options)

    @classmethod
    def needs(cls) -> tuple[str, ...]:
        item = cls.options.get("item")
        return tuple(c for c in (cls.key, cls.time, cls.value, item) if c)

    def process(self, events: pa.Table, watermark: int | None) -> tuple[pa.Table, pa.Table]:
        keys = events.column(self.key)
        if not pa.types.is_string(keys.type):  # windows are keyed by text, as entities are
            i = events.schema.get_field_index(self.key)
            events = events.set_column(i, self.key, pc.cast(keys, pa.string()))
        out = self.op.process(events, watermark=watermark)
        return out.fired, out.late


def window_kind(
    name: str,
    spec: WindowSpec,
    key: str,
    time: str,
    value: str,
    **options: Any,
) -> type[WindowOperator]:
    """A window step named ``name``: results on topic ``name``, late events on ``late_events``.

    ``options`` go to :class:`~runtime.eventtime.windows.Windows` (e.g. ``top_k``, ``item``).
    """
    check_step(name, key)
    attrs = {
        "name": name,
        "key": key,
        "window": spec,
        "time": time,
        "value": value,
        "options": dict(options),
        "topics": (name, LATE_EVENTS),
        "__module__": __name__,
        "__qualname__": f"window_kind({name!r})",
    }
    return type(f"Window_{name}", (WindowOperator,), attrs)


class EmitOperator(EntityKind):
    """Publish each batch as it comes (after the pipeline's steps): see :func:`emit_kind`."""

    stateless: ClassVar[bool] = True

    def apply(self, batch: Batch) -> None:
        events = batch.events
        if "_key_hash" in events.column_names:
            events = events.drop_columns(["_key_hash"])
        batch.emit(self.name, events)


def emit_kind(name: str, key: str) -> type[EmitOperator]:
    """A stateless step that publishes its input to topic ``name``, spread over shards by
    ``key`` (streaming ETL: filter, map, publish)."""
    check_step(name, key)
    attrs = {
        "name": name,
        "key": key,
        "topics": (name,),
        "__module__": __name__,
        "__qualname__": f"emit_kind({name!r})",
    }
    return type(f"Emit_{name}", (EmitOperator,), attrs)


class WindowArgMax:
    """Per window, the rows holding the largest ``value`` (ties all kept), emitted when the
    watermark passes the window's end. Incremental: only the current best rows of each
    open window are kept. Rows carry their window (``window_start``/``window_end``), set
    by a step or an earlier window.

    >>> m = WindowArgMax(value="price")
    >>> rows = pa.table({"window_start": [0, 0, 0, 10], "window_end": [10, 10, 10, 20],
    ...                  "price": [5, 9, 9, 1], "bid": ["a", "b", "c", "d"]})
    >>> _ = m.process(rows, watermark=0)
    >>> m.advance(10).column("bid").to_pylist()
    ['b', 'c']
    """

    state_kind = "window_argmax"

    def __init__(self, value: str, start: str = "window_start", end: str = "window_end") -> None:
        self.value, self.start, self.end = value, start, end
        self.watermark = -(2**63)
        self.late_count = 0
        self._best: pa.Table | None = None

    def to_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, pa.Table]]:
        """The columns it reads, the event time, and the best rows of the open windows."""
        meta = {"columns": [self.value, self.start, self.end], "watermark": self.watermark}
        meta["late_count"] = self.late_count
        return meta, {}, {} if self._best is None else {"best": self._best}

    @classmethod
    def from_state(cls, state: State) -> WindowArgMax:
        value, start, end = state.meta["columns"]
        m = cls(value, start, end)
        m.watermark, m.late_count = int(state.meta["watermark"]), int(state.meta["late_count"])
        m._best = state.tables.get("best")
        return m

    def process(self, batch: pa.Table, watermark: int | None) -> tuple[pa.Table, pa.Table]:
        """Merge ``batch`` into the open windows; returns (windows now closed, late rows)."""
        ends = pc.cast(batch.column(self.end), pa.int64())
        closed = pc.less_equal(ends, pa.scalar(self.watermark, pa.int64()))
        late = batch.filter(closed)
        self.late_count += late.num_rows
        rows = batch.filter(pc.invert(closed))
        if "_key_hash" in rows.column_names:
            rows = rows.drop_columns(["_key_hash"])
        if rows.num_rows:
            both = (
                rows
                if self._best is None
                else pa.concat_tables([self._best, rows], promote_options="default")
            )
            self._best = self._keep_max(both)
        if watermark is None:
            return pa.table({}), late  # no event time from the source: windows wait
        return self.advance(watermark), late

    def _keep_max(self, rows: pa.Table) -> pa.Table:
        top = rows.group_by(self.start, use_threads=False).aggregate([(self.value, "max")])
        joined = rows.join(top, keys=self.start, use_threads=False)
        keep = pc.equal(joined.column(self.value), joined.column(f"{self.value}_max"))
        return joined.filter(keep).select(rows.column_names)

    def advance(self, watermark: int) -> pa.Table:
        """Move event time to ``watermark``; the best rows of every window it closed."""
        self.watermark = max(self.watermark, int(watermark))
        if self._best is None or self._best.num_rows == 0:
            return pa.table({})
        ends = pc.cast(self._best.column(self.end), pa.int64())
        due = pc.less_equal(ends, pa.scalar(self.watermark, pa.int64()))
        out = self._best.filter(due)
        self._best = self._best.filter(pc.invert(due))
        if out.num_rows:
            order = [(self.start, "ascending"), (self.value, "descending")]
            out = out.take(pc.sort_indices(out, order))
        return out


class ArgMaxOperator(OperatorKind):
    """A :class:`WindowArgMax` in a shard; see :func:`argmax_kind`."""

    value: ClassVar[str]

    def make(self) -> WindowArgMax:
        return WindowArgMax(self.value, self.key, self.time)

    @classmethod
    def needs(cls) -> tuple[str, ...]:
        return (cls.key, cls.time, cls.value)


def argmax_kind(
    name: str, value: str, window: str = "window_start", end: str = "window_end"
) -> type[ArgMaxOperator]:
    """A step keyed by ``window`` that emits, once each window closes, its rows with the
    largest ``value`` (ties kept): NEXMark's highest bid (Q7) and hot items (Q5)."""
    check_step(name, window)
    attrs = {
        "name": name,
        "key": window,
        "value": value,
        "time": end,  # a row is as late as its window's end
        "topics": (name, LATE_EVENTS),
        "__module__": __name__,
        "__qualname__": f"argmax_kind({name!r})",
    }
    return type(f"ArgMax_{name}", (ArgMaxOperator,), attrs)
