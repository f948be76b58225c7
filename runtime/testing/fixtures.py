"""Helpers for testing apps and kinds: an in-memory source and sink, a fake clock.

>>> import pyarrow as pa
>>> src = MemorySource([{"user_id": "a"}, {"user_id": "b"}, {"user_id": "a"}], batch_size=2)
>>> [(b.num_rows, end) for b, end in src.batches()]
[(2, 2), (1, 3)]
>>> sink = ListSink()
>>> sink.on_batch(pa.table({"x": [1, 2]})); sink.flush()
2
>>> clock = FakeClock(); clock.advance(5); clock()
5.0
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from runtime.cluster.wire import unpack
from runtime.entities.kind import Batch, EntityKind
from runtime.topics.topic import OFFSET, PARTITION


class MemorySource:
    """Rows (dicts or a table) served in batches; resumable like any source."""

    def __init__(
        self, rows: list[dict[str, Any]] | pa.Table, batch_size: int = 1_000, id: str = "memory"
    ) -> None:
        self.table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows)
        self.batch_size = batch_size
        self.id = id

    def batches(self, start: int = 0) -> Iterator[tuple[pa.Table, int]]:
        for lo in range(start, self.table.num_rows, self.batch_size):
            part = self.table.slice(lo, self.batch_size)
            yield part, lo + part.num_rows


class ListSink:
    """A topic subscriber that keeps what it receives (``rt.subscribe(topic, ListSink)``)."""

    def __init__(self) -> None:
        self.batches: list[pa.Table] = []

    def on_batch(self, rows: pa.Table) -> None:
        self.batches.append(unpack(rows))  # topics push batches packed (runtime.cluster.wire)

    def flush(self) -> int:
        return sum(b.num_rows for b in self.batches)

    def rows(self) -> list[dict[str, Any]]:
        """Everything received, in order, without the topic offsets."""
        return [
            {k: v for k, v in r.items() if k not in (OFFSET, PARTITION)}
            for b in self.batches
            for r in b.to_pylist()
        ]


class FakeClock:
    """A monotonic clock that moves only when told to (pass it as ``clock=``)."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Tally(EntityKind):
    """Counts events per ``key`` and sums their ``value``: the smallest real kind, for
    tests of routing, placement, passivation and recovery (exact counts are easy to check)."""

    name = "tallies"
    key = "key"
    state = {"n": "int64", "total": "float64"}

    def apply(self, batch: Batch) -> None:
        np.add.at(batch.state.cols["n"], batch.slots, 1)
        if "value" in batch.events.column_names:
            values = batch.events.column("value").to_numpy(zero_copy_only=False)
            np.add.at(batch.state.cols["total"], batch.slots, values)


class SiteTally(Tally):
    """A :class:`Tally` partitioned by the ``site`` column (one set of shards per site)."""

    name = "site_tallies"
    site_key = "site"


class EchoTally(Tally):
    """A :class:`Tally` that also publishes every event to the ``echo`` topic."""

    name = "echo_tallies"
    topics = ("echo",)

    def apply(self, batch: Batch) -> None:
        super().apply(batch)
        batch.emit("echo", batch.events.drop_columns(["_key_hash"]))


class SlowSink(ListSink):
    """A subscriber that takes ``delay`` seconds per batch: for backpressure tests."""

    def __init__(self, delay: float = 0.05) -> None:
        super().__init__()
        self.delay = delay

    def on_batch(self, rows: pa.Table) -> None:
        time.sleep(self.delay)
        super().on_batch(rows)


def _tally_app() -> Any:
    from runtime.dataflow.app import App
    from runtime.streams.schema import Column, EventSchema

    schema = EventSchema(
        "tally_events",
        [
            Column("event_id", "int64"),
            Column("key", "string"),
            Column("value", "float64", required=False),
        ],
    )
    return App("tallies", schema, Tally)


#: an app over :class:`Tally` (``edgecore replay FILE --app runtime.testing:tally_app``)
tally_app = _tally_app()
