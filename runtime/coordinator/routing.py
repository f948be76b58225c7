"""Routing: batches to the shards of their kind, with bounded batches in flight.

Each registered kind has a :class:`~runtime.entities.router.Router` (the deployment made
it with the kind's shards); :class:`Routing` is the runtime's view over all of them:
send without waiting, collect the stats of finished calls, wait for everything in flight
(a checkpoint's barrier), and single-entity calls routed by key.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pyarrow as pa

from runtime.cluster.handles import resolve
from runtime.coordinator.deployment import Deployment


class Routing:
    """Every kind's router, and the stats of shard calls not collected yet."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self._done: list[dict[str, float]] = []  # stats of finished shard calls

    def reset(self) -> None:
        self._done = []

    def dispatch(self, kind: str, events: pa.Table, watermark: int | None = None) -> None:
        """Send ``events`` to the shards of ``kind`` without waiting (bounded in flight);
        with the source's event-time ``watermark`` when the app tracks one."""
        self.deployment.kind(kind).router.send(events, watermark)

    def feedback(self, kind: str, rows: pa.Table) -> None:
        """Send rows of ``kind``'s feedback input (validated) to their shards, by key."""
        self.deployment.kind(kind).router.send(rows, feedback=True)

    def advance(self, kind: str, watermark: int) -> None:
        """Event time reached ``watermark``: every shard of ``kind`` fires what is due, and
        passes it on down the stages it forwards to."""
        self.deployment.kind(kind).router.advance(watermark)

    def inflight(self, kind: str) -> list[int]:
        """Batches in flight per shard of ``kind`` (each bounded by ``max_inflight``)."""
        return [len(p) for p in self.deployment.kind(kind).router.inflight]

    def collect(self, stats: list[dict[str, float]]) -> None:
        """Stats of shard calls finished elsewhere (e.g. by a checkpoint's drains)."""
        self._done.extend(stats)

    def poll(self) -> list[dict[str, float]]:
        """Stats of the shard calls finished since the last poll (does not block)."""
        for k in self.deployment.kinds.values():
            self._done.extend(k.router.poll())
        out, self._done = self._done, []
        return out

    def drain(self) -> list[dict[str, float]]:
        """Wait for every batch in flight; stats of all calls not collected yet."""
        for k in self.deployment.kinds.values():
            self._done.extend(k.router.drain())
        out, self._done = self._done, []
        return out

    def entity_state(self, kind: str, key: str) -> dict[str, Any]:
        return resolve([self.deployment.kind(kind).shard_for(key).get(key)])[0]

    def call_entity(self, kind: str, key: str, handler: str, *args: Any, **kwargs: Any) -> Any:
        shard = self.deployment.kind(kind).shard_for(key)
        return resolve([shard.call(key, handler, args, kwargs)])[0]

    def shard_stats(self) -> dict[str, list[dict[str, float]]]:
        return {n: resolve([s.stats() for s in k.shards]) for n, k in self.deployment.kinds.items()}


def sum_stats(stats: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for s in stats:
        for k, v in s.items():
            # "_lat..." are latency observations (runtime.observe.run), not counts
            if k != "outbox" and not k.startswith("_lat"):
                out[k] += v
    return dict(out)
