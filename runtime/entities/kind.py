"""Entity kinds: virtual actors addressed by key, hosted many per shard.

A kind declares its ``name`` (the LanceDB table, the topic root, the metric label),
the event column that holds its ``key``, its ``state`` fields, and how a batch of
events changes that state. Two ways to write the last part:

* ``on_event(state, event)``: per event, on a plain dict. Simple; fine for light traffic.
* ``apply(batch, ctx)``: the whole batch at once, on numpy columns. The built-in
  applications use this; it is what makes a million events per second possible.

Methods marked with :func:`handler` are called on one entity by key through a
:class:`EntityRef` (``Counter.ref("u1").call("reset")``).

>>> class Counter(EntityKind):
...     name = "counters"
...     key = "user_id"
...     state = {"clicks": "int64"}
...     def on_event(self, state, event):
...         state["clicks"] += 1
...     @handler
...     def reset(self, state):
...         state["clicks"] = 0
...         return "done"
>>> Counter.spec().names()
['clicks']
>>> sorted(Counter.handlers())
['reset']
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa

from runtime.errors import ConfigError, NotStartedError
from runtime.state.fields import NAME_RE, ColumnarState, StateSpec

if TYPE_CHECKING:
    from runtime.coordinator.runtime import Runtime
    from runtime.state.store import Store
    from runtime.streams.schema import EventSchema

_HANDLER_ATTR = "__edgecore_handler__"
#: schema metadata naming the topic a previous kind emitted forwarded rows on
FROM_TOPIC = b"edgecore.topic"


def from_topic(rows: pa.Table, topic: str) -> pa.Table:
    """``rows`` marked as emitted on ``topic`` (what :attr:`Batch.topic` reads downstream)."""
    meta = dict(rows.schema.metadata or {})
    meta[FROM_TOPIC] = topic.encode()
    return rows.replace_schema_metadata(meta)


current_runtime: contextvars.ContextVar[Runtime | None] = contextvars.ContextVar(
    "edgecore_runtime", default=None
)


def handler(fn: Callable[..., Any] | None = None, *, batched: bool = False) -> Any:
    """Mark a method ``fn(self, state: dict, *args, **kwargs)`` as callable on one entity by
    key (``ref.call(name, ...)``); changes to ``state`` are kept.

    ``@handler(batched=True)`` marks ``fn(self, state: ColumnarState, slots, *args,
    **kwargs) -> list`` instead: one call answers many entities at once (a serving front
    end batches requests that arrive together), vectorized over the state columns, one
    result per slot in order. ``slots`` is -1 for a key the shard has no entity for. It
    reads state; what it changes there is not saved."""

    def mark(f: Callable[..., Any]) -> Callable[..., Any]:
        setattr(f, _HANDLER_ATTR, "batched" if batched else True)
        return f

    return mark(fn) if fn is not None else mark


def is_batched(fn: Callable[..., Any]) -> bool:
    """True for a handler marked ``@handler(batched=True)``."""
    return getattr(fn, _HANDLER_ATTR, False) == "batched"


@dataclass
class Batch:
    """What a kind's ``apply`` sees: the events, their entity slots and the live state."""

    events: pa.Table
    slots: np.ndarray
    state: ColumnarState
    seq: int
    #: rows grouped by entity, arrival order kept within a group
    order: np.ndarray | None = None
    #: where each entity's group starts in ``order``
    starts: np.ndarray | None = None
    outputs: dict[str, list[pa.Table]] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)
    #: event time the shard's inputs have all passed (ms), when the app tracks one
    watermark: int | None = None

    @property
    def topic(self) -> str | None:
        """The topic the previous kind emitted these events on, when the kind is fed by
        one (:class:`~runtime.dataflow.app.Stage`, ``forward``); None for source events.
        A kind fed several topics tells their rows apart by it."""
        raw = (self.events.schema.metadata or {}).get(FROM_TOPIC)
        return raw.decode() if raw is not None else None

    def emit(self, topic: str, rows: pa.Table) -> None:
        """Publish ``rows`` to ``topic`` after the batch is applied."""
        if rows.num_rows:
            self.outputs.setdefault(topic, []).append(rows)

    def count(self, name: str, value: float) -> None:
        """Add to a per-run counter that the runner sums over all shards."""
        self.stats[name] = self.stats.get(name, 0) + value


