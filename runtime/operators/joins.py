"""Stream–stream joins hosted in shards: within tumbling event-time windows, or over all time.

:func:`join_kind` returns a stateless operator kind (see :mod:`runtime.operators.windowed`) whose
state, the rows of both sides it still needs, is saved per shard with every checkpoint.
Both sides come in one stream, told apart by a ``side`` column, keyed by the join key.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from runtime.errors import ConfigError
from runtime.operators.windowed import LATE_EVENTS, OperatorKind, check_step
from runtime.state.snapshot import State

StateParts = tuple[dict[str, Any], dict[str, np.ndarray], dict[str, pa.Table]]


class WindowJoin:
    """Two streams joined on a key within the same tumbling event-time window.

    Rows of both sides are buffered per (key, window); when the watermark passes a
    window's end its pairs are emitted (an inner join, every left row with every right
    row) and the window is dropped. A row whose window has already closed is late.
    Plain class, vectorized with Arrow joins; saved at checkpoints as its settings (JSON)
    and the rows it buffers (an Arrow table), see :meth:`to_state`.

    >>> j = WindowJoin(size_ms=10, key="k", time="t", side="s", left="p", right="a")
    >>> ev = pa.table({"k": [1, 1, 2], "t": [1, 5, 3], "s": ["p", "a", "a"], "x": [7, 8, 9]})
    >>> out, late = j.process(ev, watermark=None)
    >>> out.num_rows, late.num_rows
    (0, 0)
    >>> out = j.advance(10)
    >>> out.select(["k", "window_start", "x_left", "x_right"]).to_pylist()
    [{'k': 1, 'window_start': 0, 'x_left': 7, 'x_right': 8}]
    """

    def __init__(
        self,
        size_ms: int,
        key: str,
        time: str,
        side: str,
        left: str,
        right: str,
        columns: dict[str, str] | None = None,
        distinct: bool = False,
    ) -> None:
        if size_ms <= 0:
            raise ConfigError(f"join window size must be > 0 ms, not {size_ms}")
        self.size_ms, self.key, self.time, self.side = size_ms, key, time, side
        self.left, self.right = left, right
        #: output column -> joined column (then window_end); without repeats if ``distinct``
        self.columns, self.distinct = columns, distinct
        self.watermark = -(2**63)
        self.late_count = 0
        self._buf: list[pa.Table] = []

    state_kind = "window_join"

    def _settings(self) -> dict[str, Any]:
        names = ("size_ms", "key", "time", "side", "left", "right", "columns", "distinct")
        return {n: getattr(self, n) for n in names}

    def to_state(self) -> StateParts:
        """Its settings, event time and the rows of the open windows (one table)."""
        meta = {**self._settings(), "watermark": self.watermark, "late_count": self.late_count}
        buf = pa.concat_tables(self._buf, promote_options="default") if self._buf else None
        return meta, {}, {} if buf is None else {"buffered": buf}

    @classmethod
    def from_state(cls, state: State) -> WindowJoin:
        meta = dict(state.meta)
        watermark, late = int(meta.pop("watermark")), int(meta.pop("late_count"))
        j = cls(**meta)
        j.watermark, j.late_count = watermark, late
        j._buf = [state.tables["buffered"]] if "buffered" in state.tables else []
        return j

    def process(self, batch: pa.Table, watermark: int | None) -> tuple[pa.Table, pa.Table]:
        """Buffer ``batch``; returns (pairs of windows now closed, late rows)."""
        t = pc.cast(batch.column(self.time), pa.int64()).to_numpy(zero_copy_only=False)
        start = (t // self.size_ms) * self.size_ms
        closed = start + self.size_ms <= self.watermark
        late = batch.filter(pa.array(closed))
        self.late_count += late.num_rows
        keep = batch.filter(pa.array(~closed))
        if keep.num_rows:
            keep = keep.append_column("window_start", pa.array(start[~closed], pa.int64()))
            self._buf.append(keep.drop_columns([c for c in keep.column_names if c == "_key_hash"]))
        if watermark is None and len(t):
            watermark = int(t.max())
        return (self.advance(watermark) if watermark is not None else self._empty()), late

    def _empty(self) -> pa.Table:
        return pa.table({})

    def advance(self, watermark: int) -> pa.Table:
        """Move event time to ``watermark`` and emit the pairs of every window it closed."""
        self.watermark = max(self.watermark, int(watermark))
        if not self._buf:
            return self._empty()
        buf = pa.concat_tables(self._buf, promote_options="default")
        ends = pc.add(buf.column("window_start"), self.size_ms)
        due = pc.less_equal(ends, pa.scalar(self.watermark, pa.int64()))
        closing = buf.filter(due)
        rest = buf.filter(pc.invert(due))
        self._buf = [rest] if rest.num_rows else []
        if closing.num_rows == 0:
            return self._empty()
        sides = closing.column(self.side)
        cols = [c for c in closing.column_names if c not in (self.side,)]
        left = closing.filter(pc.equal(sides, self.left)).select(cols)
        right = closing.filter(pc.equal(sides, self.right)).select(cols)
        if left.num_rows == 0 or right.num_rows == 0:
            return self._empty()
        joined = left.join(
            right,
            keys=[self.key, "window_start"],
            join_type="inner",
            left_suffix="_left",
            right_suffix="_right",
            use_threads=False,
        )
        joined = _project(joined, self.columns, self.distinct)
        end = pc.add(joined.column("window_start"), self.size_ms)
        return joined.append_column("window_end", end)

    def buffered(self) -> int:
        return sum(t.num_rows for t in self._buf)


def _project(joined: pa.Table, columns: dict[str, str] | None, distinct: bool) -> pa.Table:
    if columns is not None:
        joined = joined.select(list(columns.values())).rename_columns(list(columns))
        if distinct:
            joined = joined.group_by(list(columns), use_threads=False).aggregate([])
    return joined


class StreamJoin:
    """A regular (unwindowed) inner join of two streams on a key: both sides are kept,
    and each arriving row is joined with every row of the other side seen so far, so
    the pairs emitted over time are exactly the join of everything (in any arrival
    order). State grows with the input, as in any unbounded join: filter first.

    >>> j = StreamJoin(key="k", side="s", left="p", right="a")
    >>> first = j.process(pa.table({"k": [1], "s": ["a"], "x": [8]}), None)[0]
    >>> later = j.process(pa.table({"k": [1, 1], "s": ["p", "a"], "x": [7, 9]}), None)[0]
    >>> first.num_rows, sorted(later.column("x_right").to_pylist())
    (0, [8, 9])
    """

    def __init__(
        self,
        key: str,
        side: str,
        left: str,
        right: str,
        columns: dict[str, str] | None = None,
        distinct: bool = False,
    ) -> None:
        self.key, self.side, self.left, self.right = key, side, left, right
        self.columns, self.distinct = columns, distinct
        self.watermark = -(2**63)
        self.late_count = 0
        self._kept: dict[str, pa.Table | None] = {"l": None, "r": None}

    state_kind = "stream_join"

    def to_state(self) -> StateParts:
        """Its settings, event time and both sides' rows seen so far."""
        names = ("key", "side", "left", "right", "columns", "distinct")
        meta = {n: getattr(self, n) for n in names}
        meta |= {"watermark": self.watermark, "late_count": self.late_count}
        return meta, {}, {s: t for s, t in self._kept.items() if t is not None}

    @classmethod
    def from_state(cls, state: State) -> StreamJoin:
        meta = dict(state.meta)
        watermark, late = int(meta.pop("watermark")), int(meta.pop("late_count"))
        j = cls(**meta)
        j.watermark, j.late_count = watermark, late
        j._kept = {s: state.tables.get(s) for s in ("l", "r")}
        return j

    def _join(self, left: pa.Table | None, right: pa.Table | None) -> pa.Table | None:
        if left is None or right is None or not left.num_rows or not right.num_rows:
            return None
        return left.join(
            right,
            keys=self.key,
            join_type="inner",
            left_suffix="_left",
            right_suffix="_right",
            use_threads=False,
        )

    def process(self, batch: pa.Table, watermark: int | None) -> tuple[pa.Table, pa.Table]:
        """Join ``batch`` with what was seen before; returns (new pairs, no late rows)."""
        cols = [c for c in batch.column_names if c not in (self.side, "_key_hash")]
        sides = batch.column(self.side)
        new_l = batch.filter(pc.equal(sides, self.left)).select(cols)
        new_r = batch.filter(pc.equal(sides, self.right)).select(cols)
        old_l, old_r = self._kept["l"], self._kept["r"]
        all_l = new_l if old_l is None else pa.concat_tables([old_l, new_l])
        # new left with all right (old and new), old left with new right: each pair once
        parts = [
            p
            for p in (
                self._join(new_l, new_r if old_r is None else pa.concat_tables([old_r, new_r])),
                self._join(old_l, new_r),
            )
            if p is not None and p.num_rows
        ]
        self._kept["l"] = all_l.combine_chunks() if all_l.num_rows else old_l
        if new_r.num_rows:
            self._kept["r"] = (
                new_r if old_r is None else pa.concat_tables([old_r, new_r])
            ).combine_chunks()
        if watermark is not None:
            self.watermark = max(self.watermark, int(watermark))
        out = pa.concat_tables(parts) if parts else pa.table({})
        if out.num_rows:
            out = _project(out, self.columns, self.distinct)
        return out, batch.slice(0, 0)

    def advance(self, watermark: int) -> pa.Table:
        self.watermark = max(self.watermark, int(watermark))
        return pa.table({})


