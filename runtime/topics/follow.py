"""Following a topic of a running runtime from another process (``tail``, live SQL, console).

A topic is either its own actor (``topic:<name>``) or, for a kind's outputs, partitions
hosted in the kind's shards (see :mod:`runtime.topics.colocated`); :func:`find_topic`
returns a handle for either, and :class:`Follower` reads it as a consumer group of its
own, committing what it handed out, so a follower never changes what other groups see.
"""

from __future__ import annotations

import uuid
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from runtime.cluster import names
from runtime.errors import ConfigError


def hosted_topics() -> dict[str, list[str]]:
    """Topics whose partitions live in shards, as the running runtime's board lists them."""
    from runtime.cluster.status import read_board

    return read_board().get("topics", {})


def topic_names() -> list[str]:
    """Every topic of the runtime this process is attached to."""
    from runtime.cluster.handles import named_actors

    actors = named_actors(names.TOPIC_PREFIX)
    return sorted({*(t.removeprefix(names.TOPIC_PREFIX) for t in actors), *hosted_topics()})


def find_topic(topic: str) -> Any:
    """A handle on ``topic`` of the runtime this process is attached to (``poll``,
    ``commit``, ``read``... return futures); ConfigError naming the topics if none."""
    from runtime.cluster.handles import named_actors
    from runtime.topics.clients import TopicClient

    handle = named_actors(names.TOPIC_PREFIX).get(names.topic(topic))
    if handle is not None:
        return TopicClient(handle)
    hosted = hosted_topics()
    if topic in hosted:
        from runtime.entities.clients import ShardClient
        from runtime.topics.colocated import ColocatedTopic

        shards = named_actors(names.SHARD_PREFIX)
        return ColocatedTopic(topic, [ShardClient(shards[n]) for n in hosted[topic] if n in shards])
    raise ConfigError(f"no topic {topic!r} in the running runtime; topics: {topic_names()}")


class Follower:
    """Reads ``topic`` as its own consumer group: from the oldest retained row
    (``from_beginning``), from offset ``start_at`` of every partition, from the first row
    published at or after ``since`` (wall-clock seconds), or from now on."""

    def __init__(
        self,
        topic: str,
        from_beginning: bool = False,
        prefix: str = "follow",
        start_at: int | None = None,
        since: float | None = None,
    ) -> None:
        from runtime.cluster.handles import resolve

        self.topic = topic
        self.handle = find_topic(topic)
        self.group = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.start = "earliest" if from_beginning else "latest"
        #: rows before this offset are not shown (a partition shorter than ``start_at``
        #: starts at its end, and shows its rows from ``start_at`` on)
        self.floor = 0
        if start_at is not None:
            ends = resolve([self.handle.end_offsets()])[0]
            if start_at > max(ends.values(), default=0):
                raise ConfigError(
                    f"offset {start_at} is past the end of topic {topic!r} (end offsets: {ends})"
                )
            self.floor = start_at
            resolve([self.handle.seek(self.group, {p: min(start_at, e) for p, e in ends.items()})])
        elif since is not None:
            offsets = resolve([self.handle.offsets_for_time(since)])[0]
            resolve([self.handle.seek(self.group, offsets)])

    def poll(self, max_rows: int = 1_000) -> pa.Table:
        """The next rows (possibly none), committed for this group as they are handed out."""
        from runtime.cluster.handles import resolve
        from runtime.topics.topic import OFFSET, next_offsets

        rows = resolve([self.handle.poll(self.group, max_rows, self.start)])[0]
        if rows.num_rows:
            resolve([self.handle.commit(self.group, next_offsets(rows))])
            if self.floor:
                rows = rows.filter(pc.greater_equal(rows.column(OFFSET), self.floor))
        return rows
