"""The dispatching half of a gate: what is logged goes on to the shards, in log order.

A logged group goes to the shards straight from the committing thread when nothing waits
and no shard is at its in-flight bound, else through the dispatcher thread, so a slow
shard never holds up acknowledgements. A checkpoint's :meth:`Dispatching.cut` stops it
between two log records: everything before the gate's *position* is applied by the
shards, nothing after. :class:`~runtime.ingest.gate.Gate` is the intake half (validate,
group commit, acknowledge); both share one lock and condition, so this is a base class
rather than an object of its own.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from runtime.dataflow.app import App
from runtime.entities.router import Router
from runtime.errors import EdgecoreError
from runtime.eventtime.watermarks import Watermarks
from runtime.ingest.groups import Handover, Logged, merge


class Closed(EdgecoreError):
    """The gate takes nothing new: it is stopping, or its log failed."""


class Dispatching:
    """Send logged groups on to the shards; pause at a cut. State set up by the Gate."""

    app: App
    name: str
    id: str
    router: Router
    marks: Watermarks | None
    failed: BaseException | None
    position: int
    _cond: threading.Condition
    _backlog: deque[Logged]
    _backlog_rows: int
    _paused: bool
    _pause_at: int | None
    _busy: bool
    _stopped: bool
    _handover: Handover
    _shard_stats: list[dict[str, float]]

    def _why_closed(self) -> str:
        raise NotImplementedError

    def _dispatch(self, item: Logged) -> None:
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

    def _log_ready(self, item: Logged) -> None:
        with self._cond:
            self._backlog.append(item)
            self._backlog_rows += item.events.num_rows if item.events is not None else 0
            self._cond.notify_all()

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
                self._send(merge(items))  # what waited goes on as one batch per shard
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

    def _send(self, item: Logged) -> None:
        if item.events is not None and item.events.num_rows:
            watermark = None
            if self.marks is not None and self.app.event_time is not None:
                et = self.app.event_time
                self.marks.observe_table(item.events, et.column, et.partition, self.name)
                watermark = self.marks.current()
            self.router.send(item.events, watermark, ingested=item.at)
        if item.labels is not None and item.labels.num_rows:
            self.router.send(item.labels, feedback=True, ingested=item.at)
        self._handover.sent(item)
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
                drains = {h.name: h.drain() for h in self.router.shards}
                shard_stats = self.router.poll()
            else:
                shard_stats = self.router.drain()
            with self._cond:
                shard_stats, self._shard_stats = self._shard_stats + shard_stats, []
            ids, dead = self._handover.take()
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
