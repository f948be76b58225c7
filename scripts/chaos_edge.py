"""The ``edge`` scenario of the chaos matrix: an edge node removed mid-stream.

A real multi-node Ray on this machine (``ray.cluster_utils.Cluster``: a core head and
two edge nodes, sites eu-1 and eu-2) runs the site-partitioned ledger
(runtime.testing.ledger.site_ledger_app) with each site's ingest stage and shards at that
site's edge; eu-2's node is removed at a random point of the stream, and every event is
accounted for afterwards. One cluster serves every seed (the node comes back between).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
from chaos_procs import progress, wait_until
from chaos_scenarios import Result, _late, _watch_recovery, fault_fraction, judge

from runtime.testing.ledger import ledger_events, site_ledger_app

SITES = ("eu-1", "eu-2")


class EdgeCluster:
    """A core head and one edge node per site, with this process attached (namespace
    edgecore); :meth:`restore` brings back a removed edge node."""

    def __init__(self) -> None:
        import ray
        from ray.cluster_utils import Cluster

        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 1, "labels": {"role": "core", "site": "core"}},
        )
        self.edges: dict[str, Any] = {}
        self.restore()
        ray.init(address=self.cluster.address, namespace="edgecore", log_to_driver=False)

    def restore(self) -> None:
        for site in SITES:
            if site not in self.edges:
                self.edges[site] = self.cluster.add_node(
                    num_cpus=1, labels={"role": "edge", "site": site}
                )
        self.cluster.wait_for_nodes()

    def remove(self, site: str) -> None:
        self.cluster.remove_node(self.edges.pop(site))

    def close(self) -> None:
        import ray

        ray.shutdown()
        self.cluster.shutdown()


def run_edge(cluster: EdgeCluster, seed: int, n: int, work: Path, seconds: float) -> Result:
    """Each site's share of the stream read at its edge, paced; eu-2's node removed when
    the data folder has committed the fault point."""
    from runtime import Runtime
    from runtime.cluster.placement import DefaultPolicy, Placement
    from runtime.ingest.sites import run_sites
    from runtime.streams.sources import Paced
    from runtime.testing import MemorySource

    res = Result("edge", seed, n)
    cluster.restore()
    events = ledger_events(n, seed, bad_every=50, sites=SITES)
    data = work / "data"
    app = site_ledger_app(SITES)
    by_site = {s: events.filter(pa.compute.equal(events["site"], s)) for s in SITES}
    batch = max(20, n // 200)
    sources = {
        s: Paced(MemorySource(t, batch_size=batch, id=f"ledger-{s}"), t.num_rows / seconds)
        for s, t in by_site.items()
    }
    at = int(fault_fraction("edge", seed) * n)
    policy = DefaultPolicy(overrides={"site_ledgers": Placement("edge")})
    every = max(batch, n // 20)

    def fault() -> None:
        if not wait_until(lambda: progress(data) >= at, 600):
            res.why.append("! the stream did not reach the fault point")
            return
        before = progress(data)
        if _late(res, before, n, False):
            return
        cluster.remove("eu-2")
        t_fault = time.monotonic()
        res.why.append(f"removed eu-2's node after position {before}")
        _watch_recovery(res, data, before, t_fault)

    watcher = threading.Thread(target=fault, daemon=True)
    watcher.start()
    with Runtime(
        data_dir=str(data),
        address=cluster.cluster.address,
        policy=policy,
        shards=1,
        checkpoint_rows=every,
    ) as rt:
        stats = run_sites(rt, app, sources, step_rows=batch)
    watcher.join(60)
    if not stats.restarts:
        res.why.append("the runtime did not restart (it did not notice the fault)")
    return judge(res, events, data, entries="site_entries")
