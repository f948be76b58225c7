"""Topics whose partitions live in the shards that publish to them.

A kind's output topics (alerts, predictions, summaries) are published by its shards.
Hosted by a topic actor of their own, every batch made two actor hops to a subscriber
(shard -> topic -> subscriber), and the topic spent a fifth of a core at 50,000 events/s
on Ray's per-call costs alone. Here each shard hosts one partition of each of them (an
ordinary one-partition :class:`~runtime.topics.topic.Topic`, labelled with the shard's index,
so its rows carry ``_partition``): publishing is a local call, and the shard pushes to
subscribers itself — one hop. Partition ``i`` holds what shard ``i`` emitted, so a key's
rows stay in one partition, in order.

:class:`ColocatedTopic` puts the partitions back together for everyone else: it answers
the calls a topic handle answers (subscribe, poll, commit, read, flush, stats, offsets)
by asking each shard's partition, and is what ``rt.topic(name)`` returns for such a
topic. Its offsets and consumer groups are saved with each checkpoint, partition by
partition, taken by the shards' drain at the cut.

>>> import pyarrow as pa
>>> from runtime.cluster.handles import resolve, spawn
>>> from runtime.entities.clients import ShardClient
>>> from runtime.entities.shard import Shard
>>> from runtime.testing import EchoTally
>>> import tempfile
>>> folder = tempfile.mkdtemp()
>>> shards = [ShardClient(spawn(Shard, EchoTally, None, i, 2, folder, outlets={"echo": outlet(i)}, name=f"s{i}", mode="local")) for i in range(2)]
>>> echo = ColocatedTopic("echo", shards)
>>> for i, s in enumerate(shards):
...     _ = resolve([s.outlet("echo", Topic.publish, pa.table({"x": [i]}))])
>>> got = echo.poll("g", 10).result()
>>> sorted(zip(got.column("_partition").to_pylist(), got.column("x").to_pylist()))
[(0, 0), (1, 1)]
>>> echo.end_offsets().result()
{0: 1, 1: 1}
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from runtime.cluster.handles import LocalFuture, resolve
from runtime.errors import ConfigError
from runtime.topics.topic import SNAPSHOT_VERSION, Topic

#: what a co-located topic partition answers through :meth:`runtime.entities.shard.Shard.outlet`
OUTLET_CALLS = frozenset(
    [
        "publish",
        "subscribe",
        "flush",
        "snapshot",
        "end_offsets",
        "first_offsets",
        "read",
        "poll",
        "commit",
        "committed",
        "seek_committed",
        "seek",
        "offsets_for_time",
        "groups",
        "stats",
    ]
)

if TYPE_CHECKING:
    from runtime.entities.clients import ShardClient
    from runtime.topics.clients import SubscriberClient

VERSION = 1


def _answered(fn: Callable[..., Any]) -> Callable[..., LocalFuture]:
    """A topic operation answered as a future (resolved already), as a client's would be:
    an error is raised where the caller resolves it."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> LocalFuture:
        try:
            return LocalFuture(fn(*args, **kwargs))
        except Exception as err:
            return LocalFuture(error=err)

    return call


def outlet(
    label: int,
    retention: tuple[int, int | None, float | None] = (1_000_000, None, None),
    snapshot: dict[str, Any] | None = None,
    log_dir: str | None = None,
) -> dict[str, Any]:
    """What a shard needs to host partition ``label`` of a topic (see ``Shard(outlets=)``);
    ``log_dir``: keep its log on disk there (``<data>/_topics``)."""
    return {"label": label, "retention": retention, "snapshot": snapshot, "log_dir": log_dir}


def split_snapshot(saved: dict[str, Any] | None, n: int) -> list[dict[str, Any] | None]:
    """Each of ``n`` partitions' share of a topic's saved snapshot; a snapshot of a topic
    that had its own actor (one partition) continues as partition 0."""
    if not saved:
        return [None] * n
    parts = saved.get("colocated")
    if parts is None:
        return [saved] + [None] * (n - 1)
    if len(parts) != n:
        raise ConfigError(
            f"topic {saved.get('name')!r} was saved with {len(parts)} partitions (one per "
            f"shard) and the kind now has {n} shards: start it with as many shards"
        )
    return list(parts)


