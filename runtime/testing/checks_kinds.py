"""Contract checks of entity kinds (see :mod:`runtime.testing.checks` for the entry points).

Every check runs the kind the way the runtime does, in a local :class:`Runtime` (all in
process, no Ray) on a temporary data folder, and raises :class:`ContractError` naming
the kind, the check, the key and field (or topic and column) that broke, and the fix.

Class attributes on a kind adjust the checks, each documented where it is set:

* ``changelog_topics``: ``{topic: key columns}`` for topics that re-emit a key's latest
  value whenever it changes (an upsert stream): how many updates depend on batching,
  the last row per key must not, so only that is compared.
* ``volatile_columns``: emitted columns that legitimately differ between two runs of
  the same events (a wall-clock ``detected_at``); they are left out of output comparisons.
* ``contract_exempt``: ``{check name: reason}`` for a check the kind cannot meet by
  design (e.g. sampled state); the check is then reported as exempt with that reason,
  never silently skipped.

>>> from runtime.testing import Tally
>>> import pyarrow as pa
>>> case = Case(Tally, pa.table({"key": ["a", "b", "a"], "value": [1.0, 2.0, 3.0]}))
>>> check_batch_independence(case)
"""

from __future__ import annotations

import inspect
import pickle
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from runtime.cluster.handles import resolve
from runtime.coordinator.checkpoint import saved_snapshots as stored_snapshots
from runtime.coordinator.runtime import Runtime
from runtime.entities.kind import EntityKind
from runtime.errors import ConfigError, ContractError, UnknownEntityError
from runtime.testing.compare import (
    SMALL_BATCHES,
    first_difference,
    keys_of,
    last_per_key,
    multiset_minus,
    rows_of,
    split,
    where,
)

SHARDS = 2  # more than one, so routing and snapshot merging take part in every check


# -- running a kind --------------------------------------------------------------------------
@dataclass
class Seen:
    """What a run left: each entity's state, each shard's kind snapshot, emitted rows."""

    states: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    snapshots: list[bytes | None] = field(default_factory=list)
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


@contextmanager
def running(
    kind_cls: type[EntityKind], config: Any, data_dir: str | None, sites: list[str] | None
) -> Iterator[Runtime]:
    """A local runtime hosting ``kind_cls`` in ``data_dir`` (None: a temporary folder,
    removed after); stopped without a checkpoint of its own."""
    with ExitStack() as stack:
        if data_dir is None:
            data_dir = stack.enter_context(scratch())
        rt = Runtime(data_dir=data_dir, mode="local", shards=SHARDS).start()
        try:
            rt.register(kind_cls, config, sites=sites if kind_cls.site_key else None)
            yield rt
        finally:
            rt.stop(checkpoint=False)


def scratch() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="edgecore-checks-", ignore_cleanup_errors=True)


def feed(rt: Runtime, kind_cls: type[EntityKind], batches: list[pa.Table]) -> None:
    for b in batches:
        if b.num_rows:
            rt.send(kind_cls.name, b)


def saved_snapshots(rt: Runtime, kind_cls: type[EntityKind]) -> list[bytes | None]:
    """Each shard's kind snapshot as the last checkpoint saved it (merged, or per shard)."""
    store, name = rt.store, kind_cls.name
    assert store is not None
    blobs = stored_snapshots(store)
    n = len(rt.shards_of(name))
    if kind_cls.snapshot_scope == "shard":
        return [blobs.get(f"{name}#{i}") for i in range(n)]
    return [blobs.get(name)] * n


def look(
    rt: Runtime, kind_cls: type[EntityKind], config: Any, keys: list[str], drop: tuple[str, ...]
) -> Seen:
    seen = Seen()
    if not kind_cls.stateless:
        for k in keys:
            try:
                seen.states[k] = rt.entity_state(kind_cls.name, k)
            except UnknownEntityError:  # a difference when the other run knows it
                seen.states[k] = None
    seen.snapshots = resolve([h.snapshot_kind() for h in rt.shards_of(kind_cls.name)])
    changelog = dict(getattr(kind_cls, "changelog_topics", {}))
    for topic in kind_cls(config).active_topics():
        rows = rt.read_topic(topic)
        if topic in changelog and rows.num_rows:
            rows = last_per_key(rows, list(changelog[topic]))
        seen.rows[topic] = rows_of(rows, drop)
    return seen


