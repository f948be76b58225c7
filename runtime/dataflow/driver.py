"""The one driver: a single commit/restart loop for every way events come in.

A :class:`Feeder` brings events into a runtime from a position a checkpoint committed:
a file or generator read here (:class:`SourceFeeder`), the ingest stages at each site's
edge (:class:`runtime.ingest.sites.SiteFeeder`), or live HTTP/MQTT gates that acknowledge
what their write-ahead log holds (:class:`runtime.ingest.live.LiveFeeder`). :func:`drive`
steps them, takes checkpoints, and restarts from the last one when an actor dies.
``replay``, ``demo``, ``run``, ``serve`` and multi-site runs all go through it.

**Why nothing is lost or applied twice.** A checkpoint is one cut through the stream:

1. every feeder marks its place (:meth:`Feeder.cut`) and names its position (rows of a
   file, records of its log); it hands over the dead letters and applied event ids of
   what it sent. Either it stops dispatching until step 2 is done (all it sent before is
   applied, nothing after), or — a live gate that is its shards' only input — it sends
   each shard a drain right behind its last batch and goes on: Ray runs one caller's
   calls to an actor in order, so the drain sees exactly the batches before the cut;
2. the runtime drains the shards (their changed state, the kind snapshots, the offsets
   of the topic partitions they host), or takes the drains the feeders sent —
   :meth:`~runtime.coordinator.runtime.Runtime.prepare_checkpoint` — and paused feeders go on;
3. the state is written to LanceDB and one ``_checkpoints`` row commits the table
   versions together with every feeder's position and the applied ids;
4. feeders learn what was committed (:meth:`Feeder.committed`): a log drops what the
   commit covers, MQTT acknowledgements that waited for it go out.

After a crash the runtime restores the committed versions and each feeder resumes at its
committed position: a source re-reads its tail, a gate replays its log's tail. Events
before the cut are in the state and their ids in ``_seen``; events after it are not in
the state, and they are read again exactly once because dedup by event id forgets no
committed id. A live gate logs (fsync) before it acknowledges and dispatches only what
it logged, so everything acknowledged is either before the cut or in the log's tail.

>>> import tempfile
>>> from runtime import Runtime
>>> from runtime.dataflow.app import App
>>> from runtime.streams.schema import Column, EventSchema
>>> from runtime.testing import MemorySource, Tally
>>> app = App("t", EventSchema("e", [Column("event_id", "int64"), Column("key", "string")]), Tally)
>>> rows = [{"event_id": i, "key": f"k{i % 3}"} for i in range(10)]
>>> with Runtime(data_dir=tempfile.mkdtemp(), mode="local", shards=2) as rt:
...     stats = drive(rt, app, [SourceFeeder(MemorySource(rows, batch_size=4))])
>>> stats.accepted, stats.checkpoints
(10, 1)
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from runtime.cluster.heap import trim_heap
from runtime.coordinator.routing import sum_stats
from runtime.coordinator.runtime import Runtime
from runtime.dataflow.app import App, RunStats, new_counts, setup
from runtime.dataflow.screen import ingest
from runtime.entities.router import END_OF_TIME
from runtime.errors import ActorFailedError
from runtime.observe.run import RunMetrics
from runtime.streams.sources import Source


@dataclass
class Tick:
    """What a feeder did in one step: counts of the rows it took in, stats of shard calls
    that finished, and whether its input ended."""

    counts: dict[str, int] = field(default_factory=new_counts)
    shard_stats: list[dict[str, float]] = field(default_factory=list)
    done: bool = False


@dataclass
class Cut:
    """A feeder's side of a checkpoint: its positions, and what it hands over with them."""

    positions: dict[str, int] = field(default_factory=dict)
    dead: list[pa.Table] = field(default_factory=list)
    ids: list[np.ndarray] = field(default_factory=list)
    #: event-time watermarks tracked by the feeder: scope -> snapshot
    watermarks: dict[str, bytes] = field(default_factory=dict)
    shard_stats: list[dict[str, float]] = field(default_factory=list)
    #: the feeder put its dead letters on the ``dead_letters`` topic itself, as they came
    dead_published: bool = False
    #: shard name -> a drain the feeder sent behind its last batch (the shard's state at
    #: the cut); the runtime drains the others itself
    drains: dict[str, Any] = field(default_factory=dict)


class Feeder(Protocol):
    id: str

    def open(self, rt: Runtime, app: App) -> None:
        """Start at the positions ``rt``'s last checkpoint committed."""
        ...

    def step(self, wait: float) -> Tick:
        """Bring in what there is (waiting at most ``wait`` seconds for it)."""
        ...

    def cut(self) -> Cut:
        """Stop dispatching; everything sent before is applied when this returns."""
        ...

    def resume(self) -> None: ...

    def committed(self, positions: dict[str, int]) -> None:
        """A checkpoint with these positions is durable."""
        ...

    def stop_intake(self) -> None:
        """Take nothing new (a stop was asked for); what was accepted is still sent."""
        ...

    def close(self) -> None: ...