class EntityKind:
    """Base class of an entity kind. Subclass it; instances live inside shards."""

    name: ClassVar[str] = ""
    key: ClassVar[str] = ""
    state: ClassVar[Any] = {}
    #: topics this kind publishes to (created with the kind)
    topics: ClassVar[tuple[str, ...]] = ()
    #: an event column naming the site: the kind is then partitioned by site first, so
    #: each site's entities can live at that site's edge
    site_key: ClassVar[str | None] = None
    #: an operator (window, join) rather than entities: no per-key state, the shard hands
    #: :meth:`apply` whole batches (``slots`` and ``state`` unused) and the kind keeps its
    #: own state, saved per shard through :meth:`snapshot`
    stateless: ClassVar[bool] = False
    #: "kind": one snapshot for all shards, merged (a model's replicas); "shard": each
    #: shard keeps its own (the windows of the keys it hosts)
    snapshot_scope: ClassVar[str] = "kind"
    #: a second input, keyed like the events, that arrives on its own (labels that come
    #: hours after the events they label): its schema. Rows are validated against it,
    #: routed by :attr:`key` to the shard holding the entity and handed to
    #: :meth:`on_feedback`; no entity is loaded for them. None: the kind takes none
    feedback: ClassVar[EventSchema | None] = None
    #: modules the kind imports on first use (a learner's library, in apply or on_feedback):
    #: each shard imports them in a background thread as it starts, so the first batch
    #: that needs one does not stall on the import (scikit-learn: ~1 s on 2 cores)
    preload: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any = None) -> None:
        self.config = config

    # -- definition checks ---------------------------------------------------------------
    @classmethod
    def spec(cls) -> StateSpec:
        return StateSpec.of(cls.state)

    @classmethod
    def check(cls) -> None:
        """Raise :class:`ConfigError` if the kind is not well defined (run at register)."""
        where = f"entity kind {cls.__qualname__}"
        if not NAME_RE.match(cls.name or ""):
            raise ConfigError(
                f"{where}: name {cls.name!r} must be lowercase letters, digits and '_' "
                "(it names the LanceDB table), e.g. name = 'customers'"
            )
        if not cls.key:
            raise ConfigError(f"{where}: set key = '<event column holding the entity key>'")
        if cls.snapshot_scope not in ("kind", "shard"):
            raise ConfigError(f"{where}: snapshot_scope must be 'kind' or 'shard'")
        names = cls.spec().names()
        if cls.stateless and names:
            raise ConfigError(f"{where}: a stateless kind declares no state fields, got {names}")
        if cls.key in names:
            raise ConfigError(f"{where}: state field {cls.key!r} clashes with the key column")
        if cls.feedback is not None:
            if cls.key not in [c.name for c in cls.feedback.columns]:
                raise ConfigError(f"{where}: its feedback schema needs the key column {cls.key!r}")
            if cls.on_feedback is EntityKind.on_feedback:
                raise ConfigError(f"{where}: declares feedback; define on_feedback(batch)")
        overridden = cls.apply is not EntityKind.apply or cls.on_event is not EntityKind.on_event
        if not overridden:
            raise ConfigError(f"{where}: define on_event(state, event) or apply(batch)")
        if not isinstance(cls.preload, tuple) or not all(
            isinstance(m, str) for m in cls.preload
        ):  # a bare string would preload its letters, and silently nothing
            raise ConfigError(
                f"{where}: preload must be a tuple of module names, e.g. "
                f"preload = ('sklearn.linear_model',), not {cls.preload!r}"
            )

    @classmethod
    def handlers(cls) -> dict[str, Callable[..., Any]]:
        return {
            n: getattr(cls, n)
            for n in dir(cls)
            if not n.startswith("_") and getattr(getattr(cls, n), _HANDLER_ATTR, False)
        }

    # -- behaviour -----------------------------------------------------------------------
    def on_start(self, store: Store) -> None:
        """Hook: the shard hosting this instance starts, over the data folder's ``store``
        (read what the kind serves from, e.g. a catalog table). Keep it quick: shards
        start in parallel, and the stream waits for them."""

    def on_event(self, state: dict[str, Any], event: dict[str, Any]) -> None:
        """Per-event handler; ``state`` is a dict to update in place."""
        raise NotImplementedError

    def apply(self, batch: Batch) -> None:
        """Apply a batch; the default calls :meth:`on_event` per event, in order."""
        st = batch.state
        # in arrival order; the events of one entity stay in their relative order either way
        for slot, event in zip(batch.slots.tolist(), batch.events.to_pylist(), strict=True):
            row = st.row(slot)
            self.on_event(row, event)
            st.set_row(slot, row)

    @classmethod
    def needs(cls) -> tuple[str, ...]:
        """Event columns the kind reads: checked on the first rows, before any shard call."""
        return tuple(c for c in (cls.key, cls.site_key) if c)

    def on_watermark(self, batch: Batch) -> None:
        """Hook: event time advanced to ``batch.watermark`` with no new events (fire windows).

        Emit through ``batch.emit``; ``batch.events`` is empty."""

    def on_feedback(self, batch: Batch) -> None:
        """Hook: rows of the :attr:`feedback` input (``batch.events``; ``slots`` unused),
        with ``emit`` and ``count`` as in :meth:`apply`. A redelivered row must not count
        twice: after a restart, feedback after the last checkpoint comes again."""
        raise NotImplementedError

    def active_topics(self) -> tuple[str, ...]:
        """Hook: the declared topics this configuration publishes to (each costs an actor)."""
        return self.topics

    def export(self, table: pa.Table) -> pa.Table:
        """Hook: add derived columns to the stored profile (e.g. a mean from a sum)."""
        return table

    def snapshot(self) -> bytes | None:
        """Hook: kind-wide state beyond entities (e.g. a model), saved at checkpoints."""
        return None

    def restore(self, blob: bytes) -> None:
        """Hook: load what :meth:`snapshot` returned."""

    def shard_snapshot(self) -> bytes | None:
        """Hook: state of this shard's instance that is its own, not merged (e.g. the log
        of what it scored, waiting for labels), saved per shard with every checkpoint.
        Once it returned bytes, return bytes (an empty state) rather than None."""
        return None

    def restore_shard(self, blob: bytes) -> None:
        """Hook: load what :meth:`shard_snapshot` returned (the same shard, after a restart)."""

    def merge_snapshots(self, blobs: list[bytes]) -> bytes | None:
        """Hook: combine the snapshots of all shards into one (e.g. average model weights)."""
        return blobs[0] if blobs else None

    def model_card(self, snapshot: bytes) -> dict[str, Any] | None:
        """Hook: if the kind's snapshot is a model, what the model registry records of it:
        ``{"version", "parent", "training_rows", "metrics", "parameters"}`` (``version`` an
        int that grows as it learns; ``parent`` may be None). None: not a model. Raise
        ``ValueError`` for a snapshot the kind cannot read; never run code from it."""
        return None

    # -- addressing ----------------------------------------------------------------------
    @classmethod
    def ref(cls, key: str, runtime: Runtime | None = None) -> EntityRef:
        """Address one entity of this kind by key, in ``runtime`` or the current one."""
        rt = runtime or current_runtime.get()
        if rt is None:
            raise NotStartedError(
                f"{cls.__qualname__}.ref({key!r}) needs a running runtime: "
                "use `with Runtime(...) as rt:` or pass runtime=rt"
            )
        return EntityRef(rt, cls.name, str(key))


@dataclass(frozen=True)
class EntityRef:
    """A handle on one entity; calls go to the shard that hosts its key."""

    runtime: Runtime
    kind: str
    key: str

    def get(self) -> dict[str, Any]:
        """The entity's current state (live if active, else its stored profile)."""
        return self.runtime.entity_state(self.kind, self.key)

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Run handler ``name`` on this entity and return its result."""
        return self.runtime.call_entity(self.kind, self.key, name, *args, **kwargs)


def preload(modules: tuple[str, ...]) -> None:
    """Import ``modules`` (a kind's :attr:`EntityKind.preload`) in a background thread,
    ahead of their first use; one that fails to import fails where it is used instead.

    >>> preload(("json",))
    """
    if not modules:
        return

    def run() -> None:
        import importlib

        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - the kind's own import raises it, in context
                continue

    threading.Thread(target=run, name="preload", daemon=True).start()
