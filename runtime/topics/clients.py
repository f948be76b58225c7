"""Typed clients of a topic actor and of a subscriber actor (see :mod:`runtime.cluster.clients`).

A topic hosted in its kind's shards (:class:`~runtime.topics.colocated.ColocatedTopic`)
answers the same methods, so callers hold a :data:`AnyTopic` and need not know which.

>>> import pyarrow as pa
>>> from runtime.cluster.handles import resolve, spawn
>>> from runtime.topics.topic import Topic
>>> alerts = TopicClient(spawn(Topic, "alerts", name="topic:alerts", mode="local"))
>>> resolve([alerts.publish(pa.table({"x": [1, 2]}))])
[2]
>>> resolve([alerts.poll("me", 10)])[0].column("x").to_pylist()
[1, 2]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import pyarrow as pa

from runtime.cluster.clients import ActorClient
from runtime.cluster.wire import pack
from runtime.topics.topic import Topic

if TYPE_CHECKING:
    from runtime.topics.colocated import ColocatedTopic


class Subscriber(Protocol):
    """What a topic pushes to: ``on_batch(rows)`` for every batch, ``flush()`` on demand."""

    def on_batch(self, rows: pa.Table) -> Any: ...

    def flush(self) -> Any: ...


class SubscriberClient(ActorClient):
    """Calls on a subscriber or sink actor (hosted through :func:`runtime.cluster.wire.receiving`)."""

    __slots__ = ()

    def on_batch(self, rows: pa.Table, packed: bytes | None = None) -> Any:
        """Push ``rows``; ``packed``: the same rows packed already (one packing for every
        subscriber of a batch)."""
        if not self.remote:
            return self._call(Subscriber.on_batch, rows)
        return self._call(Subscriber.on_batch, pack(rows) if packed is None else packed)

    def flush(self) -> Any:
        return self._call(Subscriber.flush)


class TopicClient(ActorClient):
    """Calls on a topic actor: publish, consumer groups, push subscribers, snapshots."""

    __slots__ = ()

    def publish(self, rows: pa.Table) -> Any:
        return self._call(Topic.publish, self._pack(rows))

    def poll(
        self,
        group: str,
        max_rows: int = 10_000,
        start: str = "earliest",
        partitions: list[int] | None = None,
    ) -> Any:
        return self._call(Topic.poll, group, max_rows, start, partitions)

    def commit(self, group: str, offsets: dict[int, int] | int) -> Any:
        return self._call(Topic.commit, group, offsets)

    def committed(self, group: str, partition: int = 0) -> Any:
        return self._call(Topic.committed, group, partition)

    def seek(self, group: str, offsets: dict[int, int] | int) -> Any:
        return self._call(Topic.seek, group, offsets)

    def offsets_for_time(self, since: float) -> Any:
        return self._call(Topic.offsets_for_time, since)

    def seek_committed(self, group: str) -> Any:
        return self._call(Topic.seek_committed, group)

    def groups(self) -> Any:
        return self._call(Topic.groups)

    def subscribe(
        self,
        name: str,
        subscriber: SubscriberClient,
        from_offset: int | dict[int, int] | None = None,
        linger_s: float = 0.0,
    ) -> Any:
        return self._call(Topic.subscribe, name, subscriber, from_offset, linger_s)

    def read(self, offset: int = 0, max_rows: int = 100_000, partition: int = 0) -> Any:
        return self._call(Topic.read, offset, max_rows, partition)

    def first_offsets(self) -> Any:
        return self._call(Topic.first_offsets)

    def end_offsets(self) -> Any:
        return self._call(Topic.end_offsets)

    def end_offset(self) -> Any:
        return self._call(Topic.end_offset)

    def flush(self) -> Any:
        return self._call(Topic.flush)

    def stats(self) -> Any:
        return self._call(Topic.stats)

    def snapshot(self) -> Any:
        return self._call(Topic.snapshot)

    def restore(self, snapshot: dict[str, Any]) -> Any:
        return self._call(Topic.restore, snapshot)


def read_all(topic: AnyTopic, offset: int = 0, max_rows: int = 100_000) -> pa.Table:
    """Rows retained from ``offset`` on, in every partition (partition by partition)."""
    from runtime.cluster.handles import resolve

    ends = resolve([topic.end_offsets()])[0]
    got = resolve([topic.read(offset, max_rows, p) for p in ends])
    return pa.concat_tables([g for g in got if g.num_rows] or got[:1], promote_options="default")


#: a topic with its own actor, or one hosted in its kind's shards
AnyTopic: TypeAlias = "TopicClient | ColocatedTopic"