class Case:
    """One kind with its events, as every kind check takes them."""

    def __init__(
        self,
        kind_cls: type[EntityKind],
        events: pa.Table | list[dict[str, Any]],
        config: Any = None,
        watermark: int | None = None,
    ) -> None:
        self.kind_cls, self.config, self.watermark = kind_cls, config, watermark
        self.events = events if isinstance(events, pa.Table) else pa.Table.from_pylist(events)
        if self.events.num_rows < 2:
            raise ConfigError(f"{where(kind_cls)}: give the checks at least 2 events")
        self.keys = keys_of(kind_cls, self.events)
        site = kind_cls.site_key
        self.sites = sorted(set(self.events.column(site).to_pylist())) if site else None
        self.drop = tuple(getattr(kind_cls, "volatile_columns", ()))

    def run(self, batches: list[pa.Table]) -> Seen:
        """Feed ``batches`` to a fresh runtime, then the final watermark; what it left."""
        with running(self.kind_cls, self.config, None, self.sites) as rt:
            feed(rt, self.kind_cls, batches)
            self.finish(rt)
            return look(rt, self.kind_cls, self.config, self.keys, self.drop)

    def finish(self, rt: Runtime) -> None:
        """Event time to the end: operators fire what they still hold."""
        if self.watermark is not None:
            rt.routing.advance(self.kind_cls.name, self.watermark)
            rt.routing.drain()

    def compare(self, got: Seen, want: Seen, check: str, how: str, fix: str) -> None:
        """Raise naming the first entity field or emitted row that differs."""
        for key in self.keys:
            diff = first_difference(got.states.get(key), want.states.get(key))
            if diff:
                raise ContractError(
                    f"{where(self.kind_cls)} fails {check}: key {self.kind_cls.key}={key!r}, "
                    f"field {diff} ({how}). {fix}"
                )
        for topic in sorted(set(got.rows) | set(want.rows)):
            diff = first_difference(got.rows.get(topic, []), want.rows.get(topic, []))
            if diff:
                raise ContractError(
                    f"{where(self.kind_cls)} fails {check}: rows emitted to topic {topic!r} "
                    f"differ at row{diff} ({how}). {fix} A column that may differ between "
                    "runs by design (wall-clock time) belongs in volatile_columns."
                )


# -- the checks ----------------------------------------------------------------------------
def check_definition(case: Case) -> None:
    """``check()`` passes and the events carry every column the kind ``needs()``."""
    kind_cls = case.kind_cls
    try:
        kind_cls.check()
    except ConfigError as err:
        raise ContractError(f"{where(kind_cls)} fails check_definition: {err}") from err
    missing = [c for c in kind_cls.needs() if c not in case.events.column_names]
    if missing:
        raise ContractError(
            f"{where(kind_cls)} fails check_definition: the events lack column(s) {missing} "
            "that needs() names; give events with them"
        )
    extra = set(kind_cls(case.config).active_topics()) - set(kind_cls.topics)
    if extra:
        raise ContractError(
            f"{where(kind_cls)} fails check_definition: active_topics() names {sorted(extra)}, "
            f"not declared in topics; add them to {kind_cls.__qualname__}.topics"
        )


def _check_round_trip(case: Case, first: list[pa.Table], rest: list[pa.Table]) -> None:
    """``restore(snapshot())`` in every shard halfway changes nothing that follows. (A
    checkpoint of a kind-wide snapshot restores the merged one into the live shards, so a
    restore that drops state shows here, not in a restart compared with a checkpoint.)"""
    runs = []
    for round_trip in (False, True):
        with running(case.kind_cls, case.config, None, case.sites) as rt:
            feed(rt, case.kind_cls, first)
            shards = rt.shards_of(case.kind_cls.name)
            blobs = resolve([h.snapshot_kind() for h in shards])  # (both: side effects)
            if round_trip:
                resolve([h.restore_kind(b) for h, b in zip(shards, blobs, strict=True) if b])
            feed(rt, case.kind_cls, rest)
            case.finish(rt)
            runs.append(look(rt, case.kind_cls, case.config, case.keys, case.drop))
    case.compare(
        runs[1],
        runs[0],
        "check_restore",
        "restore(snapshot()) halfway != untouched",
        "restore(blob) must bring back all the kind-level state snapshot() saved, and "
        "snapshot() must save all of it.",
    )


