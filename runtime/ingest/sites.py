"""Ingest at the edge: a stage actor per site reads that site's source, validates,
deduplicates and routes to the site's shards, so raw events never leave the site.

The coordinator only steps the stages and takes checkpoints: each step returns counts,
the source position reached, the dead letters and the ids it applied (small), after
the site's shards have applied everything it sent.

>>> import tempfile, pyarrow as pa
>>> from runtime import Runtime
>>> from runtime.dataflow.app import App
>>> from runtime.streams.schema import Column, EventSchema
>>> from runtime.testing import MemorySource, SiteTally
>>> schema = EventSchema("r", [Column("event_id", "int64"), Column("key", "string"), Column("site", "string")])
>>> app = App("r", schema, SiteTally, sites=("eu-1",))
>>> rows = [{"event_id": i, "key": f"k{i % 3}", "site": "eu-1"} for i in range(10)]
>>> with Runtime(data_dir=tempfile.mkdtemp(), mode="local", shards=1) as rt:
...     stats = run_sites(rt, app, {"eu-1": MemorySource(rows, batch_size=4, id="eu-1")})
>>> stats.accepted, stats.input
(10, 10)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from runtime.cluster import names
from runtime.cluster.clients import ActorClient
from runtime.cluster.handles import resolve
from runtime.coordinator.runtime import Runtime
from runtime.dataflow.app import App, RunStats, new_counts
from runtime.dataflow.driver import Cut, Tick, drive
from runtime.dataflow.screen import check_site, screen
from runtime.entities.router import Router
from runtime.eventtime.watermarks import Watermarks
from runtime.state.index import SeenSet
from runtime.streams.schema import DEAD_LETTER_SCHEMA
from runtime.streams.sources import Source

if TYPE_CHECKING:
    from runtime.entities.clients import ShardClient


class IngestStage:
    """Plain class; the runtime hosts one per site as a Ray actor at that site's edge."""

    def __init__(
        self,
        app: App,
        site: str,
        source: Source,
        start: int,
        applied: np.ndarray,
        shards: list[ShardClient],
        per_site: int,
        max_inflight: int = 2,
        watermarks: bytes | None = None,
    ) -> None:
        self.app, self.site, self.source = app, site, source
        self.position = start
        self.seen = SeenSet()
        self.seen.add(np.unique(applied))
        self.router = Router(app.kind, shards, per_site, [site], max_inflight)
        self._batches: Any = None
        # the site's event time, tracked here at its edge and sent on with every batch
        self.marks: Watermarks | None = None
        if watermarks is not None:
            self.marks = Watermarks.restore(watermarks)
        elif app.event_time is not None:
            self.marks = Watermarks(app.event_time.out_of_orderness_ms, app.event_time.idle_ms)

    def step(self, max_rows: int) -> dict[str, Any]:
        """Take up to ``max_rows`` from the source through validation, dedup and the shards."""
        if self._batches is None:
            self._batches = iter(self.source.batches(self.position))
        counts = new_counts()
        dead, ids, done = [], [], False

        def dedup(event_ids: np.ndarray) -> np.ndarray:
            new = self.seen.add_new(event_ids)
            ids.append(np.asarray(event_ids)[new])  # before the steps, which may drop the id
            return new

        while counts["input"] < max_rows:
            try:
                batch, end = next(self._batches)
            except StopIteration:
                done = True
                break
            accepted, bad, got = screen(
                self.app,
                batch,
                self.source.id,
                self.position,
                dedup,
                lambda ok, dead, p=self.position: check_site(
                    self.app, [self.site], ok, dead, self.source.id, p, at_edge=self.site
                ),
            )
            for key, value in got.items():
                counts[key] += value
            dead.append(bad)
            watermark = None
            if self.marks is not None and self.app.event_time is not None:
                et = self.app.event_time
                if accepted.num_rows:
                    self.marks.observe_table(accepted, et.column, et.partition, self.site)
                watermark = self.marks.current()
            self.router.send(accepted, watermark)
            self.position = end
        shard_stats = self.router.drain()  # applied before the coordinator may commit
        return {
            "counts": counts,
            "position": self.position,
            "done": done,
            "dead": pa.concat_tables(dead) if dead else DEAD_LETTER_SCHEMA.empty_table(),
            "ids": np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64),
            "shard_stats": shard_stats,
            "watermarks": self.marks.snapshot() if self.marks is not None else None,
        }

    def ping(self) -> str:
        return self.site


