"""Entity state held column-wise in memory: one numpy array per field, one slot per entity.

A shard hosts thousands to millions of entities of one kind. Keeping each field as
a numpy column (a struct of arrays) lets a kind update all entities touched by a
batch with a handful of vectorized operations, and makes checkpoints a slice, not
a loop. Keys map to slots through a sorted :class:`~runtime.state.index.HashIndex`.

>>> import pyarrow as pa
>>> spec = StateSpec.of({"clicks": "int64", "last": ("float64", float("nan"))})
>>> st = ColumnarState(spec, key="user_id")
>>> slots, new = st.activate(np.array([7, 9, 7], dtype=np.uint64), pa.array(["a", "b", "a"]))
>>> slots.tolist(), new.tolist()
([0, 1, 0], [True, True, False])
>>> np.add.at(st.cols["clicks"], slots, 1)
>>> st.to_arrow(np.array([0, 1])).select(["user_id", "clicks"]).to_pydict()
{'user_id': ['a', 'b'], 'clicks': [2, 1]}
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from runtime.errors import ConfigError
from runtime.state.index import HashIndex

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
RESERVED = {"_key_hash"}

_NUMPY = {
    "int64": np.int64,
    "float64": np.float64,
    "float32": np.float32,  # embeddings: half the memory, what vector search takes
    "bool": np.bool_,
    "timestamp": np.int64,
}
_ARROW = {
    "int64": pa.int64(),
    "float64": pa.float64(),
    "float32": pa.float32(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("ms"),
    "string": pa.string(),
}


@dataclass(frozen=True)
class Field:
    """One state field: numpy-backed ``dtype``, default value, optional fixed width.

    ``width`` > 0 makes the field a fixed-size list per entity (stored as a 2-D
    column in memory and a ``fixed_size_list`` in LanceDB), e.g. the last N
    timestamps or an embedding vector.
    """

    name: str
    dtype: str
    default: Any = 0
    width: int = 0

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name) or self.name in RESERVED:
            raise ConfigError(
                f"state field name {self.name!r} is not allowed: use lowercase letters, digits "
                "and '_', starting with a letter"
            )
        if self.dtype not in _ARROW:
            raise ConfigError(
                f"state field {self.name!r}: unknown dtype {self.dtype!r}; use one of {sorted(_ARROW)}"
            )
        if self.width and self.dtype == "string":
            raise ConfigError(f"state field {self.name!r}: string fields cannot have a width")

    def empty(self, n: int) -> np.ndarray:
        shape = (n, self.width) if self.width else (n,)
        if self.dtype == "string":
            arr = np.empty(shape, dtype=object)
            arr[:] = self.default if self.default is not None else ""
            return arr
        return np.full(shape, self.default, dtype=_NUMPY[self.dtype])

    @property
    def arrow_type(self) -> pa.DataType:
        t = _ARROW[self.dtype]
        return pa.list_(t, self.width) if self.width else t


@dataclass(frozen=True)
class StateSpec:
    fields: tuple[Field, ...]

    @staticmethod
    def of(spec: dict[str, Any] | list[Field] | tuple[Field, ...] | StateSpec) -> StateSpec:
        """Accept ``{"name": "int64"}``, ``{"name": ("float64", default)}``,
        ``{"name": ("int64", default, width)}`` or a list of :class:`Field`."""
        if isinstance(spec, StateSpec):
            return spec
        if isinstance(spec, dict):
            fields = []
            for name, v in spec.items():
                if isinstance(v, str):
                    fields.append(
                        Field(name, v, {"string": "", "bool": False, "float64": 0.0}.get(v, 0))
                    )
                else:
                    fields.append(Field(name, *v))
            return StateSpec(tuple(fields))
        return StateSpec(tuple(spec))

    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def bytes_per_entity(self) -> int:
        """Memory one active entity takes: its fields plus key, hash, index and flags."""
        size = sum(
            (64 if f.dtype == "string" else np.dtype(_NUMPY[f.dtype]).itemsize) * max(1, f.width)
            for f in self.fields
        )
        return size + 120  # key string object (~60), hash, LRU stamp, flags, index entry


class ColumnarState:
    """The live state of all active entities of one kind in one shard."""

    def __init__(self, spec: StateSpec, key: str, capacity: int = 1024) -> None:
        self.spec = spec
        self.key = key
        self.capacity = capacity
        self.cols: dict[str, np.ndarray] = {f.name: f.empty(capacity) for f in spec.fields}
        self.keys = np.empty(capacity, dtype=object)
        self.key_hash = np.zeros(capacity, dtype=np.uint64)
        self.active = np.zeros(capacity, dtype=bool)
        self.dirty = np.zeros(capacity, dtype=bool)
        self.last_used = np.zeros(capacity, dtype=np.int64)
        self.index = HashIndex()
        self._free = np.arange(capacity - 1, -1, -1, dtype=np.int64)  # a stack
        self._n_free = capacity

    @property
    def n_active(self) -> int:
        return self.capacity - self._n_free

    def _grow(self, need: int) -> None:
        new_cap = self.capacity
        while new_cap - self.n_active < need:
            new_cap *= 2
        extra = new_cap - self.capacity
        for f in self.spec.fields:
            self.cols[f.name] = np.concatenate([self.cols[f.name], f.empty(extra)])
        self.keys = np.concatenate([self.keys, np.empty(extra, dtype=object)])
        self.key_hash = np.concatenate([self.key_hash, np.zeros(extra, dtype=np.uint64)])
        for name in ("active", "dirty"):
            setattr(self, name, np.concatenate([getattr(self, name), np.zeros(extra, dtype=bool)]))
        self.last_used = np.concatenate([self.last_used, np.zeros(extra, dtype=np.int64)])
        # the stack keeps room for every slot (release pushes up to n_active at once);
        # the new slots go below the old free ones, which are taken first
        stack = np.empty(new_cap, dtype=np.int64)
        stack[:extra] = np.arange(new_cap - 1, self.capacity - 1, -1, dtype=np.int64)
        stack[extra : extra + self._n_free] = self._free[: self._n_free]
        self._free = stack
        self._n_free += extra
        self.capacity = new_cap

    def lookup(self, hashes: np.ndarray) -> np.ndarray:
        return self.index.lookup(hashes)

    def activate(self, hashes: np.ndarray, keys: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """Slot per row, allocating fresh (default) slots for unseen keys.

        Returns (slots per row, mask over rows marking the first row of each key that
        was newly allocated) so the caller can fill those from the store.
        """
        slots = self.index.lookup(hashes)
        missing = slots < 0
        new_first = np.zeros(len(hashes), dtype=bool)
        if missing.any():
            miss_idx = np.flatnonzero(missing)
            uniq, first = np.unique(hashes[miss_idx], return_index=True)
            if len(uniq) > self._n_free:
                self._grow(len(uniq))
            fresh = self._free[self._n_free - len(uniq) : self._n_free][::-1].copy()
            self._n_free -= len(uniq)
            for f in self.spec.fields:
                self.cols[f.name][fresh] = f.empty(len(uniq))
            self.active[fresh] = True
            self.key_hash[fresh] = uniq
            rows = miss_idx[first]
            self.keys[fresh] = keys.take(pa.array(rows)).to_numpy(zero_copy_only=False)
            self.index.insert(uniq, fresh)
            slots = slots.copy()
            # rows of one new key share its slot
            slots[miss_idx] = fresh[np.searchsorted(uniq, hashes[miss_idx])]
            new_first[rows] = True
        return slots, new_first

    def release(self, slots: np.ndarray) -> None:
        """Forget the entities in ``slots`` (after their state was handed off)."""
        if len(slots) == 0:
            return
        self.index.delete(self.key_hash[slots])
        self.active[slots] = False
        self.dirty[slots] = False
        self.keys[slots] = None
        self._free[self._n_free : self._n_free + len(slots)] = slots
        self._n_free += len(slots)

    def to_arrow(self, slots: np.ndarray) -> pa.Table:
        """The state of ``slots`` as an Arrow table: key, ``_key_hash`` and every field."""
        data: dict[str, pa.Array] = {
            self.key: pa.array(self.keys[slots], pa.string()),
            "_key_hash": pa.array(self.key_hash[slots].view(np.int64)),
        }
        for f in self.spec.fields:
            col = self.cols[f.name][slots]
            if f.width:
                flat = pa.array(col.reshape(-1), _ARROW[f.dtype])
                data[f.name] = pa.FixedSizeListArray.from_arrays(flat, f.width)
            elif f.dtype == "timestamp":
                data[f.name] = pa.array(col, pa.int64()).cast(pa.timestamp("ms"))
            else:
                data[f.name] = pa.array(col, _ARROW[f.dtype])
        return pa.table(data)

    def load(self, slots: np.ndarray, table: pa.Table) -> None:
        """Overwrite ``slots`` with the rows of ``table`` (same order), e.g. a stored profile."""
        for f in self.spec.fields:
            if f.name not in table.column_names:
                continue  # a field added since the profile was stored keeps its default
            col = table.column(f.name).combine_chunks()
            if f.width:
                vals = col.flatten().to_numpy(zero_copy_only=False).reshape(-1, f.width)
            elif f.dtype == "timestamp":
                vals = col.cast(pa.int64()).fill_null(int(f.default)).to_numpy()
            elif f.dtype == "string":
                vals = col.to_numpy(zero_copy_only=False)
            else:
                default = pa.scalar(f.default).cast(f.arrow_type)
                vals = col.cast(f.arrow_type).fill_null(default).to_numpy(zero_copy_only=False)
            self.cols[f.name][slots] = vals

    def row(self, slot: int) -> dict[str, Any]:
        """One entity's state as plain Python values (for per-entity handlers)."""
        out: dict[str, Any] = {}
        for f in self.spec.fields:
            v = self.cols[f.name][slot]
            out[f.name] = (
                v.tolist() if isinstance(v, np.ndarray) else (v.item() if hasattr(v, "item") else v)
            )
        return out

    def set_row(self, slot: int, values: dict[str, Any]) -> None:
        for f in self.spec.fields:
            if f.name in values:
                self.cols[f.name][slot] = values[f.name]
        self.dirty[slot] = True
