"""The checkpoint coordinator: what the last commit holds, and how the next one is taken.

Between commits it keeps what a commit must write besides the shards' state: the event
ids applied per scope (deduplication survives restarts), the dead letters, and the
event-time watermarks tracked where events come in. :meth:`Checkpointer.prepare` takes
one consistent cut of every shard (kinds that forward to others drained downstream
first); :meth:`Checkpointer.commit` writes it to LanceDB and commits it with the source
positions it reflects: one ``_checkpoints`` row naming every table version.
"""

from __future__ import annotations

import base64
import os
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from runtime.cluster.handles import resolve
from runtime.cluster.heap import trim_heap
from runtime.coordinator.config import RuntimeConfig
from runtime.edge.wiring import merge_cut
from runtime.errors import ConfigError, SnapshotError
from runtime.eventtime.watermarks import Watermarks
from runtime.ml.registry import METRICS, MODELS, ModelRegistry
from runtime.state.index import SeenSet, seen_sets
from runtime.state.snapshot import FIX, pack, unpack
from runtime.state.store import Checkpoint, Store
from runtime.streams.schema import DEAD_LETTER_SCHEMA, DEAD_LETTERS

if TYPE_CHECKING:
    from runtime.coordinator.deployment import Deployment
    from runtime.entities.kind import EntityKind
    from runtime.topics.clients import AnyTopic

SEEN = "_seen"
SNAPSHOTS = "_snapshots"
#: how to go on when a saved row is refused (see runtime.state.snapshot)
ROW_FIX = (
    "delete that row from the data folder's _snapshots table (that state starts empty), "
    "or start with a fresh --data folder"
)


def wrap_row(name: str, blob: bytes) -> bytes:
    """A ``_snapshots`` row as written: the kind's bytes in a snapshot envelope of kind
    ``_snapshots/<name>``, so every row carries its format version, its own name and a
    checksum, whatever the kind saves (its own state is an envelope too, for built-ins)."""
    return pack(f"{SNAPSHOTS}/{name}", {}, {"blob": np.frombuffer(blob, np.uint8)})


def unwrap_row(name: str, row: bytes, where: str) -> bytes:
    """The kind's bytes of ``_snapshots`` row ``name``; :class:`SnapshotError` naming it
    (``where``: the data folder) for a row that is not one edgecore wrote for that name."""
    place = f"{SNAPSHOTS} row {name!r} in {where}"
    state = unpack(row, f"{SNAPSHOTS}/{name}", where=place, fix=ROW_FIX)
    blob = state.arrays.get("blob")
    if blob is None or blob.dtype != np.uint8 or blob.ndim != 1:
        raise SnapshotError(f"{place} is malformed (no byte array): refused; {ROW_FIX}")
    return blob.tobytes()


def saved_snapshots(store: Store) -> dict[str, bytes]:
    """Every ``_snapshots`` row as the kinds saved it, checked (else SnapshotError)."""
    if not store.exists(SNAPSHOTS):
        return {}
    rows = store.read(SNAPSHOTS).to_pylist()
    return {r["kind"]: unwrap_row(r["kind"], r["blob"], str(store.path)) for r in rows}


#: test-only fault injection (runtime.testing.faults), read once: nothing to do when unset
_FAULTS = bool(os.environ.get("EDGECORE_FAULT"))


@dataclass
class PreparedCheckpoint:
    """A cut taken by :meth:`Checkpointer.prepare`, not written yet."""

    started: float
    #: (kind, key column, changed profiles)
    states: list[tuple[str, str, pa.Table]] = field(default_factory=list)
    snapshots: list[tuple[str, bytes]] = field(default_factory=list)
    #: (kind, snapshot, model card) of the snapshots that are models (registered at commit)
    models: list[tuple[str, bytes, dict[str, Any]]] = field(default_factory=list)
    dead: list[pa.Table] = field(default_factory=list)
    seen: list[tuple[str, np.ndarray]] = field(default_factory=list)
    topics: dict[str, Any] = field(default_factory=dict)
    watermarks: dict[str, str] = field(default_factory=dict)
    #: stats of shard calls the drains finished (the runtime reports them)
    shard_stats: list[dict[str, float]] = field(default_factory=list)
    #: edge links: the last entry each edge logged, what each core shard applied
    edge: dict[str, dict[str, Any]] = field(default_factory=lambda: {"sent": {}, "acks": {}})


