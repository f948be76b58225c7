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
>>> from runtime.entities.shard import Shard
>>> from runtime.testing import Tally
>>> folder = tempfile.mkdtemp()
>>> app = App("t", EventSchema("e", [Column("event_id", "int64"), Column("key", "string")]), Tally)
>>> shards = [spawn(Shard, Tally, None, 0, 1, folder, name="s0", mode="local")]
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
from collections import Counter, deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from runtime.cluster.handles import Handle, ready, resolve
from runtime.cluster.wire import pack_for
from runtime.dataflow.app import App, new_counts
from runtime.dataflow.screen import admit, check_site
from runtime.entities.router import Router
from runtime.errors import EdgecoreError
from runtime.eventtime.watermarks import Watermarks
from runtime.ingest.wal import WriteAheadLog
from runtime.state.index import SeenSet

#: rows one group commit takes at most (more wait for the next)
GROUP_ROWS = 200_000
#: rows accepted but not yet sent to the shards before new submissions are refused
MAX_PENDING_ROWS = 200_000
MAX_TOPIC_PENDING = 8


class Backpressure(EdgecoreError):
    """The gate has too much waiting for the shards; the caller should retry shortly."""


class Closed(EdgecoreError):
    """The gate takes nothing new: it is stopping, or its log failed."""


@dataclass
class _Submission:
    ok: pa.Table
    dead: pa.Table
    n_input: int
    source: str
    position: int
    future: Future


@dataclass
class _Logged:
    """One group commit as the dispatcher sends it on."""

    seq: int  # the seq of its last log record: the gate's position is past it once sent
    events: pa.Table | None
    dead: pa.Table | None
    ids: np.ndarray
    counts: dict[str, int]


def _merge(items: list[_Logged]) -> _Logged:
    """Consecutive logged groups as one (their events and dead letters in log order)."""
    if len(items) == 1:
        return items[0]
    events = [i.events for i in items if i.events is not None and i.events.num_rows]
    dead = [i.dead for i in items if i.dead is not None]
    counts = new_counts()
    for i in items:
        for k, v in i.counts.items():
            counts[k] += v
    return _Logged(
        items[-1].seq,
        pa.concat_tables(events, promote_options="default") if events else None,
        pa.concat_tables(dead) if dead else None,
        np.concatenate([i.ids for i in items]),
        counts,
    )