class IngestStageClient(ActorClient):
    """Calls on an :class:`IngestStage` actor."""

    __slots__ = ()

    def step(self, max_rows: int) -> Any:
        return self._call(IngestStage.step, max_rows)

    def ping(self) -> Any:
        return self._call(IngestStage.ping)


class SiteFeeder:
    """Each site's source read by an :class:`IngestStage` at that site's edge; the driver
    steps the stages together and commits all their positions in one checkpoint."""

    def __init__(self, sources: dict[str, Source], step_rows: int = 50_000) -> None:
        self.sources = sources
        self.step_rows = step_rows
        self.id = ",".join(s.id for s in sources.values())
        self.positions: dict[str, int] = {}
        self._names: list[str] = []
        self._active: dict[str, IngestStageClient] = {}
        self.rt: Runtime | None = None

    def open(self, rt: Runtime, app: App) -> None:
        self.rt, self.app = rt, app
        scope = app.kind.name
        shards_by_site = rt.shards_by_site(scope)
        self._active, self._names = {}, []
        for site, source in self.sources.items():
            start = rt.checkpoints.position(source.id)
            self.positions[source.id] = start
            name = names.ingest_stage(app.name, site)
            self._names.append(name)
            self._active[site] = IngestStageClient(
                rt.start_stage(
                    IngestStage,
                    app,
                    site,
                    source,
                    start,
                    rt.checkpoints.applied_ids(scope),
                    shards_by_site[site],
                    len(shards_by_site[site]),
                    rt.config.max_inflight,
                    rt.checkpoints.watermark_snapshot(f"{scope}@{site}"),
                    name=name,
                    stage="ingest",
                    site=site,
                )
            )

    def step(self, wait: float) -> Tick:
        assert self.rt is not None
        scope = self.app.kind.name
        tick = Tick()
        if not self._active:
            tick.done = True
            return tick
        results = resolve([h.step(self.step_rows) for h in self._active.values()])
        for site, res in zip(list(self._active), results, strict=True):
            for key, value in res["counts"].items():
                tick.counts[key] += value
            self.rt.dead_letter(res["dead"])
            self.rt.checkpoints.record_applied(scope, res["ids"])
            tick.shard_stats += res["shard_stats"]
            self.positions[self.sources[site].id] = res["position"]
            if res["watermarks"] is not None:  # committed with the next checkpoint
                self.rt.checkpoints.set_watermarks(f"{scope}@{site}", res["watermarks"])
            if res["done"]:
                del self._active[site]
        tick.done = not self._active
        return tick

    def cut(self) -> Cut:
        return Cut(positions=dict(self.positions))  # a stage's step returns once applied

    def resume(self) -> None:
        pass

    def committed(self, positions: dict[str, int]) -> None:
        pass

    def stop_intake(self) -> None:
        self._active = {}

    def close(self) -> None:
        if self.rt is not None:
            for name in self._names:
                self.rt.stop_stage(name)
        self._names, self._active = [], {}


def run_sites(
    rt: Runtime,
    app: App,
    sources: dict[str, Source],
    step_rows: int = 50_000,
    progress: Callable[[RunStats], None] | None = None,
    end_of_stream: bool = True,
) -> RunStats:
    """Run each site's source through an ingest stage at that site's edge, until all end.

    Checkpoints commit every site's position together; if any actor dies, the runtime
    restarts from the last commit and the stages resume from their committed positions.
    """
    return drive(
        rt, app, [SiteFeeder(sources, step_rows)], progress=progress, end_of_stream=end_of_stream
    )