class Checkpointer:
    """The last commit, and everything the next one must write besides the shards' state."""

    def __init__(self, config: RuntimeConfig, store: Store) -> None:
        self.config, self.store = config, store
        self.committed = Checkpoint()
        self.n_checkpoints = 0
        self.seen: dict[str, SeenSet] = {}
        self.watermarks: dict[str, Watermarks] = {}
        self._new_seen: list[tuple[str, np.ndarray]] = []
        self._dead: list[pa.Table] = []
        self._dead_pending: list[Any] = []
        self.models = ModelRegistry(store)
        #: kinds started from a champion an operator pinned (unpinned at their next commit)
        self._from_pinned: set[str] = set()

    def load(self) -> None:
        """Bring the data folder back to its last commit and load what lives in memory."""
        store = self.store
        cp = store.last_checkpoint()
        self.committed = store.recover(sorted({DEAD_LETTERS, SEEN, SNAPSHOTS, *cp.versions}))
        self.seen, self.watermarks = {}, {}
        self._new_seen, self._dead, self._dead_pending = [], [], []
        self._from_pinned = set()
        for scope, snap in self.committed.meta.get("watermarks", {}).items():
            where = (
                f"the watermarks of {scope!r} in checkpoint {self.committed.epoch} "
                f"(_checkpoints) in {store.path}"
            )
            try:
                blob = base64.b64decode(snap, validate=True)
            except (TypeError, ValueError):
                raise SnapshotError(f"{where} is not base64: refused; {FIX}") from None
            self.watermarks[scope] = Watermarks.restore(blob, where=where)
        if store.exists(SEEN):  # oldest first: forgotten first
            self.seen = seen_sets(store.read(SEEN), self.config.dedup_capacity)

    # -- what the last commit holds -----------------------------------------------------------
    def position(self, source_id: str) -> int:
        """Where ``source_id`` was when the last commit was taken (0 if never)."""
        return int(self.committed.positions.get(source_id, 0))

    def saved_edge(self) -> dict[str, Any]:
        """The edge links as the last commit left them (see runtime.edge.wiring)."""
        return self.committed.meta.get("edge", {})

    def saved_topic(self, name: str) -> dict[str, Any] | None:
        return self.committed.meta.get("topics", {}).get(name)

    def kind_snapshot(self, kind: str, kind_cls: type[EntityKind] | None = None) -> bytes | None:
        """What ``kind`` starts from: the champion model an operator promoted or rolled back
        to since (see runtime.ml.registry), else the last commit's snapshot."""
        pinned = self.models.start_from(kind, kind_cls)
        if pinned is not None:
            self._from_pinned.add(kind)
            return pinned
        if not self.store.exists(SNAPSHOTS):
            return None
        table = self.store.read(SNAPSHOTS)
        rows = table.filter(pc.equal(table.column("kind"), kind)).column("blob").to_pylist()
        # checked here, before any shard starts from it: a refused row stops the start
        return unwrap_row(kind, rows[0], str(self.store.path)) if rows else None

    def start_snapshots(
        self, kind_cls: type[EntityKind], total: int
    ) -> tuple[list[bytes | None], list[bytes | None]]:
        """What each of ``total`` shards of ``kind_cls`` starts from: (its kind snapshot,
        its own per-shard part)."""
        name = kind_cls.name
        if kind_cls.snapshot_scope == "shard":
            if self.kind_snapshot(f"{name}#{total}") is not None:
                raise ConfigError(
                    f"entity kind {name!r} keeps state per shard and was saved with more than "
                    f"{total} shards; start it with the same shards and sites"
                )
            return [self.kind_snapshot(f"{name}#{i}") for i in range(total)], [None] * total
        own = [self.kind_snapshot(f"{name}#{i}") for i in range(total)]
        if self.kind_snapshot(f"{name}#{total}") is not None or (
            any(b is not None for b in own) and any(b is None for b in own)
        ):
            # a shard's own part belongs to the keys it hosted: another layout cannot take
            # it over (what it held, e.g. scored events waiting for labels, is lost)
            warnings.warn(
                f"entity kind {name!r} was saved with another number of shards; its "
                "per-shard state (e.g. scored events waiting for labels) starts empty",
                stacklevel=2,
            )
            own = [None] * total
        return [self.kind_snapshot(name, kind_cls)] * total, own

    def is_committed(self, table: str) -> bool:
        return table in self.committed.versions

    # -- deduplication ------------------------------------------------------------------------
    def _seen_set(self, scope: str) -> SeenSet:
        if scope not in self.seen:
            self.seen[scope] = SeenSet(self.config.dedup_capacity)
        return self.seen[scope]

    def applied_ids(self, scope: str) -> np.ndarray:
        """The event ids applied in ``scope`` that the runtime remembers (for ingest stages)."""
        return self._seen_set(scope).ids()

    def record_applied(self, scope: str, event_ids: np.ndarray) -> None:
        """Ids an ingest stage deduplicated and applied; saved with the next checkpoint."""
        if len(event_ids):
            self._seen_set(scope).add(event_ids[~self._seen_set(scope).contains(event_ids)])
            self._new_seen.append((scope, np.asarray(event_ids, dtype=np.int64)))

    def dedup(self, scope: str, event_ids: np.ndarray) -> np.ndarray:
        """Mask of ids not applied before in ``scope`` (in this run or before the last commit)."""
        new = self._seen_set(scope).add_new(event_ids)
        if new.any():
            self._new_seen.append((scope, np.asarray(event_ids, dtype=np.int64)[new]))
        return new

    # -- dead letters -------------------------------------------------------------------------
    def dead_letter(self, rows: pa.Table, topic: AnyTopic | None) -> None:
        """Keep ``rows`` for the next commit; publish them on ``topic`` now (if given)."""
        if not rows.num_rows:
            return
        self._dead.append(rows)
        if topic is None:
            return
        self._dead_pending.append(topic.publish(rows))
        if len(self._dead_pending) > 8:  # bounded: a flood of bad input waits for the topic
            resolve(self._dead_pending[:-8])
            self._dead_pending = self._dead_pending[-8:]

    # -- event time ---------------------------------------------------------------------------
    def observe_time(self, scope: str, spec: Any, events: pa.Table, source: str) -> int:
        """Track the event time of ``events`` (per partition) for ``scope``; returns the
        watermark to send with them."""
        wm = self.watermarks.get(scope)
        if wm is None:
            wm = self.watermarks[scope] = Watermarks(spec.out_of_orderness_ms, spec.idle_ms)
        if events.num_rows:
            wm.observe_table(events, spec.column, spec.partition, source)
        return wm.current()

    def set_watermarks(self, scope: str, snapshot: bytes) -> None:
        """The event time a feeder tracks for ``scope`` (e.g. one site's), committed with
        the next checkpoint."""
        where = f"the watermarks a feeder sent for {scope!r}"
        self.watermarks[scope] = Watermarks.restore(snapshot, where=where)

    def watermark_snapshot(self, scope: str) -> bytes | None:
        """What the last commit (or a feeder since) recorded of ``scope``'s event time."""
        marks = self.watermarks.get(scope)
        return marks.snapshot() if marks is not None else None

    # -- the cut ------------------------------------------------------------------------------
    def prepare(
        self, deployment: Deployment, drains: dict[str, Any], started: float
    ) -> PreparedCheckpoint:
        """Every shard's changed state, the kind snapshots and the topic offsets, as one cut
        (in-flight batches must be waited for first). ``drains``: shard name -> a drain
        a feeder sent behind its last batch of the cut."""
        prepared = PreparedCheckpoint(started=started)
        # kinds forward only to kinds registered before them: drain the later ones first
        for name, k in reversed(deployment.kinds.items()):
            drained = resolve([drains[h.name] if h.name in drains else h.drain() for h in k.shards])
            prepared.shard_stats += [d.stats for d in drained if d.stats]
            for h, d in zip(k.shards, drained, strict=True):
                if d.edge:  # logged at the edge / applied at the core, as of the cut
                    prepared.edge["sent"].update(d.edge["sent"])
                    if d.edge["acks"]:
                        prepared.edge["acks"][h.name] = d.edge["acks"]
            for topic in deployment.hosted_topics(name):
                # partition offsets as of the cut, taken by the drain itself
                prepared.topics[topic] = {
                    "version": 1,
                    "name": topic,
                    "colocated": [d.outlets[topic] for d in drained],
                }
            tables = [d.table for d in drained if d.table is not None and d.table.num_rows]
            if tables:
                prepared.states.append(
                    (name, k.cls.key, pa.concat_tables(tables, promote_options="default"))
                )
            if k.cls.snapshot_scope == "shard":
                prepared.snapshots += [
                    (f"{name}#{i}", d.snapshot) for i, d in enumerate(drained) if d.snapshot
                ]
                continue
            # the kind's per-shard part (a log waiting for labels) beside the merged one
            prepared.snapshots += [(f"{name}#{i}", d.own) for i, d in enumerate(drained) if d.own]
            blobs = [d.snapshot for d in drained if d.snapshot is not None]
            kind = k.cls(None)
            merged = kind.merge_snapshots(blobs) if blobs else None
            if merged is not None:
                prepared.snapshots.append((name, merged))
                card = kind.model_card(merged)
                if card is not None:
                    prepared.models.append((name, merged, card))
                resolve([h.restore_kind(merged) for h in k.shards])
        prepared.dead, self._dead = self._dead, []
        prepared.seen, self._new_seen = self._new_seen, []
        resolve(self._dead_pending)  # the dead letters' topic has them before its snapshot
        self._dead_pending = []
        standalone = deployment.standalone_topics()
        prepared.topics.update(
            zip(standalone, resolve([t.snapshot() for t in standalone.values()]), strict=True)
        )
        prepared.watermarks = {
            s: base64.b64encode(w.snapshot()).decode() for s, w in self.watermarks.items()
        }
        return prepared

    def commit(
        self, prepared: PreparedCheckpoint, positions: dict[str, int] | None, kinds: list[str]
    ) -> Checkpoint:
        """Write a prepared cut, then commit it with the source ``positions`` it reflects."""
        store = self.store
        for name, key, table in prepared.states:
            store.upsert(name, table, key=key)
        if prepared.snapshots:
            blobs = pa.table(
                {
                    "kind": [n for n, _ in prepared.snapshots],
                    "blob": [wrap_row(n, b) for n, b in prepared.snapshots],
                },
                schema=pa.schema([("kind", pa.string()), ("blob", pa.binary())]),
            )
            store.upsert(SNAPSHOTS, blobs, key="kind")
        if prepared.dead:
            dead = pa.concat_tables(prepared.dead)
            store.upsert(DEAD_LETTERS, dead.cast(DEAD_LETTER_SCHEMA), key="dead_letter_id")
        if prepared.seen:
            self._append_seen(prepared.seen)
        if _FAULTS:  # every table of the cut written, the commit row not yet
            from runtime.testing.faults import fault_point

            fault_point("commit:after_tables")
        managed = [n for n in [*kinds, DEAD_LETTERS, SEEN, SNAPSHOTS] if store.exists(n)]
        previous = self.committed
        cp = Checkpoint(
            epoch=previous.epoch + 1,
            started_at=prepared.started,
            positions={**previous.positions, **(positions or {})},
            versions={**previous.versions, **{n: store.version(n) for n in managed}},
            meta={
                **previous.meta,
                # topics not started in this run keep their last saved offsets
                "topics": {**previous.meta.get("topics", {}), **prepared.topics},
                "watermarks": prepared.watermarks,
                "edge": merge_cut(previous.meta.get("edge"), prepared.edge),
            },
        )
        store.commit(cp)
        self.committed = cp
        for name, blob, card in prepared.models:  # after the commit: only committed models
            self.models.committed(name, blob, card)
            if name in self._from_pinned:  # grown from the pinned champion: start from it now
                self.models.unpin(name)
                self._from_pinned.discard(name)
        self.n_checkpoints += 1
        if self.n_checkpoints % self.config.compact_every == 0:
            self._trim_seen(cp.epoch)
            # the model registry's tables get a version per checkpoint too: unbounded
            # versions and fragments in a long run (seen in scripts/soak.py) unless compacted
            history = [n for n in (MODELS, METRICS) if store.exists(n)]
            for n in [*managed, "_checkpoints", *history]:
                store.compact(
                    n,
                    keep_newer_than=previous.started_at or prepared.started,
                    keep_version=cp.versions.get(n),
                )
            # the caches' entries of the versions just deleted are dead weight: 1M
            # profiles upserted 15k at a time held 222 MB after 50 checkpoints, 0 with
            # this; the next upsert, re-reading the key index, took 105 ms instead of 62
            store.forget_cached()
        trim_heap()  # what the cut's tables and LanceDB's writes freed (runtime.cluster.heap)
        return cp

    def _append_seen(self, seen: list[tuple[str, np.ndarray]]) -> None:
        ids = np.concatenate([i for _, i in seen])
        names = pa.array([s for s, _ in seen], pa.string())
        scope = names.take(pa.array(np.repeat(np.arange(len(seen)), [len(i) for _, i in seen])))
        epoch = np.full(len(ids), self.committed.epoch + 1, dtype=np.int64)
        self.store.append(
            SEEN, pa.table({"scope": scope, "event_id": pa.array(ids, pa.int64()), "epoch": epoch})
        )

    def _trim_seen(self, epoch: int) -> None:
        """Keep each scope's applied ids near the dedup capacity: drop whole old epochs."""
        if not self.store.exists(SEEN):
            return
        table, cap = self.store.table(SEEN), self.config.dedup_capacity
        for scope in self.seen:
            where = f"scope = '{scope}'"
            if table.count_rows(where) <= cap:
                continue
            lo, hi = 0, epoch  # the largest cutoff e with rows(epoch >= e) >= capacity
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if table.count_rows(f"{where} AND epoch >= {mid}") >= cap:
                    lo = mid
                else:
                    hi = mid - 1
            if lo > 0:
                table.delete(f"{where} AND epoch < {lo}")