def as_standalone(saved: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """(partitions, snapshot) for a topic actor continuing a topic saved partition by
    partition in shards (the topic is asked for before the kind that hosted it registers)."""
    parts = saved["colocated"]
    groups: dict[str, Any] = {}
    for p, part in enumerate(parts):
        for name, g in part.get("groups", {}).items():
            mine = groups.setdefault(
                name, {"committed": [0] * len(parts), "skipped": [0] * len(parts)}
            )
            mine["committed"][p] = g["committed"][0]
            mine["skipped"][p] = g["skipped"][0]
    return len(parts), {
        "version": SNAPSHOT_VERSION,
        "name": saved.get("name"),
        "round_robin": 0,
        "partitions": [part["partitions"][0] for part in parts],
        "groups": groups,
    }


class ColocatedTopic:
    """One topic over its partitions in ``shards`` (partition ``i`` in ``shards[i]``); answers
    what a :class:`~runtime.topics.clients.TopicClient` answers, with futures resolved already."""

    remote = False  # callers pack nothing for it: the shard calls do their own packing

    def __init__(self, name: str, shards: list[ShardClient], kind: str = "") -> None:
        self.name = name
        self.shards = list(shards)
        self.kind = kind  # the entity kind whose shards host it

    def kill(self) -> None:  # it is no actor: the shards go with their kind
        pass

    def _each(self, method: Callable[..., Any], *args: Any) -> list[Any]:
        return resolve([s.outlet(self.name, method, *args) for s in self.shards])

    def _one(self, partition: int, method: Callable[..., Any], *args: Any) -> Any:
        if not 0 <= int(partition) < len(self.shards):
            raise ConfigError(
                f"topic {self.name!r} has partitions 0..{len(self.shards) - 1}, not {partition!r}"
            )
        return resolve([self.shards[int(partition)].outlet(self.name, method, *args)])[0]

    # -- what a topic handle answers ---------------------------------------------------------
    @_answered
    def publish(self, rows: Any) -> int:
        """From a producer other than the shards: into partition 0."""
        self._one(0, Topic.publish, rows)
        return self.end_offset().result()

    @_answered
    def subscribe(
        self,
        name: str,
        subscriber: SubscriberClient,
        from_offset: Any = None,
        linger_s: float = 0.0,
    ) -> None:
        for p in range(len(self.shards)):
            start = from_offset.get(p) if isinstance(from_offset, dict) else from_offset
            self._one(p, Topic.subscribe, name, subscriber, start, linger_s)

    @_answered
    def flush(self) -> int:
        self._each(Topic.flush)
        return self.end_offset().result()

    @_answered
    def snapshot(self) -> dict[str, Any]:
        return {"version": VERSION, "name": self.name, "colocated": self._each(Topic.snapshot)}

    @_answered
    def end_offsets(self) -> dict[int, int]:
        return {p: ends[0] for p, ends in enumerate(self._each(Topic.end_offsets))}

    @_answered
    def end_offset(self) -> int:
        return sum(self.end_offsets().result().values())

    @_answered
    def first_offsets(self) -> dict[int, int]:
        return {p: firsts[0] for p, firsts in enumerate(self._each(Topic.first_offsets))}

    @_answered
    def read(self, offset: int = 0, max_rows: int = 100_000, partition: int = 0) -> pa.Table:
        return self._one(partition, Topic.read, offset, max_rows, 0)

    @_answered
    def poll(
        self, group: str, max_rows: int = 10_000, start: str = "earliest", partitions: Any = None
    ) -> pa.Table:
        """A fair share of ``max_rows`` from each partition, partition by partition."""
        chosen = sorted(range(len(self.shards)) if partitions is None else set(partitions))
        share, extra = divmod(max(0, max_rows), max(1, len(chosen)))
        got = [
            self._one(p, Topic.poll, group, share + (1 if i < extra else 0), start)
            for i, p in enumerate(chosen)
        ]
        got = [g for g in got if g.num_rows] or got[:1]
        return pa.concat_tables(got, promote_options="default") if got else pa.table({})

    @_answered
    def commit(self, group: str, offsets: dict[int, int] | int) -> None:
        items = offsets if isinstance(offsets, dict) else {0: offsets}
        for p, offset in items.items():
            self._one(p, Topic.commit, group, {0: int(offset)})

    @_answered
    def committed(self, group: str, partition: int = 0) -> int | None:
        return self._one(partition, Topic.committed, group, 0)

    @_answered
    def seek(self, group: str, offsets: dict[int, int] | int) -> int:
        """Each partition's shard moves the group (see :meth:`Topic.seek`)."""
        n = len(self.shards)
        items = offsets if isinstance(offsets, dict) else dict.fromkeys(range(n), offsets)
        ends = self.end_offsets().result()
        for p, o in items.items():  # every partition checked before any moves
            if int(p) in ends and isinstance(o, int) and o > ends[int(p)]:
                raise ConfigError(f"offset {o} of partition {p} is past its end ({ends[int(p)]})")
        return sum(self._one(p, Topic.seek, group, {0: o}) for p, o in items.items())

    @_answered
    def offsets_for_time(self, since: float) -> dict[int, int]:
        return {p: o[0] for p, o in enumerate(self._each(Topic.offsets_for_time, since))}

    @_answered
    def seek_committed(self, group: str) -> int:
        return sum(self._each(Topic.seek_committed, group))

    @_answered
    def groups(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for p, groups in enumerate(self._each(Topic.groups)):
            for name, g in groups.items():
                mine = out.setdefault(
                    name, {"position": 0, "committed": 0, "lag": 0, "skipped": 0, "partitions": {}}
                )
                for k in ("position", "committed", "lag", "skipped"):
                    mine[k] += g.get(k) or 0
                mine["partitions"][p] = {k: v for k, v in g.items() if k != "partitions"}
        return out

    @_answered
    def stats(self) -> dict[str, Any]:
        each = self._each(Topic.stats)
        out: dict[str, Any] = {
            k: sum(s[k] for s in each)
            for k in ("end_offset", "retained_rows", "retained_bytes", "pending")
        }
        out["first_offset"] = sum(s["first_offset"] for s in each)
        out["max_pending_seen"] = max(s["max_pending_seen"] for s in each)
        out["partitions"] = {p: s for p, s in enumerate(each)}
        return out
