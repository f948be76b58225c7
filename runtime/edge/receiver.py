"""The core end of the links from one site: entries in, the core kind's shards apply them.

One receiver per (edge kind, site) runs at the core. It holds no state of its own: each
entry it gets is tagged with its source and sequence number and routed by key to the
target kind's shards (:class:`~runtime.entities.router.Router`); once all of them
applied a call's entries, it tells every target shard the source is whole up to the
last one (so that shards that got no rows of it move on too) and answers. The sender
at the edge counts an entry delivered only on that answer, and sends again what was
not answered; the shards drop what they applied before (:mod:`runtime.edge.inbox`).

>>> import tempfile, pyarrow as pa
>>> from runtime.cluster.handles import resolve, spawn
>>> from runtime.edge.log import to_payload
>>> from runtime.entities.clients import ShardClient
>>> from runtime.entities.shard import Shard
>>> from runtime.testing import Tally
>>> shards = [ShardClient(spawn(Shard, Tally, None, i, 2, tempfile.mkdtemp(), name=f"s{i}", mode="local")) for i in range(2)]
>>> rx = Receiver("eu-1", {"tallies": (Tally, shards, 2, [])})
>>> entries = [(1, to_payload(pa.table({"key": ["a", "b", "a"]})), None)]
>>> sum(s["rows"] for s in rx.deliver("tallies", "edge>out", "edge", entries))
3
>>> sum(s["rows"] for s in rx.deliver("tallies", "edge>out", "edge", entries))  # again: once
0
>>> sum(s["rows"] for s in resolve([shard.stats() for shard in shards]))
3
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime.cluster.clients import ActorClient
from runtime.cluster.handles import lookup, resolve
from runtime.edge.inbox import link_tag
from runtime.edge.log import read_payload
from runtime.entities.kind import EntityKind
from runtime.entities.router import Router, ingested_at
from runtime.errors import ActorFailedError, ConfigError

if TYPE_CHECKING:
    from runtime.entities.clients import ShardClient

#: (target kind, its shards in routing order - clients, or names in Ray -, shards per
#: site, sites)
Target = tuple[type[EntityKind], "list[ShardClient] | list[str]", int, list[str]]


class Receiver:
    """Plain class; the deployment hosts one per (edge kind, site) at the core."""

    def __init__(self, site: str, targets: dict[str, Target], max_inflight: int = 2) -> None:
        self.site = site
        self.targets, self.max_inflight = targets, max_inflight
        self.routers: dict[str, Router] = {}
        self.delivered = 0  # entries delivered (again ones included), for status

    def _router(self, target: str) -> Router:
        """The router to ``target``'s shards; in Ray they are named, not handed over, so
        that Ray can start the receiver again from its arguments alone."""
        if target not in self.routers:
            if target not in self.targets:
                raise ConfigError(f"receiver at {self.site!r} has no target kind {target!r}")
            from runtime.entities.clients import ShardClient

            cls, shards, per_site, sites = self.targets[target]
            clients = (
                [ShardClient(h) for h in map(lookup, shards) if h]
                if (shards and isinstance(shards[0], str))
                else shards
            )
            if len(clients) != len(shards):
                raise ActorFailedError(f"receiver at {self.site!r}: a shard of {target!r} is gone")
            self.routers[target] = Router(cls, clients, per_site, sites or None, self.max_inflight)
        return self.routers[target]

    def deliver(
        self, target: str, source: str, channel: str, entries: list[tuple[int, bytes, int | None]]
    ) -> list[dict[str, float]]:
        """Apply ``entries`` (seq, Arrow IPC payload, watermark) of ``source`` to the
        shards of ``target``, in order; the shards' stats once all are applied."""
        router = self._router(target)
        for seq, payload, watermark in entries:
            table = read_payload(payload)
            if table is None:
                if watermark is not None:
                    router.advance(watermark, channel)
                continue
            router.send(
                link_tag(table, source, seq), watermark, channel, ingested=ingested_at(table)
            )
        stats = router.drain()
        if entries:  # whole up to the last: shards that got none of it move on too
            resolve([s.link_mark(source, entries[-1][0]) for s in router.shards])
        self.delivered += len(entries)
        return stats

    def ping(self) -> str:
        return self.site


class ReceiverClient(ActorClient):
    """Calls on a :class:`Receiver` actor."""

    __slots__ = ()

    def deliver(
        self, target: str, source: str, channel: str, entries: list[tuple[int, bytes, int | None]]
    ) -> Any:
        return self._call(Receiver.deliver, target, source, channel, entries)

    def ping(self) -> Any:
        return self._call(Receiver.ping)