class JoinOperator(OperatorKind):
    """A :class:`WindowJoin` (or, without a window, a :class:`StreamJoin`) in a shard;
    see :func:`join_kind`."""

    size_ms: ClassVar[int | None]
    side: ClassVar[str]
    left: ClassVar[str]
    right: ClassVar[str]
    columns: ClassVar[dict[str, str] | None] = None
    distinct: ClassVar[bool] = False

    @classmethod
    def needs(cls) -> tuple[str, ...]:
        return tuple(c for c in (cls.key, cls.side, cls.time if cls.size_ms else None) if c)

    def make(self) -> WindowJoin | StreamJoin:
        if self.size_ms is None:
            return StreamJoin(
                self.key, self.side, self.left, self.right, self.columns, self.distinct
            )
        return WindowJoin(
            self.size_ms,
            self.key,
            self.time,
            self.side,
            self.left,
            self.right,
            self.columns,
            self.distinct,
        )


def join_kind(
    name: str,
    size_ms: int | None,
    key: str,
    time: str,
    side: str,
    left: str,
    right: str,
    columns: dict[str, str] | None = None,
    distinct: bool = False,
) -> type[JoinOperator]:
    """A stream–stream join step: rows whose ``side`` column is ``left`` joined with rows
    whose ``side`` is ``right`` on ``key`` -- within the same tumbling window of
    ``size_ms``, or, with ``size_ms=None``, over all time (both sides kept, each new row
    joined with everything the other side has seen: a regular inner join).

    Pairs go to topic ``name``; columns both sides have are suffixed ``_left``/``_right``
    unless ``columns`` ({output: joined column}) picks and names them. Late rows of a
    windowed join go to ``late_events``."""
    check_step(name, key)
    attrs = {
        "name": name,
        "key": key,
        "size_ms": size_ms,
        "time": time,
        "side": side,
        "left": left,
        "right": right,
        "columns": dict(columns) if columns is not None else None,
        "distinct": distinct,
        "topics": (name, LATE_EVENTS),
        "__module__": __name__,
        "__qualname__": f"join_kind({name!r})",
    }
    return type(f"Join_{name}", (JoinOperator,), attrs)
