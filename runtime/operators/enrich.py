"""Stream–state joins: add to each event what is known about another entity or table row.

* :func:`entity_join` joins events with the live state of another kind's entities
  (a transaction with its merchant's profile): one lookup call per shard per batch,
  served from memory; the entity's stored profile when it is passivated.
* :class:`TableLookup` joins events with rows of a LanceDB table (reference data such
  as a product catalogue) through a bounded memory cache: keys missing from the cache
  are fetched in one query per batch; keys the table lacks are remembered too, so a
  stream of unknown keys does not query again and again.

Both are batch-wise steps for the pipeline API (``.map("merchant", entity_join(...))``);
the columns they add are named ``<prefix><field>`` and are null where nothing matched.

>>> import tempfile, pyarrow as pa
>>> from runtime.state.store import Store
>>> data = tempfile.mkdtemp()
>>> Store(data).upsert("merchants", pa.table({"merchant_id": ["m1", "m2"], "risk": [0.1, 0.9]}), key="merchant_id")
>>> look = TableLookup(data, "merchants", key="merchant_id", on="merchant", columns=["risk"])
>>> look(pa.table({"merchant": ["m2", "m9", "m2"]})).column("risk").to_pylist()
[0.9, None, 0.9]
>>> look(pa.table({"merchant": ["m9", "m1"]})).column("risk").to_pylist()  # m9: known absent
[None, 0.1]
>>> look.stats()  # per distinct key in a batch
{'hits': 1, 'misses': 3, 'queries': 2, 'cached': 3}
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from runtime.entities.kind import current_runtime
from runtime.errors import ConfigError, NotStartedError
from runtime.state.index import HashIndex
from runtime.state.keys import hash_keys
from runtime.state.store import Store


def _add(events: pa.Table, found: pa.Table, columns: list[str], prefix: str) -> pa.Table:
    for c in columns:
        name = f"{prefix}{c}"
        if name in events.column_names:
            raise ConfigError(f"joining adds column {name!r}, which the events have already")
        events = events.append_column(name, found.column(c))
    return events


def entity_join(
    kind: str, on: str, fields: list[str], prefix: str = ""
) -> Callable[[pa.Table], pa.Table]:
    """A step adding ``fields`` of the ``kind`` entity named by column ``on`` to each event.

    Runs where the pipeline's steps run (the coordinator) against the current runtime.
    """

    def step(events: pa.Table) -> pa.Table:
        rt = current_runtime.get()
        if rt is None:
            raise NotStartedError(f"entity_join({kind!r}) runs inside a started runtime")
        found = rt.lookup(kind, events.column(on))
        missing = [f for f in fields if f not in found.column_names]
        if missing:
            raise ConfigError(f"entity kind {kind!r} has no state fields {missing}")
        return _add(events, found, fields, prefix)

    return step


def _literals(keys: list[str], key_type: pa.DataType) -> list[str]:
    """``keys`` as SQL literals for a key column of ``key_type``: quoted text, or for an
    integer column the keys that are integers, unquoted (no other text can match)."""
    if pa.types.is_integer(key_type):
        return [k for k in keys if re.fullmatch(r"-?[0-9]{1,18}", k)]
    return ["'" + k.replace("'", "''") + "'" for k in keys]


class TableLookup:
    """Join events with a LanceDB table's rows by key, through a memory cache.

    ``capacity`` bounds the cached keys (the cache starts over when full: simple, and
    the hot keys come back in one query); ``ttl_seconds`` bounds how stale a cached row
    may get when the table changes underneath.
    """

    def __init__(
        self,
        data_dir: str,
        table: str,
        key: str,
        on: str,
        columns: list[str] | None = None,
        prefix: str = "",
        capacity: int = 100_000,
        ttl_seconds: float | None = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.data_dir, self.table, self.key, self.on = data_dir, table, key, on
        self.columns, self.prefix = columns, prefix
        self.capacity, self.ttl, self.clock = capacity, ttl_seconds, clock
        self._store: Store | None = None
        self.counts = {"hits": 0, "misses": 0, "queries": 0}
        self._clear()

    def _clear(self) -> None:
        self._index = HashIndex()
        self._rows: list[pa.Table] = []
        self._n = 0
        self._born = self.clock()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_store"] = None  # opened again where the step runs
        return state

    def _fetch(self, keys: list[str], hashes: np.ndarray) -> None:
        if self._store is None:
            self._store = Store(self.data_dir)
            if not self._store.exists(self.table):
                raise ConfigError(f"no table {self.table!r} in {self.data_dir} to look up")
        schema = self._store.table(self.table).schema
        literals = _literals(keys, schema.field(self.key).type)
        if literals:
            rows = self._store.read(self.table, where=f"{self.key} IN ({','.join(literals)})")
            self.counts["queries"] += 1
        else:  # nothing that could match (or nothing asked): no query, the columns' types
            rows = schema.empty_table()
        cols = self.columns or [c for c in rows.column_names if c not in (self.key, "_key_hash")]
        rows = rows.select([self.key, *cols])
        # one row per asked key, in the asked order; null rows for keys the table lacks
        got = hash_keys(rows.column(self.key))
        where = {int(h): i for i, h in enumerate(got)}
        pick = [where.get(int(h)) for h in hashes]
        fetched = rows.take(pa.array(pick, pa.int64()))
        self._index.insert(hashes, np.arange(self._n, self._n + len(hashes)))
        self._rows.append(fetched)
        self._n += len(hashes)

    def __call__(self, events: pa.Table) -> pa.Table:
        if self._n >= self.capacity or (self.ttl and self.clock() - self._born > self.ttl):
            self._clear()
        keys = events.column(self.on)
        if not pa.types.is_string(keys.type):
            keys = keys.cast(pa.string())
        h = hash_keys(keys)
        uniq, first, inv = np.unique(h, return_index=True, return_inverse=True)
        slots = self._index.lookup(uniq) if self._n else np.full(len(uniq), -1)
        miss = slots < 0
        self.counts["hits"] += int((~miss).sum())
        self.counts["misses"] += int(miss.sum())
        if miss.any():
            asked = keys.take(pa.array(first[miss])).to_pylist()
            self._fetch([str(k) for k in asked], uniq[miss])
            slots = self._index.lookup(uniq)
        if not self._rows:  # an empty batch before anything was cached
            self._fetch([], uniq)
        cache = pa.concat_tables(self._rows) if len(self._rows) > 1 else self._rows[0]
        self._rows = [cache]
        found = cache.take(pa.array(slots[inv]))
        cols = self.columns or [c for c in found.column_names if c != self.key]
        return _add(events, found, cols, self.prefix)

    def stats(self) -> dict[str, int]:
        return {**self.counts, "cached": self._n}
