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
>>> from runtime.cluster.handles import spawn
>>> from runtime.entities.shard import Shard
>>> from runtime.testing import EchoTally
>>> import tempfile
>>> folder = tempfile.mkdtemp()
>>> shards = [spawn(Shard, EchoTally, None, i, 2, folder, outlets={"echo": outlet(i)}, name=f"s{i}", mode="local") for i in range(2)]
>>> echo = ColocatedTopic("echo", shards)
>>> for s in shards:
...     _ = s.target.outlet("echo", "publish", pa.table({"x": [s.target.shard_id]}))
>>> got = echo.call("poll", "g", 10).result()
>>> sorted(zip(got.column("_partition").to_pylist(), got.column("x").to_pylist()))
[(0, 0), (1, 1)]
>>> echo.call("end_offsets").result()
{0: 1, 1: 1}
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from runtime.cluster.handles import Handle, LocalFuture, resolve
from runtime.cluster.wire import pack_for
from runtime.errors import ConfigError

VERSION = 1


def outlet(
    label: int,
    retention: tuple[int, int | None, float | None] = (1_000_000, None, None),
    snapshot: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What a shard needs to host partition ``label`` of a topic (see ``Shard(outlets=)``)."""
    return {"label": label, "retention": retention, "snapshot": snapshot}


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
        "version": VERSION,
        "name": saved.get("name"),
        "round_robin": 0,
        "partitions": [part["partitions"][0] for part in parts],
        "groups": groups,
    }


class ColocatedTopic:
    """One topic over its partitions in ``shards`` (partition ``i`` in ``shards[i]``); behaves
    like a topic's handle: ``call(method, *args)`` gives a future (resolved already)."""

    mode = "local"  # callers pack nothing for it: the shard calls do their own packing

    def __init__(self, name: str, shards: list[Handle], kind: str = "") -> None:
        self.name = name
        self.shards = list(shards)
        self.kind = kind  # the entity kind whose shards host it

    def call(self, method: str, *args: Any, **kwargs: Any) -> LocalFuture:
        fn = getattr(self, f"_{method}", None)
        if fn is None:
            raise ConfigError(f"topic {self.name!r} has no operation {method!r}")
        try:
            return LocalFuture(fn(*args, **kwargs))
        except Exception as err:  # delivered at resolve(), as for any handle
            return LocalFuture(error=err)

    def kill(self) -> None:  # it is no actor: the shards go with their kind
        pass

    def _each(self, method: str, *args: Any) -> list[Any]:
        return resolve([s.call("outlet", self.name, method, *args) for s in self.shards])

    def _one(self, partition: int, method: str, *args: Any) -> Any:
        if not 0 <= int(partition) < len(self.shards):
            raise ConfigError(
                f"topic {self.name!r} has partitions 0..{len(self.shards) - 1}, not {partition!r}"
            )
        return resolve([self.shards[int(partition)].call("outlet", self.name, method, *args)])[0]

    # -- what a topic handle answers ---------------------------------------------------------
    def _publish(self, rows: Any) -> int:
        """From a producer other than the shards: into partition 0."""
        shard = self.shards[0]
        self._one(0, "publish", pack_for(shard, rows) if isinstance(rows, pa.Table) else rows)
        return self._end_offset()

    def _subscribe(
        self, name: str, handle: Handle, from_offset: Any = None, linger_s: float = 0.0
    ) -> None:
        for p in range(len(self.shards)):
            start = from_offset.get(p) if isinstance(from_offset, dict) else from_offset
            self._one(p, "subscribe", name, handle, start, linger_s)

    def _flush(self) -> int:
        self._each("flush")
        return self._end_offset()

    def _snapshot(self) -> dict[str, Any]:
        return {"version": VERSION, "name": self.name, "colocated": self._each("snapshot")}

    def _end_offsets(self) -> dict[int, int]:
        return {p: ends[0] for p, ends in enumerate(self._each("end_offsets"))}

    def _end_offset(self) -> int:
        return sum(self._end_offsets().values())

    def _first_offsets(self) -> dict[int, int]:
        return {p: firsts[0] for p, firsts in enumerate(self._each("first_offsets"))}

    def _read(self, offset: int = 0, max_rows: int = 100_000, partition: int = 0) -> pa.Table:
        return self._one(partition, "read", offset, max_rows, 0)

    def _poll(
        self, group: str, max_rows: int = 10_000, start: str = "earliest", partitions: Any = None
    ) -> pa.Table:
        """A fair share of ``max_rows`` from each partition, partition by partition."""
        chosen = sorted(range(len(self.shards)) if partitions is None else set(partitions))
        share, extra = divmod(max(0, max_rows), max(1, len(chosen)))
        got = [
            self._one(p, "poll", group, share + (1 if i < extra else 0), start)
            for i, p in enumerate(chosen)
        ]
        got = [g for g in got if g.num_rows] or got[:1]
        return pa.concat_tables(got, promote_options="default") if got else pa.table({})

    def _commit(self, group: str, offsets: dict[int, int] | int) -> None:
        items = offsets if isinstance(offsets, dict) else {0: offsets}
        for p, offset in items.items():
            self._one(p, "commit", group, {0: int(offset)})

    def _committed(self, group: str, partition: int = 0) -> int | None:
        return self._one(partition, "committed", group, 0)

    def _seek_committed(self, group: str) -> int:
        return sum(self._each("seek_committed", group))

    def _groups(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for p, groups in enumerate(self._each("groups")):
            for name, g in groups.items():
                mine = out.setdefault(
                    name, {"position": 0, "committed": 0, "lag": 0, "skipped": 0, "partitions": {}}
                )
                for k in ("position", "committed", "lag", "skipped"):
                    mine[k] += g.get(k) or 0
                mine["partitions"][p] = {k: v for k, v in g.items() if k != "partitions"}
        return out

    def _stats(self) -> dict[str, Any]:
        each = self._each("stats")
        out: dict[str, Any] = {
            k: sum(s[k] for s in each)
            for k in ("end_offset", "retained_rows", "retained_bytes", "pending")
        }
        out["first_offset"] = sum(s["first_offset"] for s in each)
        out["max_pending_seen"] = max(s["max_pending_seen"] for s in each)
        out["partitions"] = {p: s for p, s in enumerate(each)}
        return out
