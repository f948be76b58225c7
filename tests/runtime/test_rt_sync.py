"""Kind replicas synced between checkpoints (``Deployment.sync_kinds``), in-process and
across Ray: after a sync every replica holds exactly what all shards learned from the
batches sent before it, plus what it learned itself after; and across Ray the caller
does not wait for the sync (it is queued on the shards behind their batches)."""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import pyarrow as pa
import pytest
from ray import cloudpickle

from runtime import Batch, EntityKind, Runtime
from runtime.cluster.handles import ready, resolve
from runtime.errors import ActorFailedError
from runtime.state.keys import hash_keys, shard_of

cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Learner(EntityKind):
    """A replica remembers every (batch, key) it learned from; merging unites replicas.
    An apply waits ``delay`` seconds, so that batches are still running at a sync."""

    name = "learners"
    key = "key"
    state = {"n": "int64"}

    def __init__(self, config: object = None) -> None:
        super().__init__(config)
        self.learned: set[tuple[int, str]] = set()

    def apply(self, batch: Batch) -> None:
        np.add.at(batch.state.cols["n"], batch.slots, 1)
        ev = batch.events
        time.sleep(float(ev.column("delay")[0].as_py()))
        b = int(ev.column("batch")[0].as_py())
        self.learned.update((b, k) for k in ev.column("key").to_pylist())

    def snapshot(self) -> bytes:
        return json.dumps(sorted(self.learned)).encode()

    def restore(self, blob: bytes) -> None:
        self.learned = {(b, k) for b, k in json.loads(blob)}

    def merge_snapshots(self, blobs: list[bytes]) -> bytes | None:
        return json.dumps(sorted({(b, k) for blob in blobs for b, k in json.loads(blob)})).encode()


KEYS = [f"k{i}" for i in range(40)]


def batch(b: int, delay: float = 0.0) -> pa.Table:
    return pa.table(
        {"key": KEYS, "batch": [b] * len(KEYS), "delay": [delay] * len(KEYS)},
    )


def replicas(rt: Runtime) -> list[set[tuple[int, str]]]:
    blobs = resolve([s.snapshot_kind() for s in rt.shards_of("learners")])
    return [{(b, k) for b, k in json.loads(blob)} for blob in blobs]


@pytest.mark.parametrize("mode", ["local", "ray"])
def test_a_sync_merges_exactly_the_batches_sent_before_it(ray_session, tmp_path, mode):
    delay = 0.3 if mode == "ray" else 0.0
    with Runtime(data_dir=str(tmp_path), mode=mode, shards=2) as rt:
        rt.register(Learner)
        for b in range(3):
            rt.dispatch("learners", batch(b, delay))
        rt.deployment.sync_kinds()
        if mode == "ray":
            # queued behind batches still running: the caller did not wait for them
            pending = list(rt.deployment._syncing)
            assert pending and ready(pending, len(pending), timeout=0)[1]
        for b in (3, 4):
            rt.dispatch("learners", batch(b))
        rt.routing.drain()
        rt.deployment.settle_syncs()
        got = replicas(rt)
    owner = shard_of(hash_keys(pa.array(KEYS)), 2)
    before = {(b, k) for b in range(3) for k in KEYS}
    for i in range(2):
        own_after = {(b, k) for b in (3, 4) for k, o in zip(KEYS, owner, strict=True) if o == i}
        assert own_after  # both shards have keys of their own
        assert got[i] == before | own_after


def test_a_failed_sync_surfaces_at_the_next_checkpoint(ray_session, tmp_path):
    class Refusing(Learner):
        name = "refusing"

        def merge_snapshots(self, blobs: list[bytes]) -> bytes | None:
            raise ValueError("replicas of different shapes")

    with (
        pytest.raises(ActorFailedError, match="different shapes"),
        Runtime(data_dir=str(tmp_path), mode="ray", shards=2) as rt,
    ):
        rt.register(Refusing)
        rt.dispatch("refusing", batch(0))
        rt.deployment.sync_kinds()  # does not wait: nothing raised yet
        rt.checkpoint()
