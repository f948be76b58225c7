"""Backpressure on a real local Ray: a slow sink slows the source, and nothing queues without bound."""

from __future__ import annotations

import time

import pyarrow as pa

from runtime import App, Column, EventSchema, Runtime, run
from runtime.cluster.handles import resolve
from runtime.entities.shard import MAX_PENDING_PUBLISHES
from runtime.testing import EchoTally, MemorySource, SlowSink
from runtime.topics.topic import MAX_PENDING

SCHEMA = EventSchema("e", [Column("event_id", "int64"), Column("key", "string")])


def assert_backpressure(rt: Runtime, n_batches: int = 80, delay: float = 0.05) -> None:
    """Run a stream whose sink takes ``delay`` per batch; check the source was held back."""
    n = n_batches * 100
    events = pa.table({"event_id": list(range(n)), "key": [f"k{i % 13}" for i in range(n)]})
    seen_inflight, dispatched_at = [], []

    def watch(stats):
        seen_inflight.append(max(rt.routing.inflight("echo_tallies")))
        dispatched_at.append(time.perf_counter())

    rt.register(EchoTally)
    sink = rt.subscribe("echo", SlowSink, delay)
    t0 = time.perf_counter()
    stats = run(
        rt, App("echo", SCHEMA, EchoTally), MemorySource(events, batch_size=100), progress=watch
    )
    elapsed = time.perf_counter() - t0
    topic = resolve([rt.topic("echo").stats()])[0]
    received = resolve([sink.flush()])[0]
    assert stats.accepted == received == n  # nothing lost on the way
    # the source itself was held back: it could not hand over its last batch before the
    # sink had worked through all but the batches the bounded queues hold
    buffered = rt.config.max_inflight + MAX_PENDING_PUBLISHES + MAX_PENDING
    assert dispatched_at[-1] - t0 >= 0.6 * (n_batches - buffered - 4) * delay
    assert elapsed >= 0.8 * n_batches * delay
    # and every queue on the way stayed within its bound
    assert max(seen_inflight) <= rt.config.max_inflight
    assert topic["max_pending_seen"] <= MAX_PENDING + 1


def test_slow_sink_slows_the_source_and_queues_stay_bounded(ray_session, tmp_path):
    with Runtime(data_dir=str(tmp_path), mode="ray", shards=1, max_inflight=2) as rt:
        assert_backpressure(rt)
