"""Contract checks of sources, sinks and topic subscribers (entry points in
:mod:`runtime.testing.checks`).

>>> from runtime.testing import MemorySource
>>> check_resume(lambda: MemorySource([{"x": i} for i in range(5)], batch_size=2))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa

from runtime.cluster.wire import unpack
from runtime.errors import ContractError
from runtime.testing.checks_kinds import first_difference, rows_of
from runtime.topics.topic import OFFSET

SourceFactory = Callable[[], Any]
SinkFactory = Callable[[], Any]


def name_of(obj: Any) -> str:
    ident = getattr(obj, "id", None)
    kind = type(obj).__qualname__
    return f"{kind} {ident!r}" if isinstance(ident, str) else kind


def _read_all(source: Any, start: int, who: str) -> tuple[list[dict], list[int]]:
    rows: list[dict] = []
    ends: list[int] = []
    last = start
    for batch, end in source.batches(start):
        if not isinstance(batch, pa.Table):
            raise ContractError(
                f"source {who}: batches() must yield (pyarrow.Table, position), got "
                f"{type(batch).__name__}"
            )
        if end != last + batch.num_rows:
            raise ContractError(
                f"source {who}: resumed at {start}, a batch of {batch.num_rows} rows after "
                f"position {last} ends at {end}, not {last + batch.num_rows}; the position "
                "must count the rows consumed from the start"
            )
        rows += batch.to_pylist()
        ends.append(end)
        last = end
    return rows, ends


def check_resume(make: SourceFactory) -> None:
    """A fresh source resumed at position ``p`` yields exactly the rows after ``p`` (at 0,
    at every batch end, inside batches and at the end), with positions that count them."""
    who = name_of(make())
    everything, ends = _read_all(make(), 0, who)
    n = len(everything)
    if not ends or ends[-1] != n:
        raise ContractError(f"source {who}: read from 0, the last position is not {n} rows")
    inside = [e - 1 for e in ends if e > 1] + [n // 2, 1]
    for p in sorted({0, n, *ends, *inside}):
        tail, _ = _read_all(make(), p, who)
        diff = first_difference(tail, everything[p:])
        if diff:
            raise ContractError(
                f"source {who}: resumed at position {p}, it does not yield the rows after "
                f"{p} (row{diff}). batches(start) must skip exactly `start` rows, the same "
                "ones on every read (a restart replays from a committed position)"
            )


def _delivered(rows: pa.Table, first_offset: int) -> pa.Table:
    """``rows`` as ``on_batch`` gets them from a topic: with their offsets (the runtime
    unpacks what travelled packed before the subscriber's own ``on_batch`` runs)."""
    if OFFSET not in rows.column_names:
        offsets = pa.array(range(first_offset, first_offset + rows.num_rows), pa.int64())
        rows = rows.append_column(OFFSET, offsets)
    return rows


def check_subscriber_api(make: SinkFactory, rows: pa.Table) -> None:
    """``on_batch`` and ``flush`` exist (``rt.subscribe`` needs both); ``on_batch`` takes an
    empty batch and a batch as a topic delivers them; ``flush`` runs after each."""
    sub = make()
    who = f"subscriber {name_of(sub)}"
    for needed in ("on_batch", "flush"):
        if not callable(getattr(type(sub), needed, None)):
            raise ContractError(f"{who}: define {needed}() (Runtime.subscribe calls it)")
    for label, batch in (("an empty batch", rows.slice(0, 0)), ("a batch", rows)):
        for step in ("on_batch", "flush"):
            try:
                if step == "on_batch":
                    sub.on_batch(_delivered(batch, 0))
                else:
                    sub.flush()
            except Exception as err:
                raise ContractError(
                    f"{who}: {step}() after {label} with columns {batch.column_names} raised "
                    f"{type(err).__name__}: {err}"
                ) from err


def default_reader(sink: Any) -> Callable[[], pa.Table] | None:
    """How to read a sink's output: a table sink's LanceDB table."""
    store, table = getattr(sink, "store", None), getattr(sink, "table", None)
    if store is None or not isinstance(table, str):
        return None
    return lambda: store.read(table) if store.exists(table) else pa.table({})


def check_idempotent(
    make: SinkFactory, rows: pa.Table, read: Callable[[Any], pa.Table] | None = None
) -> None:
    """A keyed sink given the same batch twice (a redelivery after a restart) holds what
    one delivery left."""
    sink = make()
    who = f"sink {name_of(sink)}"
    key = getattr(sink, "key", None)
    reader = (lambda: read(sink)) if read is not None else default_reader(sink)
    if reader is None:
        raise ContractError(f"{who}: give read= to tell how to read what the sink wrote")
    sink.on_batch(_delivered(rows, 0))
    sink.flush()
    once = rows_of(unpack(reader()))
    sink.on_batch(_delivered(rows, 0))  # the same offsets: the topic redelivers
    sink.flush()
    twice = rows_of(unpack(reader()))
    diff = first_difference(twice, once)
    if diff:
        raise ContractError(
            f"{who}: a redelivered batch is not idempotent with key {key!r} (row{diff}); "
            "upsert by a key that identifies a row (e.g. event_id), not append"
        )
