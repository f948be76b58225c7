"""Live ingest: a gate with its HTTP and MQTT listeners in an actor where traffic arrives.

:class:`LiveIngest` is a plain class the runtime hosts as a Ray actor, one per site,
placed by the policy like any ingest stage (at the edge of its site; on the embedded
single node, there). It owns a :class:`~runtime.ingest.gate.Gate`, its write-ahead log in the
data folder (``_wal/<app>-<site>/``) and the listeners, so HTTP parsing and validation
never run in the driver. :class:`LiveFeeder` is the driver's side: it starts the
actors, ticks them for counts, and takes them through every checkpoint
(:mod:`runtime.dataflow.driver`).

>>> import tempfile, threading, pyarrow as pa
>>> from runtime import Runtime
>>> from runtime.dataflow.driver import drive
>>> from runtime.dataflow.app import App
>>> from runtime.streams.schema import Column, EventSchema
>>> from runtime.testing import Tally
>>> app = App("t", EventSchema("e", [Column("event_id", "int64"), Column("key", "string")]), Tally)
>>> stop = threading.Event()
>>> feeder = LiveFeeder(on_open=lambda gates: (gates[0].submit_rows([{"event_id": 1, "key": "a"}]), stop.set()))
>>> with Runtime(data_dir=tempfile.mkdtemp(), mode="local", shards=1) as rt:
...     stats = drive(rt, app, [feeder], stop=stop)
>>> stats.accepted
1
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from runtime.cluster import names
from runtime.cluster.clients import ActorClient
from runtime.cluster.handles import resolve
from runtime.cluster.heap import trim_heap
from runtime.coordinator.runtime import Runtime
from runtime.dataflow.app import App, new_counts
from runtime.dataflow.driver import Cut, Tick
from runtime.errors import ActorFailedError, EdgecoreError
from runtime.ingest.gate import Gate
from runtime.ingest.http import HttpListener, HttpOptions
from runtime.ingest.mqtt import MqttListener, MqttOptions
from runtime.streams.schema import DEAD_LETTERS
from runtime.streams.sources import rows_to_table

if TYPE_CHECKING:
    from runtime.entities.clients import ShardClient
    from runtime.topics.clients import TopicClient

WAL_FOLDER = "_wal"


class LiveIngest:
    """One site's gate and listeners (plain class; a threaded Ray actor in the runtime)."""

    def __init__(
        self,
        app: App,
        site: str,
        data_dir: str,
        shards: list[ShardClient],
        applied: np.ndarray,
        committed: int,
        *,
        http: HttpOptions | None = None,
        mqtt: MqttOptions | None = None,
        durable: bool = True,
        dead_topic: TopicClient | None = None,
        watermarks: bytes | None = None,
        max_inflight: int = 2,
        dedup_capacity: int = 50_000_000,
    ) -> None:
        # the event loop, the dispatcher and Ray's threads share one GIL here: a waiting
        # thread gets it after 1 ms rather than Python's default 5
        sys.setswitchinterval(0.001)
        name = f"{app.name}@{site}"
        wal = str(Path(data_dir) / WAL_FOLDER / f"{app.name}-{site}") if durable else None
        self.gate = Gate(
            app,
            name,
            shards,
            wal_dir=wal,
            site=site if app.kind.site_key else None,
            applied=applied,
            dedup_capacity=dedup_capacity,
            max_inflight=max_inflight,
            dead_topic=dead_topic,
            watermarks=watermarks,
        )
        self.replayed = self.gate.recover(committed)  # before anyone is answered
        self.gate.start()
        self.http = HttpListener(self.gate, http) if http is not None else None
        self.mqtt = MqttListener(self.gate, mqtt) if mqtt is not None else None

    def open(self) -> dict[str, Any]:
        """Start listening; returns where (the HTTP port, when port 0 was asked for)."""
        out: dict[str, Any] = {"replayed_records": self.replayed}
        if self.http is not None:
            out["http_port"] = self.http.start()
        if self.mqtt is not None:
            self.mqtt.start()
        return out

    def mqtt_connected(self, timeout: float) -> bool:
        return self.mqtt.wait_connected(timeout) if self.mqtt is not None else True

    def submit_rows(self, rows: list[dict[str, Any]]) -> dict[str, int]:
        """Rows from Python, through the same gate as a request (for tests and tools)."""
        return self.gate.submit(rows_to_table(rows), "python").result(timeout=60)

    def tick(self) -> dict[str, Any]:
        # the driver ticks every 50 ms: at most once a second, what the requests parsed,
        # logged and sent since were freed into goes back (runtime.cluster.heap)
        trim_heap()
        return self.gate.tick()

    def cut(self, barrier: bool = False) -> dict[str, Any]:
        return self.gate.cut(barrier)

    def resume(self) -> None:
        self.gate.resume()

    def committed(self, position: int) -> None:
        self.gate.committed(position)

    def stop_intake(self) -> None:
        """New requests get 503, MQTT disconnects cleanly; returns once all taken are logged."""
        if self.http is not None:
            self.http.stop_intake()
        if self.mqtt is not None:
            self.mqtt.stop_intake()
        self.gate.stop_intake()

    def close(self) -> None:
        if self.mqtt is not None:
            self.mqtt.close()
        if self.http is not None:
            self.http.close()
        self.gate.close()

    def ping(self) -> str:
        return self.gate.name


