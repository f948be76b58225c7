"""Store-and-forward at the edge, on a real multi-node Ray: one core head, edges eu-1, eu-2.

Each site's ``site_relays`` shard (at its edge) forwards every event to the core's
``relay_tallies`` through its durable log and the site's receiver at the core. The
tests cut the edge's path to the core by stopping the receivers' processes (SIGSTOP: a
partition - calls neither answer nor fail), then end it by SIGKILL (Ray starts the
receiver again) or SIGCONT (the partition heals and the calls queued in it run late),
and check the edge went on meanwhile and the core's totals come out exact.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from runtime import Runtime
from runtime.cluster import names
from runtime.cluster.handles import resolve
from runtime.ingest.sites import run_sites
from runtime.state.store import Store
from runtime.testing import MemorySource
from runtime.testing.edge import relay_app

SITES = ("eu-1", "eu-2")


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "labels": {"role": "core", "site": "core"}},
    )
    for site in SITES:
        c.add_node(num_cpus=1, labels={"role": "edge", "site": site})
    c.wait_for_nodes()
    ray.init(address=c.address, namespace="edgecore")
    yield c
    ray.shutdown()
    c.shutdown()


def readings(n: int, keys: int = 40) -> pa.Table:
    return pa.table(
        {
            "event_id": list(range(n)),
            "key": [f"k{i % keys}" for i in range(n)],
            "site": [SITES[(i % keys) % 2] for i in range(n)],
            "value": [float(i % 7) for i in range(n)],
        }
    )


def sources(events: pa.Table) -> dict[str, MemorySource]:
    return {
        s: MemorySource(events.filter(pc.equal(events["site"], s)), batch_size=100, id=f"r-{s}")
        for s in SITES
    }


def expected(events: pa.Table) -> dict[str, tuple[int, float]]:
    n = Counter(events.column("key").to_pylist())
    total: dict[str, float] = {}
    for k, v in zip(events.column("key").to_pylist(), events.column("value").to_pylist()):
        total[k] = total.get(k, 0.0) + v
    return {k: (n[k], total[k]) for k in n}


def core_totals(data: Path) -> dict[str, tuple[int, float]]:
    return {r["key"]: (r["n"], r["total"]) for r in Store(data).read("relay_tallies").to_pylist()}


def receiver_pids() -> list[int]:
    import ray

    out = []
    for site in SITES:
        actor = ray.get_actor(names.receiver("site_relays", site), namespace="edgecore")
        out.append(ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=60))
    return out


def signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        os.kill(pid, sig)


def config(tmp_path: Path, **over) -> dict:
    return {
        "data_dir": str(tmp_path),
        "shards": 1,
        "checkpoint_rows": 1_500,
        "link_timeout_s": 1.0,
        "link_settle_s": 60.0,
        **over,
    }


def test_edge_goes_on_while_its_receivers_are_cut_off_and_the_core_ends_exact(cluster, tmp_path):
    events = readings(6_000)
    seen: dict = {"phase": 0}

    def watch(stats):
        now = time.monotonic()
        if seen["phase"] == 0 and stats.input >= 1_200:
            seen.update(phase=1, pids=receiver_pids(), at=now, input=stats.input)
            seen["checkpoints"] = stats.checkpoints
            signal_all(seen["pids"], signal.SIGSTOP)  # the path to the core is cut
        elif seen["phase"] == 1:
            time.sleep(0.2)  # a paced source: the cut lasts a few seconds of stream
            if now - seen["at"] >= 3.0:
                seen["links"] = rt.status()["links"]
                seen["edge_went_on"] = stats.input - seen["input"]
                seen["checkpoints_while_cut"] = stats.checkpoints - seen["checkpoints"]
                signal_all(seen["pids"], signal.SIGKILL)  # Ray starts them again
                seen.update(phase=2, restored=now)
                threading.Thread(target=time_the_drain, daemon=True).start()

    def time_the_drain():
        shards = rt.shards_of("site_relays")
        while time.monotonic() - seen["restored"] < 60:
            links = [lk for got in resolve([s.link_status() for s in shards]) for lk in got]
            if all(lk["up"] and lk["buffered_entries"] == 0 for lk in links):
                seen["drain_s"] = time.monotonic() - seen["restored"]
                return
            time.sleep(0.2)

    with Runtime(address=cluster.address, **config(tmp_path)) as rt:
        stats = run_sites(rt, relay_app(SITES), sources(events), step_rows=200, progress=watch)
        where = {p["actor"]: p for p in rt.placement()}
    assert stats.restarts == 0 and stats.accepted == stats.input == 6_000
    assert where[names.receiver("site_relays", "eu-1")]["role"] == "core"
    assert where["shard:site_relays:eu-1:0"]["site"] == "eu-1"
    # while cut off: the edge took in more, held it for the core, and checkpoints went on
    links = seen["links"]
    assert {lk["site"] for lk in links} == set(SITES)
    assert not any(lk["up"] for lk in links), links
    assert all(lk["buffered_bytes"] > 0 and lk["buffered_rows"] > 0 for lk in links), links
    print(f"while cut off: {seen['edge_went_on']} events in, {seen['checkpoints_while_cut']} checkpoints")
    assert seen["edge_went_on"] >= 1_000 and seen["checkpoints_while_cut"] >= 1
    assert core_totals(tmp_path) == expected(events)  # 0 lost, 0 doubled
    print(f"backlog drained {seen.get('drain_s', -1):.2f} s after the receivers were killed")
    assert "drain_s" in seen, "the backlog never drained"
    edge = {r["key"]: r["n"] for r in Store(tmp_path).read("site_relays").to_pylist()}
    assert edge == {k: n for k, (n, _) in expected(events).items()}
    assert {p.parent.parent.name for p in (tmp_path / "_edge").rglob("seg-*.log")} == set(SITES)


def test_a_full_buffer_stops_the_intake_until_the_partition_heals(cluster, tmp_path):
    """The edge holds at most edge_buffer_bytes for the core: then its source waits. The
    calls stuck in the partition run when it heals, beside the sender's resends: the
    core applies each entry once."""
    events = readings(4_000)
    ticks: list[tuple[float, int]] = []
    seen: dict = {}

    def watch(stats):
        ticks.append((time.monotonic(), stats.input))
        if "pids" not in seen and stats.input >= 1_200:
            seen["pids"] = receiver_pids()
            signal_all(seen["pids"], signal.SIGSTOP)
            seen["at"] = time.monotonic()
            threading.Timer(4.0, signal_all, (seen["pids"], signal.SIGCONT)).start()

    with Runtime(address=cluster.address, **config(tmp_path, edge_buffer_bytes=20_000)) as rt:
        stats = run_sites(rt, relay_app(SITES), sources(events), step_rows=200, progress=watch)
        links = rt.status()["links"]
    assert stats.restarts == 0 and stats.accepted == stats.input == 4_000
    # the intake stood still while the receivers were cut off, and went on after
    during = [(t, n) for t, n in ticks if seen["at"] <= t]
    gap = max(b[0] - a[0] for a, b in zip(during, during[1:]))
    assert gap >= 2.5, f"the intake never waited (longest pause {gap:.2f} s)"
    assert any(lk["blocked_s"] > 2.0 for lk in links), links
    print(f"intake paused {gap:.2f} s with the buffer full")
    assert all(lk["failures"] >= 1 and lk["buffered_entries"] == 0 for lk in links), links
    assert core_totals(tmp_path) == expected(events)


def test_a_restart_of_the_whole_run_resends_the_log_from_the_committed_point(cluster, tmp_path):
    """Entries logged before a checkpoint and not yet at the core survive a restart of
    every actor (an edge shard killed): the log keeps them until the core commits them."""
    import ray

    events = readings(4_000)
    seen: dict = {}

    def watch(stats):
        if "pids" not in seen and stats.input >= 1_200:
            seen.update(pids=receiver_pids(), checkpoints=stats.checkpoints)
            signal_all(seen["pids"], signal.SIGSTOP)
        elif "pids" in seen and "killed" not in seen:
            edge = rt.checkpoints.committed.meta.get("edge", {})
            sent = edge.get("sent", {})
            acked = edge.get("acks", {}).get("shard:relay_tallies:0", {})
            if stats.checkpoints > seen["checkpoints"] and any(
                seq > acked.get(src, 0) for src, seq in sent.items()
            ):  # committed with entries the core has not got yet
                seen["killed"] = stats.input
                signal_all(seen["pids"], signal.SIGKILL)
                ray.kill(ray.get_actor("shard:site_relays:eu-1:0", namespace="edgecore"))

    with Runtime(address=cluster.address, **config(tmp_path)) as rt:
        stats = run_sites(rt, relay_app(SITES), sources(events), step_rows=200, progress=watch)
    assert "killed" in seen and stats.restarts >= 1
    assert stats.accepted == stats.input == 4_000
    assert core_totals(tmp_path) == expected(events)
