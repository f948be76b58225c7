"""The core's view of each device: what its edge site forwarded, applied once.

An edge kind keeps the raw readings at its site; what the core needs (summaries, alerts,
health rows) it *forwards* to a core kind (``Stage(topics, CoreView subclass)``). On a
cluster with edge nodes the rows go through the edge's durable store-and-forward log and
the site's receiver at the core (:mod:`runtime.edge`): the edge keeps processing and
buffering while the link or the core is down, sends in order when it is back, and each
row is applied at the core exactly once. The core kind counts, per device and per topic,
what arrived and when it was last heard of, and publishes the rows on the core's topics
of the same names, which the app persists to its tables.

>>> import tempfile
>>> from runtime import Runtime, run
>>> from runtime.state.sql import query
>>> from actors.devices.app import device_app
>>> from actors.devices.telemetry import TelemetryConfig, TelemetrySource
>>> src = TelemetrySource(TelemetryConfig(n_devices=20), n_events=4_000, batch_size=700)
>>> data = tempfile.mkdtemp()
>>> with Runtime(data_dir=data, mode="local", shards=1) as rt:
...     stats = run(rt, device_app(), src)
...     seen = rt.entity_state("core_devices", "d-eu-1-00003")
>>> stored = query(data, "SELECT count(*) AS n FROM device_health").column("n")[0].as_py()
>>> seen["device_summaries"] > 0, seen["site"], stored == stats.app["summary_rows"]
(True, 'eu-1', True)
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from actors.grouped import by_entity
from runtime import Batch, EntityKind


def view_state(topics: tuple[str, ...]) -> dict[str, object]:
    """The state of a core view over ``topics``: the device's site, and per topic the rows
    received and the event time (ms) of the newest."""
    state: dict[str, object] = {"site": "string"}
    for t in topics:
        state[t] = "int64"
        state[f"{t}_last_ms"] = ("int64", -1)
    return state


class CoreView(EntityKind):
    """Base of a core kind fed by an edge kind's forwarded topics (keyed by device)."""

    key = "device_id"
    #: the column of each topic's rows with their event time (a timestamp), if any
    time_columns: ClassVar[dict[str, str]] = {}

    def apply(self, batch: Batch) -> None:
        topic = batch.topic
        if topic is None or topic not in self.topics:
            return  # rows from a source: a core view is fed by its edge kind only
        c, ev = batch.state.cols, batch.events
        gstart = batch.starts
        _, gsize, _, _, gslot = by_entity(batch)
        last = pa.array(batch.order[gstart + gsize - 1])  # each device's newest row
        c[topic][gslot] += gsize
        if "site" in ev.column_names:
            c["site"][gslot] = ev.column("site").take(last).to_numpy(zero_copy_only=False)
        col = self.time_columns.get(topic)
        if col is not None and col in ev.column_names:
            ms = pc.cast(ev.column(col), pa.int64()).fill_null(-1)
            newest = np.maximum.reduceat(ms.to_numpy()[batch.order], gstart)
            c[f"{topic}_last_ms"][gslot] = np.maximum(c[f"{topic}_last_ms"][gslot], newest)
        drop = [n for n in ev.column_names if n.startswith("_")]
        batch.emit(topic, ev.drop_columns(drop).replace_schema_metadata(None))
        batch.count(f"core_{topic}_rows", ev.num_rows)
