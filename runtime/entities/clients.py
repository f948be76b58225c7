"""The typed client of a shard actor (see :mod:`runtime.cluster.clients`).

>>> import tempfile, pyarrow as pa
>>> from runtime.cluster.handles import resolve, spawn
>>> from runtime.entities.shard import Shard
>>> from runtime.state.keys import hash_keys
>>> from runtime.testing import Tally
>>> shard = ShardClient(spawn(Shard, Tally, None, 0, 1, tempfile.mkdtemp(), name="s", mode="local"))
>>> events = pa.table({"key": ["a"], "_key_hash": hash_keys(pa.array(["a"]))})
>>> _ = resolve([shard.apply(events)])
>>> resolve([shard.get("a")])[0]["n"]
1
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa

from runtime.cluster.clients import ActorClient
from runtime.entities.shard import Shard


class ShardClient(ActorClient):
    """Calls on one shard: batches in, state and snapshots out, its topic partitions."""

    __slots__ = ()

    # -- the hot path ------------------------------------------------------------------------
    def apply(self, events: pa.Table) -> Any:
        """Apply a batch (with ``_key_hash``); its stats when done."""
        return self._call(Shard.apply, self._pack(events))

    def feedback(self, rows: pa.Table) -> Any:
        """Hand rows of the kind's feedback input (labels) to the kind; its stats when done."""
        return self._call(Shard.feedback, self._pack(rows))

    def advance(self, watermark: int, channel: str = "source") -> Any:
        return self._call(Shard.advance, watermark, channel)

    def set_inputs(self, channels: list[str]) -> Any:
        return self._call(Shard.set_inputs, channels)

    # -- checkpoints ---------------------------------------------------------------------------
    def drain(self) -> Any:
        """A :class:`~runtime.entities.shard.Drained` cut of the shard."""
        return self._call(Shard.drain)

    def live_snapshot(self) -> Any:
        """A :class:`~runtime.entities.calls.LiveState`: every entity of the shard, now."""
        return self._call(Shard.live_snapshot)

    def snapshot_kind(self) -> Any:
        return self._call(Shard.snapshot_kind)

    def restore_kind(self, blob: Any) -> Any:
        """Load a kind snapshot: bytes, None, or the future of another shard's
        :meth:`merge_kind` (handed over when done; the caller does not wait)."""
        return self._call(Shard.restore_kind, blob)

    def merge_kind(self, snapshots: list[Any]) -> Any:
        """Merge the futures of every shard's :meth:`snapshot_kind` and load the result
        here, as this shard's next call; its future holds the merged snapshot."""
        return self._call(Shard.merge_kind, *snapshots)

    # -- single entities -----------------------------------------------------------------------
    def get(self, key: str) -> Any:
        return self._call(Shard.get, key)

    def call(
        self,
        key: str,
        handler_name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        return self._call(Shard.call, key, handler_name, args, kwargs)

    def call_many(
        self,
        keys: pa.Array,
        handler_name: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        """One handler on many keys (one result per key, in order)."""
        return self._call(Shard.call_many, keys, handler_name, args, kwargs)

    def lookup(self, keys: pa.Array) -> Any:
        return self._call(Shard.lookup, keys)

    # -- topic partitions hosted here (runtime.topics.colocated) -----------------------------
    def outlet(self, topic: str, method: str | Callable[..., Any], *args: Any) -> Any:
        """Call ``method`` (a :class:`~runtime.topics.topic.Topic` method) on this shard's
        partition of ``topic``."""
        name = method if isinstance(method, str) else method.__name__
        if name == "publish":
            args = (self._pack(args[0]),)
        return self._call(Shard.outlet, topic, name, *args)

    # -- edge links (runtime.edge) ------------------------------------------------------------
    def link_mark(self, source: str, seq: int) -> Any:
        return self._call(Shard.link_mark, source, seq)

    def link_status(self) -> Any:
        return self._call(Shard.link_status)

    def trim_links(self, upto: dict[str, int]) -> Any:
        return self._call(Shard.trim_links, upto)

    def settle_links(self, timeout_s: float) -> Any:
        return self._call(Shard.settle_links, timeout_s)

    def close_links(self) -> Any:
        return self._call(Shard.close_links)

    # -- health --------------------------------------------------------------------------------
    def stats(self) -> Any:
        return self._call(Shard.stats)

    def ping(self) -> Any:
        return self._call(Shard.ping)
