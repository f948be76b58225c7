"""The edge end of a link: a forwarded topic's batches logged, then shipped in order.

An :class:`EdgeLink` stands where a :class:`~runtime.entities.router.Router` would in
an edge shard (the same ``send``/``advance``/``poll``/``drain``): ``send`` appends the
batch to the shard's :class:`~runtime.edge.log.ForwardLog` and returns; a sender thread
ships what the core has not answered for to the site's receiver, one call at a time
(all that waits, up to :data:`MAX_SEND_BYTES`), and forgets an entry once the receiver
answered that the core's shards applied it. A failed or timed-out call marks the link
down: the thread probes the receiver with backoff (0.1 s doubling to 5 s) and, when it
answers, sends again from the oldest entry not answered for; the core drops what it
applied before. Nothing here raises into the shard: a link down never stops the edge.

When more than ``buffer_bytes`` wait for the core, ``send`` waits for room: the shard's
intake stops, and with it the site's source (a file is not read on; a live gate's
batches wait, and the gate stops acknowledging) - nothing is dropped. ``drain`` (a
checkpoint's cut) fsyncs the log and does not wait for the core: entries logged before
the cut and not yet applied at the core are in the log, which keeps them until the core
commits them (``trim``).

>>> import tempfile, pyarrow as pa
>>> from runtime.cluster.handles import spawn
>>> from runtime.edge.receiver import Receiver, ReceiverClient
>>> from runtime.entities.clients import ShardClient
>>> from runtime.entities.shard import Shard
>>> from runtime.testing import Tally
>>> core = ShardClient(spawn(Shard, Tally, None, 0, 1, tempfile.mkdtemp(), name="c", mode="local"))
>>> rx = ReceiverClient(spawn(Receiver, "eu-1", {"tallies": (Tally, [core], 1, [])}, name="r", mode="local"))
>>> link = EdgeLink(LinkSpec("out", "tallies", rx, tempfile.mkdtemp()), "edge", "eu-1")
>>> link.send(pa.table({"key": ["a", "b", "a"]}))
>>> link.settle(10.0), link.status()["acked_seq"]
(0, 1)
>>> link.close()
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from runtime.cluster.handles import lookup, ready, resolve
from runtime.edge.log import Entry, ForwardLog
from runtime.entities.router import stamp

if TYPE_CHECKING:
    from runtime.edge.receiver import ReceiverClient

#: at most this much in one call to the receiver (always at least one entry)
MAX_SEND_BYTES = 8 * 2**20
SYNC_EVERY_S = 1.0
BACKOFF_S = (0.1, 5.0)


def entry_slices(table: pa.Table, max_bytes: int | None = None) -> list[pa.Table]:
    """``table`` in row slices of about ``max_bytes`` (:data:`MAX_SEND_BYTES`) each.

    A call to the receiver carries at least one entry, so an entry is the unit a slow
    or cut-off core makes the link send again: a 77 MB entry (a gate's backlog of
    millions of rows, dispatched at once after a stall) outlived the link's timeout at
    the receiver and was resent each time, filling the object store with copies.

    >>> t = pa.table({"x": list(range(1000))})
    >>> [p.num_rows for p in entry_slices(t, max_bytes=3_000)]
    [375, 375, 250]
    """
    limit = MAX_SEND_BYTES if max_bytes is None else max_bytes
    if table.nbytes <= limit or table.num_rows <= 1:
        return [table]
    rows = max(1, table.num_rows * limit // table.nbytes)
    return [_own_dictionaries(table.slice(i, rows)) for i in range(0, table.num_rows, rows)]


def _own_dictionaries(part: pa.Table) -> pa.Table:
    """A slice whose dictionary columns hold only the values it uses: a slice shares its
    parent's whole dictionary, and each entry's payload would carry all of it (an 8 MB
    dictionary in each of 46 slices of a 9 MB table)."""
    for i, field in enumerate(part.schema):
        if pa.types.is_dictionary(field.type):
            col = part.column(i).combine_chunks()
            own = pc.dictionary_encode(col.dictionary_decode()).cast(field.type)
            part = part.set_column(i, field, own)
    return part


@dataclass(frozen=True)
class LinkSpec:
    """One forwarded topic of one edge shard, as the deployment starts it."""

    topic: str
    target: str  # the core kind its rows go to
    receiver: ReceiverClient
    folder: str  # the log's folder (the edge node's disk)
    #: from the last checkpoint: the edge had logged up to ``sent``; every shard of the
    #: target had applied up to ``acked`` (the log keeps what is between)
    sent: int = 0
    acked: int = 0
    buffer_bytes: int = 256 * 2**20
    timeout_s: float = 10.0


class EdgeLink:
    """A Router-shaped sender over a durable log; see the module docstring."""

    def __init__(self, spec: LinkSpec, channel: str, site: str | None) -> None:
        self.spec, self.channel, self.site = spec, channel, site
        #: the dedup source at the core: this shard's rows of this topic
        self.source = f"{channel}>{spec.topic}"
        self.log = ForwardLog(spec.folder, keep_from=spec.acked, keep_to=spec.sent)
        self._cond = threading.Condition()
        self._pending: deque[Entry] = deque(self.log.entries)  # not answered for, in order
        self.log.entries = []
        self._bytes = sum(len(e.payload) for e in self._pending)
        self._rows = sum(e.rows for e in self._pending)
        self.acked = spec.acked
        self.up, self.blocked, self.error = True, False, ""
        self.counters = {"delivered": 0, "failures": 0, "blocked_s": 0.0}
        self._stats: list[dict[str, float]] = []
        self._answer: Any = None
        self._rx = spec.receiver
        self._wm_logged: int | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"link {self.source}", daemon=True)
        self._thread.start()

    # -- what the shard calls (as on a Router) -----------------------------------------------
    def send(
        self,
        events: pa.Table,
        watermark: int | None = None,
        channel: str = "source",
        feedback: bool = False,
        ingested: float | None = None,
    ) -> None:
        """Log ``events`` for the core (waiting for room when the buffer is full)."""
        if events.num_rows == 0:
            if watermark is not None:
                self.advance(watermark, channel)
            return
        stamped = stamp(events, time.time() if ingested is None else ingested)
        parts = entry_slices(stamped)
        for i, part in enumerate(parts):  # the watermark with the last: it follows the rows
            self._append(part, watermark if i == len(parts) - 1 else None)

    def advance(self, watermark: int, channel: str = "source") -> None:
        """Event time reached ``watermark``: logged, so it reaches the core in order."""
        if self._wm_logged is None or watermark > self._wm_logged:
            self._append(None, watermark)

    def poll(self) -> list[dict[str, float]]:
        """Stats of the core shards' calls answered since the last poll."""
        with self._cond:
            out, self._stats = self._stats, []
        return out

    def drain(self) -> list[dict[str, float]]:
        """A checkpoint's cut: everything logged is durable; the core is not waited for."""
        self.log.sync()
        return self.poll()

    def saturated(self) -> bool:
        return self.blocked

    # -- what the runtime calls --------------------------------------------------------------
    def settle(self, timeout_s: float) -> int:
        """Wait (at most ``timeout_s``) until the core answered for everything logged;
        returns the entries still waiting."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._pending and time.monotonic() < deadline:
                self._cond.wait(min(0.2, max(0.0, deadline - time.monotonic())))
            return len(self._pending)

    def trim(self, upto: int) -> None:
        """The core committed every entry up to ``upto``: the log may forget them."""
        self.log.trim(upto)

    def status(self) -> dict[str, Any]:
        with self._cond:
            return {
                "source": self.source,
                "site": self.site,
                "target": self.spec.target,
                "up": self.up,
                "blocked": self.blocked,
                "buffered_bytes": self._bytes,
                "buffered_rows": self._rows,
                "buffered_entries": len(self._pending),
                "log_bytes": self.log.disk_bytes,
                "logged_seq": self.log.last,
                "acked_seq": self.acked,
                **self.counters,
                "error": self.error,
            }

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5.0)
        self.log.close()

    # -- inside ------------------------------------------------------------------------------
    def _append(self, table: pa.Table | None, watermark: int | None) -> None:
        entry = self.log.append(table, watermark)
        if watermark is not None:
            self._wm_logged = max(watermark, self._wm_logged or watermark)
        with self._cond:
            self._pending.append(entry)
            self._bytes += len(entry.payload)
            self._rows += entry.rows
            self._cond.notify_all()
            if self._bytes > self.spec.buffer_bytes:  # full: the intake waits for room
                t0 = time.monotonic()
                self.blocked = True
                while self._bytes > self.spec.buffer_bytes and not self._closed:
                    self._cond.wait(0.5)
                self.blocked = False
                self.counters["blocked_s"] += time.monotonic() - t0

    def _run(self) -> None:
        backoff, retry_at, synced = BACKOFF_S[0], 0.0, time.monotonic()
        while not self._closed:
            now = time.monotonic()
            if now - synced >= SYNC_EVERY_S:  # group commit: one fsync for a second's entries
                self.log.sync()
                synced = now
            if not self.up:
                if now < retry_at:
                    with self._cond:
                        if not self._closed:
                            self._cond.wait(min(0.5, retry_at - now))
                    continue
                if not self._answers(self._receiver(fresh=True).ping()):
                    backoff = min(backoff * 2, BACKOFF_S[1])
                    retry_at = time.monotonic() + backoff
                    continue
                self.up, backoff = True, BACKOFF_S[0]  # back: send again from the oldest
            with self._cond:
                if not self._pending:
                    self._cond.wait(0.2)
                    continue
                batch, size = [], 0
                for e in self._pending:
                    if batch and size + len(e.payload) > MAX_SEND_BYTES:
                        break
                    batch.append(e)
                    size += len(e.payload)
            call = self._receiver().deliver(
                self.spec.target,
                self.source,
                self.channel,
                [(e.seq, e.payload, e.watermark) for e in batch],
            )
            if not self._answers(call):
                self.up = False
                retry_at = time.monotonic() + backoff
                continue
            with self._cond:
                self._stats.extend(self._answer)
                while self._pending and self._pending[0].seq <= batch[-1].seq:
                    done = self._pending.popleft()
                    self._bytes -= len(done.payload)
                    self._rows -= done.rows
                self.acked = max(self.acked, batch[-1].seq)
                self.counters["delivered"] += len(batch)
                self._cond.notify_all()

    def _receiver(self, fresh: bool = False) -> ReceiverClient:
        """The site's receiver; ``fresh``: looked up again by name (the runtime may have
        started a new one in place of one that is gone)."""
        if fresh and self._rx.remote:
            handle = lookup(self._rx.name)
            if handle is not None:
                self._rx = type(self._rx)(handle)
        return self._rx

    def _answers(self, call: Any) -> bool:
        """Did ``call`` succeed within the timeout? (its result in ``self._answer``)"""
        try:
            done, _ = ready([call], 1, timeout=self.spec.timeout_s)
            if not done:
                raise TimeoutError(f"no answer within {self.spec.timeout_s} s")
            self._answer = resolve(done)[0]
            self.error = ""
            return True
        except Exception as err:  # a link down is not the shard's failure: retried
            self.counters["failures"] += 1
            self.error = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            return False