class SourceFeeder:
    """A file or generator read in this process: validated, deduplicated and routed here."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.id = source.id
        self.position = 0
        self.start = 0
        self._batches: Any = None
        self._stopped = False

    def open(self, rt: Runtime, app: App) -> None:
        self.rt, self.app = rt, app
        self.start = self.position = rt.checkpoints.position(self.id)
        self._batches = iter(self.source.batches(self.position))
        self._stopped = False

    def step(self, wait: float) -> Tick:
        if self._stopped:
            return Tick(done=True)
        try:
            batch, end = next(self._batches)
        except StopIteration:
            return Tick(done=True)
        counts = ingest(self.rt, self.app, batch, self.id, self.position)
        self.position = end
        return Tick(counts=counts, shard_stats=self.rt.routing.poll())

    def cut(self) -> Cut:
        return Cut(positions={self.id: self.position})  # the runtime drains what it sent

    def resume(self) -> None:
        pass

    def committed(self, positions: dict[str, int]) -> None:
        pass

    def stop_intake(self) -> None:
        self._stopped = True

    def close(self) -> None:
        self._batches = None


@dataclass
class _Progress:
    """Counts of a run; a copy is kept at every checkpoint to restart from."""

    stats: RunStats
    counters: dict[str, float]

    def copy(self) -> _Progress:
        return _Progress(replace(self.stats), dict(self.counters))


def drive(
    rt: Runtime,
    app: App,
    feeders: list[Any],
    *,
    progress: Callable[[RunStats], None] | None = None,
    max_events: int | None = None,
    end_of_stream: bool = True,
    stop: threading.Event | None = None,
    metrics: RunMetrics | None = None,
) -> RunStats:
    """Step ``feeders`` through ``app`` until their input ends (or ``stop`` is set, or
    ``max_events`` were taken in), checkpointing by rows and seconds as configured.

    The run's figures go to ``metrics`` (default: a new RunMetrics): on the status board
    and ``serve --metrics``'s ``/metrics``, with the returned stats' event counts.

    With event time, the end of every bounded input moves the watermark to the end of
    time (``end_of_stream``), so every window fires. If a runtime actor dies, the runtime
    restarts from the last checkpoint with actors placed on the nodes alive now, and the
    feeders resume at their committed positions (see the module docstring).
    """
    setup(rt, app)
    rt.metrics = metrics or RunMetrics(app.name, fields=[c.name for c in app.schema.columns])
    t0 = time.perf_counter()
    resumed = [rt.checkpoints.position(f.id) for f in feeders]
    committed = _Progress(
        RunStats(source=",".join(f.id for f in feeders), resumed_from=sum(resumed)), {}
    )
    restarts = 0
    while True:
        state = committed.copy()
        try:
            _loop(rt, app, feeders, state, committed, progress, max_events, t0, end_of_stream, stop)
            break
        except ActorFailedError as err:
            for f in feeders:
                f.close()
            restarts = restart_after_failure(rt, app, restarts, err)
            rt.metrics.restarted()
        finally:
            for f in feeders:
                f.close()
    stats, stats.restarts = state.stats, restarts
    finish(stats, state.counters, app, t0)
    report(rt, app, stats)
    if stats.accepted + stats.dead_lettered + stats.duplicates + stats.filtered != stats.input:
        raise RuntimeError(f"counts do not reconcile: {stats.as_dict()}")  # a bug, never input
    return stats


def _loop(
    rt: Runtime,
    app: App,
    feeders: list[Any],
    run_: _Progress,
    committed: _Progress,
    progress: Callable[[RunStats], None] | None,
    max_events: int | None,
    t0: float,
    end_of_stream: bool,
    stop: threading.Event | None,
) -> None:
    stats = run_.stats
    metrics = rt.metrics
    for f in feeders:
        f.open(rt, app)
    last_cp, rows_since_cp, rows_since_sync, last_report = time.perf_counter(), 0, 0, 0.0
    moved = False  # a feeder brought anything (events, labels) since the last checkpoint

    def absorb(counts: dict[str, int], shard_stats: list[dict[str, float]]) -> None:
        for key, value in counts.items():
            setattr(stats, key, getattr(stats, key) + value)
        if counts and metrics is not None:
            metrics.run(stats)
        if shard_stats and metrics is not None:
            metrics.latencies(shard_stats)
        if shard_stats:
            run_.counters = sum_stats([run_.counters, *shard_stats])

    def pause() -> tuple[list[Any], dict[str, int], dict[str, Any]]:
        """Cut every feeder (each stops dispatching, what it sent is applied, or it sent a
        barrier) and take over what they hand: the caller resumes them."""
        paused: list[Any] = []
        positions: dict[str, int] = {}
        drains: dict[str, Any] = {}
        try:
            for f in feeders:
                c = f.cut()
                paused.append(f)
                positions.update(c.positions)
                drains.update(c.drains)
                for dead in c.dead:
                    rt.dead_letter(dead, publish=not c.dead_published)
                for ids in c.ids:
                    rt.checkpoints.record_applied(app.kind.name, ids)
                for scope, snap in c.watermarks.items():
                    rt.checkpoints.set_watermarks(scope, snap)
                absorb({}, c.shard_stats)
        except BaseException:
            for f in paused:
                f.resume()
            raise
        return paused, positions, drains

    def checkpoint() -> None:
        began = time.perf_counter()
        paused, positions, drains = pause()
        try:
            absorb({}, rt.routing.drain())  # the snapshot below counts every applied batch
            prepared = rt.prepare_checkpoint(drains)
        finally:
            for f in paused:
                f.resume()
        rt.commit_checkpoint(prepared, positions)
        stats.checkpoints += 1
        snap = run_.copy()
        committed.stats, committed.counters = snap.stats, snap.counters
        for f in feeders:
            f.committed(positions)
        if metrics is not None:
            metrics.checkpointed(rt, prepared, time.perf_counter() - began)

    active = list(feeders)
    stopped = False
    while active:
        if stop is not None and stop.is_set():
            stopped = True
            break
        only_live = all(getattr(f, "live", False) for f in active)
        # what the last step's ticks, reports and routing freed, given back (at most once
        # a second): a trim only after each commit left 28-55 MB in holes in a serve's
        # driver, and its floor climbed 331 -> 367 MB over a 30-minute soak
        trim_heap()
        for f in list(active):
            tick = f.step(0.05 if only_live else 0.0)
            absorb(tick.counts, tick.shard_stats)
            rows = tick.counts.get("input", 0)
            rows_since_cp += rows
            moved = moved or bool(rows or tick.shard_stats)  # (labels bring stats only)
            rows_since_sync += rows
            if tick.done:
                active.remove(f)
        absorb({}, rt.routing.poll())
        if rows_since_sync >= rt.config.sync_rows:
            rt.deployment.sync_kinds()  # no cut needed: one shard call at a time either way
            rows_since_sync = 0
        now = time.perf_counter()
        if (
            rows_since_cp >= rt.config.checkpoint_rows
            or now - last_cp >= rt.config.checkpoint_seconds
        ):
            checkpoint()
            last_cp, rows_since_cp, moved = time.perf_counter(), 0, False
        if progress is not None or now - last_report > 1.0:
            finish(stats, run_.counters, app, t0)
            report(rt, app, stats)
            last_report = now
            if progress is not None:
                progress(stats)
        if max_events is not None and stats.input >= max_events:
            stopped = True
            break
    if stopped:  # intake stops; what was accepted is applied and committed below
        for f in feeders:
            f.stop_intake()
        for f in feeders:
            tick = f.step(0.0)
            absorb(tick.counts, tick.shard_stats)
    fire = not stopped and app.event_time is not None and end_of_stream
    if fire:
        rt.routing.advance(app.kind.name, END_OF_TIME)  # every window fires
    absorb({}, rt.routing.drain())
    rt.settle_links()  # what the edges hold for the core is in the last commit
    # a stream whose last rows a checkpoint just committed (its size is a multiple of
    # checkpoint_rows) has nothing left to commit: a second one cost a 2M replay ~0.1 s
    if stopped or fire or moved or stats.checkpoints == 0 or rt.deployment.links.shards:
        checkpoint()
    rt.flush_topics()


def restart_after_failure(
    rt: Runtime, app: App, restarts: int, cause: BaseException | None = None
) -> int:
    """An actor died: restart from the last commit (re-placed actors), or give up after
    ``max_restarts``; the caller resumes its feeders from the committed positions. Each
    restart says why on stderr, and giving up names the last cause (one line each)."""
    why = (str(cause).strip().splitlines() or [type(cause).__name__])[0] if cause else "unknown"
    if restarts >= rt.config.max_restarts:
        raise ActorFailedError(
            f"app {app.name!r}: actors kept failing after {restarts} restarts; giving up "
            f"(last: {why[:300]})"
        )
    print(
        f"edgecore: app {app.name!r}: {why[:300]}; restarting from the last checkpoint",
        file=sys.stderr,
        flush=True,
    )
    rt.restart()
    setup(rt, app)
    return restarts + 1


def finish(stats: RunStats, counters: dict[str, float], app: App, t0: float) -> None:
    stats.seconds = time.perf_counter() - t0
    stats.events_per_s = stats.input / stats.seconds if stats.seconds > 0 else 0.0
    stats.counters = {k: (int(v) if float(v).is_integer() else v) for k, v in counters.items()}
    if app.summarize is not None:
        stats.app = app.summarize(counters)


GLANCE = ("input", "accepted", "dead_lettered", "duplicates", "checkpoints")


def report(rt: Runtime, app: App, stats: RunStats) -> None:
    """Publish a run's summary on the runtime's status board (``edgecore status``), with
    its metrics (and copy them to Ray's)."""
    m = rt.metrics
    if m is not None:
        m.run(stats)
        m.summary(stats)
        rt.refresh_metrics()
        if app.event_time is not None:
            m.watermark([w.current() for w in rt.checkpoints.watermarks.values()])
        m.registry.sync_ray()
    rt.report(
        app.name,
        {  # the console's counts at a glance
            **{k: getattr(stats, k) for k in GLANCE},
            "events_per_s": round(stats.events_per_s, 1),
            **stats.app,
        },
    )