def check_restore(case: Case) -> None:
    """State survives a snapshot round trip, a checkpoint and a restart: ``restore(
    snapshot())`` halfway changes nothing; after a restart every entity's state is as
    committed, and the rest of the events give the same state and outputs as a run that
    went on after the same checkpoint."""
    kind_cls, n = case.kind_cls, case.events.num_rows
    first, rest = [case.events.slice(0, n // 2)], [case.events.slice(n // 2)]
    _check_round_trip(case, first, rest)
    known = keys_of(kind_cls, first[0])
    with scratch() as data_dir:
        with running(kind_cls, case.config, data_dir, case.sites) as rt:
            feed(rt, kind_cls, first)
            rt.checkpoint()
            before = look(rt, kind_cls, case.config, known, case.drop)  # as committed
        with running(kind_cls, case.config, data_dir, case.sites) as rt:
            after = look(rt, kind_cls, case.config, known, case.drop)
            for key in known:
                diff = first_difference(after.states.get(key), before.states.get(key))
                if diff:
                    raise ContractError(
                        f"{where(kind_cls)} fails check_restore: key {kind_cls.key}={key!r}, "
                        f"field {diff} (after restart != before). Stored profiles are what "
                        "export() returns: it may add columns but must not change state fields."
                    )
            for i, (now, saved) in enumerate(
                zip(after.snapshots, saved_snapshots(rt, kind_cls), strict=True)
            ):
                # snapshots are compared by what they do (below), not byte for byte: a snapshot
                # of equal state may differ (chunking of tables, a process clock)
                if saved is not None and now is None:
                    raise ContractError(
                        f"{where(kind_cls)} fails check_restore: the checkpoint saved a kind "
                        f"snapshot, but after restore(blob) shard {i}'s snapshot() returns None"
                    )
            for topic, rows in before.rows.items():  # the durable topic log kept them
                lost = multiset_minus(rows, after.rows.get(topic, []))
                if rt.config.topic_log and lost:
                    raise ContractError(
                        f"{where(kind_cls)} fails check_restore: {len(lost)} rows topic "
                        f"{topic!r} held at the checkpoint are gone after the restart"
                    )
            feed(rt, kind_cls, rest)
            case.finish(rt)
            resumed = look(rt, kind_cls, case.config, case.keys, case.drop)
    for topic, rows in resumed.rows.items():  # what the second half emitted
        resumed.rows[topic] = multiset_minus(rows, after.rows.get(topic, []))
    # the same cut without a restart: compare only what the second half emitted
    with running(kind_cls, case.config, None, case.sites) as rt:
        feed(rt, kind_cls, first)
        rt.checkpoint()
        halfway = look(rt, kind_cls, case.config, case.keys, case.drop)
        feed(rt, kind_cls, rest)
        case.finish(rt)
        straight = look(rt, kind_cls, case.config, case.keys, case.drop)
    for topic, rows in straight.rows.items():
        straight.rows[topic] = multiset_minus(rows, halfway.rows.get(topic, []))
    case.compare(
        resumed,
        straight,
        "check_restore",
        "resumed after a restart != never stopped",
        "Save in snapshot() all kind-level state that later events depend on.",
    )


def check_batch_independence(case: Case) -> None:
    """The same events in one batch or in many small ones give the same state and the
    same emitted rows (up to order)."""
    one = case.run([case.events])
    many = case.run(split(case.events))
    case.compare(
        many,
        one,
        "check_batch_independence",
        f"batches of {SMALL_BATCHES} rows != one batch",
        "apply(batch) must not depend on where batch boundaries fall: carry what a later "
        "event needs in the entity state, not in the batch.",
    )


def defines_both(kind_cls: type[EntityKind]) -> bool:
    return (
        not kind_cls.stateless
        and kind_cls.apply is not EntityKind.apply
        and kind_cls.on_event is not EntityKind.on_event
    )


def check_on_event_matches_apply(case: Case) -> None:
    """For a kind with both: ``apply(batch)`` leaves every entity as ``on_event`` per event."""
    kind_cls = case.kind_cls
    per_event = type(kind_cls.__name__, (kind_cls,), {"apply": EntityKind.apply})
    per_event.__qualname__ = kind_cls.__qualname__
    batches = split(case.events)
    ref = Case(per_event, case.events, case.config, case.watermark).run(batches)
    got = case.run(batches)
    for key in case.keys:
        diff = first_difference(got.states.get(key), ref.states.get(key))
        if diff:
            raise ContractError(
                f"{where(kind_cls)} fails check_on_event_matches_apply: key "
                f"{kind_cls.key}={key!r}, field {diff} (apply != on_event). Make apply(batch) "
                "change each entity as on_event(state, event) does, event by event."
            )


def check_handlers(case: Case) -> None:
    """Every handler takes ``(self, state, ...)``; those with no further required argument
    run on an entity and return something picklable (Ray carries it back)."""
    kind_cls = case.kind_cls
    with running(kind_cls, case.config, None, case.sites) as rt:
        feed(rt, kind_cls, [case.events])
        for name, fn in sorted(kind_cls.handlers().items()):
            params = list(inspect.signature(fn).parameters.values())[2:]
            if len(inspect.signature(fn).parameters) < 2:
                raise ContractError(
                    f"{where(kind_cls)} fails check_handlers: handler {name!r} must take "
                    "(self, state, *args)"
                )
            if any(p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD for p in params):
                continue  # needs arguments only its caller knows
            try:
                result = rt.call_entity(kind_cls.name, case.keys[0], name)
                pickle.dumps(result)
            except Exception as err:
                raise ContractError(
                    f"{where(kind_cls)} fails check_handlers: handler {name!r} on key "
                    f"{case.keys[0]!r} raised {type(err).__name__}: {err}"
                ) from err
