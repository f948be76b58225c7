"""Push subscribers of a topic: deliveries in order, batched by linger, bounded in flight.

A topic pushes each published batch to every subscriber's ``on_batch`` without waiting
(the calls are pipelined); at most ``MAX_PENDING`` deliveries wait at once, so a slow
subscriber slows its publishers instead of filling memory. A subscriber with a linger
gets batches held and pushed together once the oldest held one has waited that long
(or at a flush or snapshot): one call for many, for sinks writing tables.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from runtime.cluster.handles import ready, resolve
from runtime.cluster.wire import pack

if TYPE_CHECKING:
    from runtime.topics.clients import SubscriberClient

MAX_PENDING = 16


class Pushes:
    """Every push subscriber of one topic, and the deliveries not yet acknowledged."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.now = clock
        self.subscribers: dict[str, SubscriberClient] = {}
        self._linger: dict[str, float] = {}
        self._held: dict[str, list[pa.Table]] = {}
        self._held_since: dict[str, float] = {}
        self._pending: list[Any] = []
        self.max_pending_seen = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def add(
        self, name: str, subscriber: SubscriberClient, linger_s: float, backlog: pa.Table
    ) -> None:
        """Push to ``subscriber`` from now on, ``backlog`` first (if it has rows)."""
        self.subscribers[name] = subscriber
        if linger_s > 0:
            self._linger[name] = linger_s
            self._held.setdefault(name, [])
        if backlog.num_rows:
            self._pending.append(subscriber.on_batch(backlog))

    def deliver(self, batch: pa.Table, born: float) -> None:
        """Push ``batch`` to every subscriber (packed once for all across Ray)."""
        packed = None
        for name, sub in self.subscribers.items():
            if name in self._linger:  # held back to be pushed with the next ones
                self._hold(name, batch, born)
                continue
            if sub.remote:
                packed = pack(batch) if packed is None else packed
            self._pending.append(sub.on_batch(batch, packed))
        self.max_pending_seen = max(self.max_pending_seen, len(self._pending))
        if len(self._pending) > MAX_PENDING:  # a slow subscriber slows publishers
            done, self._pending = ready(self._pending, len(self._pending) - MAX_PENDING)
            resolve(done)

    def _hold(self, name: str, batch: pa.Table, now: float) -> None:
        held = self._held[name]
        if not held:
            self._held_since[name] = now
        held.append(batch)
        if now - self._held_since[name] >= self._linger[name]:
            self._release(name)

    def _release(self, name: str) -> None:
        held, self._held[name] = self._held.get(name, []), []
        if held:
            rows = pa.concat_tables(held, promote_options="default")
            self._pending.append(self.subscribers[name].on_batch(rows))

    def release_all(self) -> None:
        """Push every held batch now."""
        for name in self._linger:
            self._release(name)

    def flush(self) -> None:
        """Wait until subscribers took every batch, and ask them to flush."""
        self.release_all()
        pending, self._pending = self._pending, []  # a failure is reported once, not forever
        resolve(pending)
        resolve([s.flush() for s in self.subscribers.values()])