class Gate:
    """Validate, log, acknowledge, dispatch; see the module docstring."""

    def __init__(
        self,
        app: App,
        name: str,
        shards: list[Handle],
        *,
        wal_dir: str | None,
        site: str | None = None,
        applied: np.ndarray | None = None,
        dedup_capacity: int = 50_000_000,
        max_inflight: int = 2,
        dead_topic: Handle | None = None,
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
        self.dead_topic = dead_topic
        self.max_pending_rows = max_pending_rows
        self.marks: Watermarks | None = None
        if watermarks is not None:
            self.marks = Watermarks.restore(watermarks)
        elif app.event_time is not None:
            et = app.event_time
            self.marks = Watermarks(et.out_of_orderness_ms, et.idle_ms)
        self._cond = threading.Condition()
        self._queue: deque[_Submission] = deque()
        self._queued_rows = 0
        self._backlog: deque[_Logged] = deque()
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
        self._ids: list[np.ndarray] = []
        self._dead: list[pa.Table] = []
        self._topic_pending: list[Any] = []
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
        pending: dict[str, Any] = {}
        for seq, meta, table in self.wal.replay(committed):
            kind = meta.get("type")
            if kind == "events":
                pending = {"events": table, "counts": meta.get("counts", {}), "dead": None}
                pending["ids"] = table.column(self.app.event_id).to_numpy()
            elif kind == "dead":
                pending["dead"] = table
            elif kind == "ids":
                pending["ids"] = table.column("event_id").to_numpy()
            if meta.get("last"):
                events = pending.get("events")
                ids = np.asarray(pending.get("ids", np.zeros(0, np.int64)), dtype=np.int64)
                self.seen.add(ids[~self.seen.contains(ids)])
                counts = {**new_counts(), **pending.get("counts", {})}
                self._log_ready(_Logged(seq, events, pending.get("dead"), ids, counts))
                self._count(counts)
                self._replayed += counts["input"]
                n += 1
                pending = {}
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

    def prepare(self, table: pa.Table, source: str = "submit") -> _Submission:
        """Validate ``table`` for :meth:`enqueue` (the costly half, in the caller's thread)."""
        first = self.reserve(table.num_rows)
        src = f"{source}:{self.name}:{self.started_ms}"
        ok, dead = self.app.schema.validate(
            table, source=src, first_position=first, per_record=True
        )
        return _Submission(ok, dead, table.num_rows, src, first, Future())

    def enqueue(self, sub: _Submission, wait_s: float = 0.0) -> Future:
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

    def _commit(self, group: list[_Submission]) -> _Logged:
        pending = SeenSet(capacity=1 << 40)  # ids new in this group, until it is durable

        def dedup(ids: np.ndarray) -> np.ndarray:
            ids = np.asarray(ids, dtype=np.int64)
            fresh = ~self.seen.contains(ids)
            fresh[fresh] = pending.add_new(ids[fresh])
            return fresh

        site_check = None
        if self.app.kind.site_key and self.site:
            site_check = self._site_check
        accepted, dead, answers = [], [], []
        counts = new_counts()
        for sub in group:
            try:
                ok, refused, got = admit(
                    self.app,
                    sub.ok,
                    sub.dead,
                    sub.n_input,
                    sub.source,
                    sub.position,
                    dedup,
                    site_check,
                )
            except Exception as err:  # this submission's own problem, e.g. a step's bug
                sub.future.set_exception(err)
                continue
            if ok.num_rows:
                accepted.append(ok)
            if refused.num_rows:
                dead.append(refused)
            for k, v in got.items():
                counts[k] += v
            if refused.num_rows:  # what a client most needs to fix
                top = Counter(refused.column("reason").to_pylist()).most_common(5)
                got = {**got, "reasons": dict(top)}
            answers.append((sub.future, got))
        ids = pending.ids()
        events = pa.concat_tables(accepted, promote_options="default") if accepted else None
        dead_rows = pa.concat_tables(dead) if dead else None
        records: list[tuple[dict[str, Any], pa.Table]] = []
        empty = pa.table({self.app.event_id: pa.array([], pa.int64())})
        records.append(
            ({"type": "events", "counts": counts}, events if events is not None else empty)
        )
        if self.app.steps:  # the steps may drop or rewrite ids: log the ones deduplicated
            records.append(({"type": "ids"}, pa.table({"event_id": pa.array(ids, pa.int64())})))
        if dead_rows is not None:
            records.append(({"type": "dead"}, dead_rows))
        records[-1][0]["last"] = True
        if self.wal is not None:
            seqs = self.wal.append(records)
            self.wal.sync()
            last = seqs[-1]
        else:
            last = self._next_seq + len(records) - 1
            self._next_seq = last + 1
        self.seen.add(ids)
        self._count(counts)
        for future, got in answers:
            future.set_result(got)
        return _Logged(last, events, dead_rows, ids, counts)

    def _site_check(self, ok: pa.Table, dead: pa.Table) -> tuple[pa.Table, pa.Table]:
        assert self.site is not None
        return check_site(
            self.app, [self.site], ok, dead, f"live:{self.name}", -1, at_edge=self.site
        )

    def _dispatch(self, item: _Logged) -> None:
        """Send a logged group on: here and now if the dispatcher has nothing waiting and
        no shard is at its in-flight bound, else through the dispatcher thread."""
        with self._cond:
            fast = (
                not self._backlog
                and not self._busy
                and not self._paused
                and self._pause_at is None
                and not self.router.saturated()
                and self.failed is None
            )
            if fast:
                self._busy = True
        if not fast:
            self._log_ready(item)
            return
        try:
            self._send(item)
            finished = self.router.poll()
        except BaseException as err:  # a shard died: the driver restarts the runtime
            with self._cond:
                self.failed = err
            return
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
        with self._cond:
            self._shard_stats += finished

    def _log_ready(self, item: _Logged) -> None:
        with self._cond:
            self._backlog.append(item)
            self._backlog_rows += item.events.num_rows if item.events is not None else 0
            self._cond.notify_all()

    def _count(self, counts: dict[str, int]) -> None:
        with self._cond:
            for k, v in counts.items():
                self._counts[k] += v
                self.totals[k] += v

    # -- the dispatcher --------------------------------------------------------------------
    def _sendable(self) -> bool:
        """Is there a logged group the dispatcher may send now?"""
        if not self._backlog or self._paused:
            return False
        return self._pause_at is None or self._backlog[0].seq <= self._pause_at

    def _dispatcher(self) -> None:
        while True:
            with self._cond:
                while not self._sendable() and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                items = []
                while self._sendable():
                    items.append(self._backlog.popleft())
                self._busy = True
            try:
                self._send(_merge(items))  # what waited goes on as one batch per shard
                finished = self.router.poll()
                with self._cond:
                    self._shard_stats += finished
            except BaseException as err:  # a shard died: the driver restarts the runtime
                with self._cond:
                    self.failed = err
            finally:
                with self._cond:
                    self._busy = False
                    self._backlog_rows -= sum(
                        i.events.num_rows for i in items if i.events is not None
                    )
                    self._cond.notify_all()

    def _send(self, item: _Logged) -> None:
        if item.events is not None and item.events.num_rows:
            watermark = None
            if self.marks is not None and self.app.event_time is not None:
                et = self.app.event_time
                self.marks.observe_table(item.events, et.column, et.partition, self.name)
                watermark = self.marks.current()
            self.router.send(item.events, watermark)
        if item.dead is not None:
            self._dead.append(item.dead)
            if self.dead_topic is not None:  # on the topic now; in the table at the checkpoint
                self._topic_pending.append(
                    self.dead_topic.call("publish", pack_for(self.dead_topic, item.dead))
                )
                if len(self._topic_pending) > MAX_TOPIC_PENDING:
                    done, self._topic_pending = ready(
                        self._topic_pending, len(self._topic_pending) - MAX_TOPIC_PENDING
                    )
                    resolve(done)
        self._ids.append(item.ids)
        self.position = item.seq + 1

    # -- checkpoints -----------------------------------------------------------------------
    def cut(self, barrier: bool = False) -> dict[str, Any]:
        """Send on everything logged so far, then mark the cut for the checkpoint:

        * pausing (default): the dispatcher stops and this waits until what it sent is
          applied; what is logged meanwhile waits for :meth:`resume`;
        * ``barrier``: a ``drain`` call goes to each shard right behind the last batch, in
          the same order (Ray keeps one caller's calls in order), and the dispatcher goes
          on at once; the coordinator takes the shards' state from those calls (``drains``).
          Exact only where this gate is its shards' one input, so the feeder chooses.
        """
        with self._cond:
            self._pause_at = self._backlog[-1].seq if self._backlog else -1
            self._cond.notify_all()
            while (self._busy or self._sendable()) and self.failed is None:
                self._cond.wait()
            if self.failed is None:
                self._paused, self._busy = True, barrier  # barrier: keep the router to us
            self._pause_at = None
        if self.failed is not None:
            raise Closed(self._why_closed())
        drains: dict[str, Any] = {}
        try:
            if barrier:
                drains = {h.name: h.call("drain") for h in self.router.shards}
                shard_stats = self.router.poll()
            else:
                shard_stats = self.router.drain()
            with self._cond:
                shard_stats, self._shard_stats = self._shard_stats + shard_stats, []
            resolve(self._topic_pending)
            self._topic_pending = []
            ids, self._ids = self._ids, []
            dead, self._dead = self._dead, []
            marks = {}
            if self.marks is not None:
                marks[f"{self.app.kind.name}@{self.name}"] = self.marks.snapshot()
            position = self.position
        finally:
            if barrier:
                with self._cond:
                    self._paused = self._busy = False
                    self._cond.notify_all()
        return {
            "positions": {self.id: position},
            "ids": ids,
            "dead": dead,
            "shard_stats": shard_stats,
            "watermarks": marks,
            "drains": drains,
        }

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

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
