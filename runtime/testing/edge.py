"""Kinds for store-and-forward tests: a site's tally that forwards every event to the core.

>>> import tempfile
>>> from runtime import Runtime
>>> from runtime.testing import MemorySource
>>> from runtime.ingest.sites import run_sites
>>> rows = [{"event_id": i, "key": f"k{i % 3}", "site": "eu-1", "value": 1.0} for i in range(9)]
>>> with Runtime(data_dir=tempfile.mkdtemp(), mode="local", shards=1) as rt:
...     _ = run_sites(rt, relay_app(("eu-1",)), {"eu-1": MemorySource(rows, 4, id="eu-1")})
...     rt.entity_state("relay_tallies", "k0")["n"]
3
"""

from __future__ import annotations

from typing import Any

from runtime.entities.kind import Batch
from runtime.testing.fixtures import SiteTally, Tally


class SiteRelay(SiteTally):
    """Counts per key at its site and forwards each event (key, value) on ``relay``."""

    name = "site_relays"
    topics = ("relay",)

    def apply(self, batch: Batch) -> None:
        super().apply(batch)
        batch.emit("relay", batch.events.select(["event_id", "key", "value"]))


class RelayTally(Tally):
    """The core's tally of what the sites relayed."""

    name = "relay_tallies"


def relay_app(sites: tuple[str, ...]) -> Any:
    """``readings`` (event_id, key, site, value) counted at each site and at the core."""
    from runtime.dataflow.app import App, Stage
    from runtime.streams.schema import Column, EventSchema

    schema = EventSchema(
        "readings",
        [
            Column("event_id", "int64"),
            Column("key", "string"),
            Column("site", "string"),
            Column("value", "float64"),
        ],
    )
    return App("relay", schema, SiteRelay, sites=sites, stages=(Stage("relay", RelayTally),))
