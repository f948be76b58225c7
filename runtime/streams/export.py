"""Analytics exports (``--export DIR``): Hive-partitioned Parquet by date, for DuckDB,
Spark and pandas, beside the data folder that the runtime itself reads.

``DIR/events/kind=<kind>/date=YYYY-MM-DD/*.parquet``
    the input events as accepted (validated, deduplicated, after the app's steps),
    written by the shards of the kind the source feeds (``kind``: e.g. ``customers``)
    as they apply them.
``DIR/<topic>/date=YYYY-MM-DD/*.parquet``
    every output topic of the app (``alerts``, ``predictions``, ``drift``, ...),
    written by a subscriber of the topic.
``DIR/profiles/<kind>/date=YYYY-MM-DD/*.parquet``
    at every checkpoint, the profiles that changed in it, as the checkpoint stored them,
    with a ``checkpoint`` column (its epoch); ``date`` is the day the checkpoint
    committed. A kind's state as of checkpoint ``E`` is each key's row with the greatest
    ``checkpoint <= E``.

``date`` comes from the rows' ``ts`` column, else their first timestamp column, else
the day they were written. Files are only ever added (unique names), never rewritten.
Delivery is at-least-once: after a crash, events and topic rows after the last
checkpoint are applied again, and written again (dedupe by ``event_id``).

>>> import tempfile, datetime as dt, duckdb, pyarrow as pa
>>> root = tempfile.mkdtemp()
>>> tap = EventTap(root, "orders")
>>> tap.add(pa.table({"event_id": [1, 2], "ts": [dt.datetime(2026, 1, 2, 3)] * 2,
...                   "_key_hash": [7, 8]}))
>>> tap.flush()
2
>>> duckdb.sql(f"SELECT count(*), any_value(kind), any_value(date)::VARCHAR FROM "
...            f"read_parquet('{root}/events/**/*.parquet', hive_partitioning=true)").fetchall()
[(2, 'orders', '2026-01-02')]
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pyarrow as pa

EVENTS = "events"
PROFILES = "profiles"
#: events kept in a shard before it writes a file (and at every checkpoint)
TAP_ROWS = 50_000
EXPORT_HELP = (
    "Also write Hive-partitioned Parquet by date to this folder, for DuckDB, Spark and "
    "pandas: events/ (the input as accepted), one folder per output topic (alerts/, ...), "
    "profiles/<kind>/ (what changed at each checkpoint, with its epoch)."
)


class EventTap:
    """What a shard of an input kind applies, written to ``root/events`` (see module)."""

    def __init__(self, root: str, kind: str, flush_rows: int = TAP_ROWS) -> None:
        from runtime.streams.sinks import ParquetSink  # here: the CLI imports this module

        self.kind = kind
        self.sink = ParquetSink(
            str(Path(root) / EVENTS),
            ("kind", "date"),
            time_column=None,
            flush_rows=flush_rows,
            dictionary=False,  # written in the shards' hot path: a third of the cost
        )

    def add(self, events: pa.Table) -> None:
        # routing columns and tags are the runtime's, not the events'
        drop = [c for c in events.column_names if c.startswith("_") or c == "kind"]
        rows = events.drop_columns(drop).replace_schema_metadata(None)
        self.sink.on_batch(rows.append_column("kind", pa.array([self.kind] * rows.num_rows)))

    def flush(self) -> int:
        return self.sink.flush()


def output_topics(app: Any) -> list[str]:
    """The topics an app's kinds publish and do not forward to a further kind."""
    topics: list[str] = []
    for i, (cls, config) in enumerate(app.kinds()):
        # kind i forwards stage i's topics (a later kind may publish one of the same name)
        forwarded = app.stages[i].topics if i < len(app.stages) else ()
        for t in cls(config).active_topics():
            if t not in forwarded and t not in topics:
                topics.append(t)
    return topics


def export_outputs(rt: Any, app: Any, root: str) -> None:
    """Subscribe a Parquet writer to each output topic of ``app`` (once per runtime)."""
    from runtime.coordinator.runtime import SINK_LINGER_S
    from runtime.streams.sinks import ParquetSink

    for topic in output_topics(app):
        name = f"{topic}->export"
        if not rt.has_subscriber(name):
            path = str(Path(root) / topic)
            rt.subscribe(
                topic, ParquetSink, path, ("date",), None, name=name, linger_s=SINK_LINGER_S
            )


def export_profiles(
    root: str, states: list[tuple[str, Any, pa.Table]], epoch: int, when: float
) -> None:
    """Write the profiles a checkpoint committed (``(kind, key, rows)``) with its epoch."""
    from runtime.streams.sinks import ParquetSink

    day = dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%d")
    for kind, _, table in states:
        rows = table.drop_columns([c for c in table.column_names if c.startswith("_")])
        rows = rows.append_column("checkpoint", pa.array([epoch] * rows.num_rows, pa.int64()))
        rows = rows.append_column("date", pa.array([day] * rows.num_rows, pa.string()))
        sink = ParquetSink(str(Path(root) / PROFILES / kind), flush_rows=max(1, rows.num_rows))
        sink.on_batch(rows)
        sink.flush()
