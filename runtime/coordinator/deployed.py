"""A registered kind as deployed: its shards in routing order and the router before them.

Calls that address entities by key (state, lookups, handlers) find their shard here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from runtime.cluster.handles import resolve
from runtime.entities.clients import ShardClient
from runtime.entities.kind import EntityKind
from runtime.entities.router import Router
from runtime.errors import ConfigError, UnknownEntityError
from runtime.state.keys import hash_keys, shard_of


@dataclass
class DeployedKind:
    """A registered kind: its shards (in routing order) and the router in front of them."""

    cls: type[EntityKind]
    config: Any
    shards: list[ShardClient]
    router: Router
    #: site-partitioned kinds: site -> indices into ``shards``; else {None: all}
    by_site: dict[str | None, list[int]] = field(default_factory=dict)
    per_site: int = 1
    #: topic -> the kind its rows go on to, shard to shard
    forward: dict[str, str] = field(default_factory=dict)

    def sites(self) -> list[str]:
        return [s for s in self.by_site if s is not None]

    def shards_by_site(self) -> dict[str, list[ShardClient]]:
        return {s: [self.shards[i] for i in idx] for s, idx in self.by_site.items() if s}

    def shard_for(self, key: str) -> ShardClient:
        """The shard hosting ``key``; for a site-partitioned kind, the one that knows it."""
        i = int(shard_of(hash_keys(pa.array([key])), self.per_site)[0])
        candidates = [self.shards[idx[i]] for idx in self.by_site.values()]
        if len(candidates) == 1:
            return candidates[0]
        for shard in candidates:  # a key lives at one site; ask each site's shard
            try:
                resolve([shard.get(key)])
                return shard
            except UnknownEntityError:
                continue
        return candidates[0]

    def lookup(self, keys: pa.Array | pa.ChunkedArray) -> pa.Table:
        """The state of the entities named by ``keys``, row for row: one call per shard."""
        keys, asked, back = self._by_shard(keys)
        got = resolve([self.shards[i].lookup(keys.take(pa.array(p))) for i, p in asked])
        if not got:
            return resolve([self.shards[0].lookup(keys)])[0]
        return pa.concat_tables(got).take(pa.array(back))

    def call_many(
        self,
        keys: list[str] | pa.Array | pa.ChunkedArray,
        handler: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> list[Any]:
        """``handler`` on each of ``keys``, one call per shard, results in key order."""
        keys, asked, back = self._by_shard(
            pa.array(keys, pa.string()) if isinstance(keys, list) else keys
        )
        futures = [
            self.shards[i].call_many(keys.take(pa.array(p)), handler, args, kwargs)
            for i, p in asked
        ]
        flat = [r for got in resolve(futures) for r in got]
        return [flat[i] for i in back.tolist()]

    def _by_shard(
        self, keys: pa.Array | pa.ChunkedArray
    ) -> tuple[pa.Array, list[tuple[int, np.ndarray]], np.ndarray]:
        """Keys as one string array; the positions each shard hosts; where each key's
        answer lands in the shards' answers concatenated."""
        if self.cls.site_key:
            raise ConfigError(
                f"entity kind {self.cls.name!r} is partitioned by site: address its entities "
                "at their site"
            )
        if isinstance(keys, pa.ChunkedArray):
            keys = keys.combine_chunks()
        if not pa.types.is_string(keys.type):
            keys = keys.cast(pa.string())
        sid = shard_of(hash_keys(keys), len(self.shards))
        asked = [(i, p) for i in range(len(self.shards)) if len(p := np.flatnonzero(sid == i))]
        order = np.concatenate([p for _, p in asked]) if asked else np.zeros(0, np.int64)
        back = np.empty(len(order), dtype=np.int64)
        back[order] = np.arange(len(order))
        return keys, asked, back
