"""The live ingest gate: events are logged before they are acknowledged, and applied after.

A gate sits behind the HTTP and MQTT listeners of a live ingest actor
(:mod:`runtime.ingest.live`). A listener validates the rows of one request (or of a group of
messages) in its own thread (:meth:`Gate.prepare`) and queues them (:meth:`enqueue`),
which gives a future for their counts. Then:

* **group commit** (:meth:`commit`): whoever calls it takes every queued submission at
  once (flat combining: no hand-off to another thread, which costs milliseconds under
  the GIL): it drops event ids applied or logged before, runs the app's steps, appends
  the group's accepted rows and dead letters to the write-ahead log and makes them
  durable with one ``fdatasync``; then it marks the ids as seen and answers every
  future. A request is acknowledged only once its events are on disk, and one
  request's bad input never touches another's counts. The HTTP front end commits once
  per turn of its event loop, so requests that arrived together share one flush.
* **dispatch**: what is logged goes to the shards in log order, with a bounded number
  of batches in flight — straight from the committing thread when nothing waits, else
  through a dispatcher thread, so a slow shard never holds up acknowledgements (too
  much waiting makes :meth:`enqueue` refuse new work with :class:`Backpressure`).

A checkpoint :meth:`cut` pauses the dispatcher between two log records: everything
before the gate's *position* (the seq of the first record not sent on) is applied by the
shards, nothing after. The gate hands over the ids and dead letters of what it sent;
:meth:`committed` later deletes log segments the commit covers. On a restart the gate
replays its log from the committed position through the dispatcher (:meth:`recover`).
Any failure of the log is fatal to the gate (its state on disk is then unknown): it
answers 503 until the driver restarts the runtime from the last checkpoint.

>>> import tempfile, pyarrow as pa
>>> from runtime.cluster.handles import spawn
>>> from runtime.dataflow.app import App
>>> from runtime.streams.schema import Column, EventSchema
>>> from runtime.entities.clients import ShardClient
>>> from runtime.entities.shard import Shard
>>> from runtime.testing import Tally
>>> folder = tempfile.mkdtemp()
>>> app = App("t", EventSchema("e", [Column("event_id", "int64"), Column("key", "string")]), Tally)
>>> shards = [ShardClient(spawn(Shard, Tally, None, 0, 1, folder, name="s0", mode="local"))]
>>> gate = Gate(app, "t@local", shards, wal_dir=folder + "/wal").start()
>>> gate.submit(pa.table({"event_id": [1, 2, 2], "key": ["a", "b", "b"]})).result()   # validate, log, answer
{'input': 3, 'accepted': 2, 'dead_lettered': 0, 'duplicates': 1, 'filtered': 0}
>>> cut = gate.cut(); gate.resume(); cut["positions"], [len(i) for i in cut["ids"]]
({'live:t@local': 1}, [2])
>>> gate.close()
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from runtime.dataflow.app import App, new_counts
from runtime.entities.router import Router
from runtime.errors import EdgecoreError
from runtime.eventtime.watermarks import Watermarks
from runtime.ingest.dispatch import Closed, Dispatching
from runtime.ingest.groups import (
    Handover,
    Logged,
    Submission,
    admit_group,
    log_records,
    replay,
)
from runtime.ingest.wal import WriteAheadLog
from runtime.state.index import SeenSet

if TYPE_CHECKING:
    from runtime.entities.clients import ShardClient
    from runtime.topics.clients import TopicClient

#: rows one group commit takes at most (more wait for the next)
GROUP_ROWS = 200_000
#: rows accepted but not yet sent to the shards before new submissions are refused
MAX_PENDING_ROWS = 200_000


class FeedbackRefused(EdgecoreError):
    """Labels (feedback rows) sent to an app whose kind takes none."""


class Backpressure(EdgecoreError):
    """The gate has too much waiting for the shards; the caller should retry shortly."""


class Gate(Dispatching):
    """Validate, log, acknowledge, dispatch; see the module docstring."""

    def __init__(
        self,
        app: App,
        name: str,
        shards: list[ShardClient],
        *,
        wal_dir: str | None,
        site: str | None = None,
        applied: np.ndarray | None = None,
        dedup_capacity: int = 50_000_000,
        max_inflight: int = 2,
        dead_topic: TopicClient | None = None,
        watermarks: bytes | None = None,
        max_pending_rows: int = MAX_PENDING_ROWS,
    ) -> None:
        self.app, self.name, self.site = app, name, site
        self.id = f"live:{name}"
        self.router = Router(app.kind, shards, len(shards), [site] if site else [], max_inflight)
        self.wal = WriteAheadLog(wal_dir) if wal_dir else None
        self.seen = SeenSet(dedup_capacity)
        if applied is not None and len(applied):
            self.seen.add(np.unique(applied))
        self.max_pending_rows = max_pending_rows
        self.marks: Watermarks | None = None
        if watermarks is not None:
            self.marks = Watermarks.restore(watermarks)
        elif app.event_time is not None:
            et = app.event_time
            self.marks = Watermarks(et.out_of_orderness_ms, et.idle_ms)
        self._cond = threading.Condition()
        self._queue: deque[Submission] = deque()
        self._queued_rows = 0
        self._backlog: deque[Logged] = deque()
        self._backlog_rows = 0
        self._paused = False
        self._pause_at: int | None = None  # a cut: send up to this seq, then pause
        self._busy = False  # the dispatcher is sending
        self._closing = False
        self._stopped = False
        self._commit_lock = threading.Lock()
        self.failed: BaseException | None = None
        self._received = 0  # rows reserved for validation (dead letter positions)
        self._next_seq = 0  # seq numbering when there is no log
        self.position = 0  # the first log record not sent on yet
        # handed over at the next cut
        self._handover = Handover(dead_topic)
        self._shard_stats: list[dict[str, float]] = []
        # counts since the last tick, and since the gate started
        self._counts = new_counts()
        self._replayed = 0
        self.totals = new_counts()
        self._threads: list[threading.Thread] = []
        self.started_ms = int(time.time() * 1000)

    # -- life cycle ------------------------------------------------------------------------
    def recover(self, committed: int) -> int:
        """Replay the log from ``committed`` (what the last checkpoint covers): the records
        go to the shards again, in order; returns how many. Call before :meth:`start`."""
        self.position = committed
        if self.wal is None:
            self._next_seq = committed
            return 0
        self.wal.skip_to(committed)
        n = 0
        for item in replay(self.wal, committed, self.app.event_id):
            self.seen.add(item.ids[~self.seen.contains(item.ids)])
            self._log_ready(item)
            self._count(item.counts, item.feedback_counts)
            self._replayed += item.counts["input"]
            n += 1
        return n

    def start(self) -> Gate:
        t = threading.Thread(
            target=self._dispatcher, name=f"gate-dispatch:{self.name}", daemon=True
        )
        t.start()
        self._threads.append(t)
        return self

    def stop_intake(self, timeout: float = 10.0) -> None:
        """Take nothing new; return once every submission taken is answered."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            while self._queued_rows and time.monotonic() < deadline:
                self._cond.wait(0.05)

    def close(self) -> None:
        with self._cond:
            self._closing = self._stopped = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=10)
        self._threads = []
        if self.wal is not None:
            self.wal.close()

    # -- intake ----------------------------------------------------------------------------
    def reserve(self, n: int) -> int:
        """Positions for ``n`` rows about to be validated (they name dead letters)."""
        with self._cond:
            first = self._received
            self._received += n
            return first

    def submit(self, table: pa.Table, source: str = "submit", wait_s: float = 0.05) -> Future:
        """Validate ``table``, queue it and commit (in the caller's thread); the future has
        its counts once logged. Raises :class:`Backpressure` if there is no room within
        ``wait_s``, :class:`Closed` if the gate takes nothing new."""
        future = self.enqueue(self.prepare(table, source), wait_s)
        self.commit()
        return future

    def prepare(
        self, table: pa.Table, source: str = "submit", feedback: bool = False
    ) -> Submission:
        """Validate ``table`` for :meth:`enqueue` (the costly half, in the caller's thread);
        ``feedback``: rows of the kind's feedback input (labels), not events."""
        first = self.reserve(table.num_rows)
        src = f"{source}:{self.name}:{self.started_ms}"
        schema = self.app.kind.feedback if feedback else self.app.schema
        if schema is None:
            raise FeedbackRefused(f"app {self.app.name!r} takes no labels or other feedback")
        ok, dead = schema.validate(table, source=src, first_position=first, per_record=True)
        return Submission(ok, dead, table.num_rows, src, first, Future(), feedback)

    def enqueue(self, sub: Submission, wait_s: float = 0.0) -> Future:
        """Queue a prepared submission for the next group commit (see :meth:`submit`)."""
        deadline = time.monotonic() + wait_s
        with self._cond:
            while True:
                if self._closing or self.failed is not None:
                    raise Closed(self._why_closed())
                waiting = self._queued_rows + self._backlog_rows
                if waiting + sub.ok.num_rows <= self.max_pending_rows or waiting == 0:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Backpressure(
                        f"ingest of {self.app.name!r} is backpressured "
                        f"({waiting:,} rows wait for the shards)"
                    )
                self._cond.wait(left)
            self._queue.append(sub)
            self._queued_rows += sub.ok.num_rows
            self._cond.notify_all()
        return sub.future

    def fail(self, err: BaseException) -> None:
        """Stop taking work: a listener met an error it cannot get past. The driver sees it
        at the next tick and restarts the runtime from the last checkpoint."""
        with self._cond:
            self.failed = self.failed or err
            waiting = list(self._queue)
            self._queue.clear()
            self._queued_rows = 0
            self._cond.notify_all()
        for sub in waiting:
            if not sub.future.done():
                sub.future.set_exception(Closed(self._why_closed()))

    def _why_closed(self) -> str:
        if self.failed is not None:
            return f"ingest of {self.app.name!r} failed ({self.failed}); it restarts from the last checkpoint"
        return f"ingest of {self.app.name!r} is stopping"

    # -- group commit ----------------------------------------------------------------------
    def commit(self) -> None:
        """Log and answer everything queued, as groups of at most :data:`GROUP_ROWS` rows.

        Safe from any thread: one commits at a time, and a caller that waited for the lock
        finds its submission already answered or takes it with the next group.
        """
        with self._commit_lock:
            while True:
                with self._cond:
                    if not self._queue:
                        return
                    group, rows = [], 0
                    while self._queue and (not group or rows < GROUP_ROWS):
                        sub = self._queue.popleft()
                        group.append(sub)
                        rows += sub.ok.num_rows
                try:
                    logged = self._commit(group)
                except BaseException as err:  # the log is in an unknown state: stop taking work
                    with self._cond:
                        self.failed = err
                        failed = list(self._queue)
                        self._queue.clear()
                        self._queued_rows = 0
                        self._cond.notify_all()
                    for sub in group + failed:
                        if not sub.future.done():
                            sub.future.set_exception(Closed(self._why_closed()))
                    return
                finally:
                    with self._cond:
                        self._queued_rows = max(0, self._queued_rows - rows)
                        self._cond.notify_all()
                self._dispatch(logged)

    def _commit(self, group: list[Submission]) -> Logged:
        site = self.site if self.app.kind.site_key else None
        a = admit_group(self.app, group, self.seen, site, f"live:{self.name}")
        records = log_records(self.app, a)
        if self.wal is not None:
            seqs = self.wal.append(records)
            self.wal.sync()
            last = seqs[-1]
        else:
            last = self._next_seq + len(records) - 1
            self._next_seq = last + 1
        self.seen.add(a.ids)
        self._count(a.counts, a.feedback_counts)
        for future, got in a.answers:
            future.set_result(got)
        return Logged(last, a.events, a.dead, a.ids, a.counts, a.labels, a.feedback_counts)

    def _count(self, counts: dict[str, int], feedback: dict[str, int] | None = None) -> None:
        with self._cond:
            for k, v in counts.items():
                self._counts[k] += v
                self.totals[k] += v
            if feedback:  # run counters, apart from the events' counts
                self._shard_stats.append(dict(feedback))

    def committed(self, position: int) -> None:
        """A checkpoint covers every record before ``position``: drop the segments it covers."""
        if self.wal is not None:
            self.wal.truncate_before(position)

    def tick(self) -> dict[str, Any]:
        """Counts since the last tick, shard stats of finished calls, and any failure."""
        with self._cond:
            counts, self._counts = self._counts, new_counts()
            replayed, self._replayed = self._replayed, 0
            waiting = self._queued_rows + self._backlog_rows
            stats, self._shard_stats = self._shard_stats, []
        return {
            "counts": {**counts, "replayed": replayed},
            "shard_stats": stats,
            "failed": None
            if self.failed is None
            else f"{type(self.failed).__name__}: {self.failed}",
            "waiting_rows": waiting,
        }
