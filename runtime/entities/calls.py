"""Calls on entities by key: state reads, handlers, and the state side of joins.

A mixin of :class:`~runtime.entities.shard.Shard`: it finds (or brings back from
LanceDB) the slots of the keys asked for and runs the kind's handlers on them. A
per-entity handler runs on a dict of one entity's state; a batched one
(``@handler(batched=True)``) runs once over the slots of many keys, so a serving front
end that gathers requests arriving together pays one shard call and one vectorized
pass for all of them.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pyarrow as pa

from runtime.entities.grouping import as_keys
from runtime.entities.kind import EntityKind, is_batched
from runtime.errors import ConfigError, UnknownEntityError
from runtime.state.keys import hash_keys

if TYPE_CHECKING:
    from runtime.entities.residency import Residency
    from runtime.state.fields import ColumnarState


def serialized(method: Callable[..., Any]) -> Callable[..., Any]:
    """One call at a time, as a Ray actor runs them; in-process (local mode) a live gate's
    thread and the coordinator may call a shard at once."""

    @functools.wraps(method)
    def run(self: EntityCalls, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return run


class LiveState(NamedTuple):
    """A shard's whole population at one moment (:meth:`Shard.live_snapshot`)."""

    kind: str
    key: str
    site: str | None
    table: pa.Table | None  # as a checkpoint stores it; None for a stateless kind


class EntityCalls:
    """What a shard answers about single entities (attributes set by the shard)."""

    _lock: threading.RLock
    _seq: int
    name: str
    kind: EntityKind
    kind_cls: type[EntityKind]
    res: Residency
    state: ColumnarState
    site: str | None
    #: what the last drain handed over of entities no longer in memory (see live_snapshot)
    _handed: pa.Table | None

    def _slot(self, key: str, create: bool) -> int:
        keys = pa.array([key])
        h = hash_keys(keys)
        if not create and self.state.lookup(h)[0] < 0 and not self.res.known_elsewhere(h)[0]:
            raise UnknownEntityError(self.name, key)
        slot = int(self.res.activate(h, keys, np.zeros(1, dtype=np.int64))[0])
        self._seq += 1
        self.state.last_used[slot] = self._seq
        return slot

    @serialized
    def lookup(self, keys: pa.Array) -> pa.Table:
        """The current state of each of ``keys`` (null where the shard knows no such entity),
        in their order: the state side of a stream–state join. Nothing is created."""
        uniq, inv, slots = self._live(keys)
        known = slots >= 0
        rows = self.state.to_arrow(np.maximum(slots, 0)).drop_columns(["_key_hash"])
        idx = pa.array(np.where(known, np.arange(len(uniq)), -1)[inv], mask=~known[inv])
        found = rows.take(idx)
        self.res.passivate(self._seq)  # what was loaded for the lookup keeps to the budget
        return found

    def _live(self, keys: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sorted unique hashes of ``keys``, each key's place among them, and their slots:
        passivated or stored entities are brought back, unknown ones are -1 (not created)."""
        keys = as_keys(pa.chunked_array([keys]))
        h = hash_keys(keys)
        uniq, inv = np.unique(h, return_inverse=True)
        slots = self.state.lookup(uniq)
        back = (slots < 0) & self.res.known_elsewhere(uniq)
        if back.any():
            first = np.zeros(len(uniq), dtype=np.int64)
            first[inv] = np.arange(len(h))
            pick = np.flatnonzero(back)
            slots[pick] = self.res.activate(
                uniq[pick], keys.take(pa.array(first[pick])), np.arange(len(pick))
            )
        return uniq, inv, slots

    @serialized
    def get(self, key: str) -> dict[str, Any]:
        slot = self._slot(key, create=False)
        return {self.kind_cls.key: key, **self.state.row(slot)}

    @serialized
    def call(
        self,
        key: str,
        handler_name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        fn = self._handler(handler_name)
        if is_batched(fn):
            return self._call_batched(fn, pa.array([key], pa.string()), args, kwargs)[0]
        slot = self._slot(key, create=True)
        row = self.state.row(slot)
        result = fn(self.kind, row, *args, **(kwargs or {}))
        self.state.set_row(slot, row)
        return result

    @serialized
    def call_many(
        self,
        keys: pa.Array,
        handler_name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None = None,
    ) -> list[Any]:
        """Run a handler on each of ``keys``: a batched one once over all of them (unknown
        keys as slot -1), a per-entity one key by key. One result per key, in order."""
        fn = self._handler(handler_name)
        if is_batched(fn):
            return self._call_batched(fn, keys, args, kwargs)
        out = []
        for key in keys.to_pylist():
            slot = self._slot(key, create=True)
            row = self.state.row(slot)
            out.append(fn(self.kind, row, *args, **(kwargs or {})))
            self.state.set_row(slot, row)
        return out

    def _handler(self, name: str) -> Callable[..., Any]:
        fn = self.kind_cls.handlers().get(name)
        if fn is None:
            raise ConfigError(
                f"entity kind {self.name!r} has no handler {name!r}; "
                f"it has {sorted(self.kind_cls.handlers())}"
            )
        return fn

    def _call_batched(
        self,
        fn: Callable[..., Any],
        keys: pa.Array,
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
    ) -> list[Any]:
        _, inv, uslots = self._live(keys)
        slots = uslots[inv]
        self._seq += 1
        self.state.last_used[slots[slots >= 0]] = self._seq
        result = list(fn(self.kind, self.state, slots, *args, **(kwargs or {})))
        self.res.passivate(self._seq)
        if len(result) != len(slots):
            raise TypeError(
                f"batched handler {fn.__name__!r} of {self.name!r} returned {len(result)} "
                f"results for {len(slots)} keys"
            )
        return result

    def _not_resident(self, table: pa.Table | None) -> pa.Table | None:
        if table is None or not table.num_rows:
            return None
        hashes = table.column("_key_hash").to_numpy().view(np.uint64)
        gone = self.state.lookup(hashes) < 0
        return table.filter(pa.array(gone)) if gone.any() else None

    @serialized
    def live_snapshot(self) -> LiveState:
        """Every entity of this shard as a checkpoint would store it, now: the ones in
        memory, the passivated ones waiting in the outbox, the ones the last drain handed
        over but a commit may not have written yet, and the rest as LanceDB has them.
        One call, so one batch boundary: nothing is applied in between. Nothing changes
        (no entity is activated, no dirty flag cleared)."""
        if self.kind_cls.stateless:
            return LiveState(self.name, self.kind_cls.key, self.site, None)
        st = self.state
        raw = [*self.res.outbox, st.to_arrow(np.flatnonzero(st.active))]
        table = self.res.tag_site(self.kind.export(pa.concat_tables(raw)))
        parts = [table]
        seen = table.column("_key_hash").to_numpy().view(np.uint64)
        if self._handed is not None:
            h = self._handed.column("_key_hash").to_numpy().view(np.uint64)
            fresh = ~np.isin(h, seen)
            parts.append(self._handed.filter(pa.array(fresh)))
            seen = np.concatenate([seen, h[fresh]])
        missing = np.setdiff1d(self.res.stored, seen)
        if len(missing):  # passivated and committed: LanceDB has their latest state
            stored = self.res.store.read(self.name)
            h = stored.column("_key_hash").to_numpy().view(np.uint64)
            parts.append(stored.filter(pa.array(np.isin(h, missing))))
        parts = [p.select([c for c in table.column_names if c in p.column_names]) for p in parts]
        whole = pa.concat_tables(parts, promote_options="default")
        return LiveState(self.name, self.kind_cls.key, self.site, whole)