class LiveIngestClient(ActorClient):
    """Calls on a :class:`LiveIngest` actor."""

    __slots__ = ()

    def open(self) -> Any:
        return self._call(LiveIngest.open)

    def mqtt_connected(self, timeout: float) -> Any:
        return self._call(LiveIngest.mqtt_connected, timeout)

    def submit_rows(self, rows: list[dict[str, Any]]) -> Any:
        return self._call(LiveIngest.submit_rows, rows)

    def tick(self) -> Any:
        return self._call(LiveIngest.tick)

    def cut(self, barrier: bool = False) -> Any:
        return self._call(LiveIngest.cut, barrier)

    def resume(self) -> Any:
        return self._call(LiveIngest.resume)

    def committed(self, position: int) -> Any:
        return self._call(LiveIngest.committed, position)

    def stop_intake(self) -> Any:
        return self._call(LiveIngest.stop_intake)

    def close(self) -> Any:
        return self._call(LiveIngest.close)

    def ping(self) -> Any:
        return self._call(LiveIngest.ping)


class LiveFeeder:
    """The driver's side of live ingest: one :class:`LiveIngest` actor per site."""

    live = True

    def __init__(
        self,
        http: HttpOptions | None = None,
        mqtt: MqttOptions | None = None,
        sites: list[str] | None = None,
        durable: bool = True,
        on_open: Callable[[list[LiveIngestClient]], None] | None = None,
    ) -> None:
        if http is not None:
            http.check()
        self.sites = sites or ["local"]
        if mqtt is not None:
            mqtt.check(len(self.sites))
        self.http, self.mqtt, self.durable = http, mqtt, durable
        self.on_open = on_open
        self.id = ",".join(f"live:{s}" for s in self.sites)
        self.gates: dict[str, LiveIngestClient] = {}
        self.opened: dict[str, dict[str, Any]] = {}
        self.rt: Runtime | None = None
        self._positions: dict[str, int] = {}

    def open(self, rt: Runtime, app: App) -> None:
        self.rt, self.app = rt, app
        scope = app.kind.name
        by_site = rt.shards_by_site(scope) if app.kind.site_key else {}
        dead_topic = rt.topic(DEAD_LETTERS)
        applied = rt.checkpoints.applied_ids(scope)
        self.gates = {}
        for site in self.sites:
            gate_id = names.gate_id(app.name, site)
            committed = rt.checkpoints.position(gate_id)
            self._positions[gate_id] = committed
            shards = by_site[site] if app.kind.site_key else rt.shards_of(scope)
            self.gates[site] = LiveIngestClient(
                rt.start_stage(
                    LiveIngest,
                    app,
                    site,
                    str(rt.data_dir),
                    shards,
                    applied,
                    committed,
                    http=self.http,
                    mqtt=self.mqtt.for_site(site) if self.mqtt is not None else None,
                    durable=self.durable,
                    dead_topic=dead_topic,
                    watermarks=rt.checkpoints.watermark_snapshot(f"{scope}@{app.name}@{site}"),
                    max_inflight=rt.config.max_inflight,
                    dedup_capacity=rt.config.dedup_capacity,
                    max_concurrency=8,
                    name=names.ingest_stage(app.name, site),
                    stage="ingest",
                    site=site,
                )
            )
        opened = self._all(LiveIngestClient.open)
        self.opened = dict(zip(self.sites, opened, strict=True))
        if self.on_open is not None:
            self.on_open(list(self.gates.values()))

    def _all(self, method: Callable[..., Any], *args: Any) -> list[Any]:
        """``method`` of :class:`LiveIngestClient` on every site's actor, waited for."""
        try:
            return resolve([method(g, *args) for g in self.gates.values()])
        except ActorFailedError:
            raise
        except EdgecoreError as err:  # a gate that failed is restarted with everything else
            raise ActorFailedError(f"live ingest of {self.app.name!r}: {err}") from err

    def step(self, wait: float) -> Tick:
        if wait:
            time.sleep(wait)
        tick = Tick(counts={**new_counts(), "replayed": 0})
        for site, got in zip(self.gates, self._all(LiveIngestClient.tick), strict=True):
            if got["failed"]:
                raise ActorFailedError(
                    f"live ingest of {self.app.name!r} at {site} failed: {got['failed']}"
                )
            for k, v in got["counts"].items():
                tick.counts[k] = tick.counts.get(k, 0) + v
            tick.shard_stats += got["shard_stats"]
        return tick

    def cut(self) -> Cut:
        cut = Cut()
        # a barrier behind the last batch (no pause) is exact where each gate is its
        # shards' only input: one site, or per-site shards
        barrier = bool(self.app.kind.site_key) or len(self.gates) == 1
        for got in self._all(LiveIngestClient.cut, barrier):
            cut.drains.update(got["drains"])
            cut.positions.update(got["positions"])
            cut.ids += got["ids"]
            cut.dead += got["dead"]
            cut.watermarks.update(got["watermarks"])
            cut.shard_stats += got["shard_stats"]
        cut.dead_published = True
        self._positions.update(cut.positions)
        return cut

    def resume(self) -> None:
        self._all(LiveIngestClient.resume)

    def committed(self, positions: dict[str, int]) -> None:
        for site, gate in self.gates.items():
            gid = names.gate_id(self.app.name, site)
            if gid in positions:
                resolve([gate.committed(positions[gid])])

    def stop_intake(self) -> None:
        self._all(LiveIngestClient.stop_intake)

    def close(self) -> None:
        if self.rt is None:
            return
        for gate in self.gates.values():
            # already gone with its node, or dying with the runtime: nothing to close
            with contextlib.suppress(Exception):
                resolve([gate.close()], timeout=15)
        for site in list(self.gates):
            self.rt.stop_stage(names.ingest_stage(self.app.name, site))
        self.gates = {}
