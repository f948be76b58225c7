"""Edge -> core forwarding: events/s shard to shard vs through the store-and-forward link.

Starts a core head and two edge nodes (sites eu-1, eu-2) on this machine and runs the
``relay`` test app (each site's tally forwards every event to the core's tally) with
``store_forward`` off (edge shard -> core shard Ray calls) and on (the durable log at
the edge, the receiver at the core), alternating, ``--runs`` times each; prints the
medians. Events/s counts the whole run, the links' final delivery included.

    python scripts/bench_forward.py [--events 200000] [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from runtime import Runtime
from runtime.cluster.local import LocalCluster
from runtime.ingest.sites import run_sites
from runtime.testing import MemorySource
from runtime.testing.edge import relay_app


def one_run(address: str, data: Path, sites: list[str], events: int, on: bool) -> float:
    per = events // len(sites)
    sources = {}
    for j, site in enumerate(sites):
        ids = list(range(j * per, (j + 1) * per))
        table = pa.table(
            {
                "event_id": ids,
                "key": [f"{site}-k{i % 500}" for i in ids],
                "site": [site] * per,
                "value": [1.0] * per,
            }
        )
        sources[site] = MemorySource(table, batch_size=2_000, id=f"bench-{site}")
    with Runtime(data_dir=str(data), address=address, shards=1, store_forward=on) as rt:
        t0 = time.perf_counter()
        stats = run_sites(rt, relay_app(tuple(sites)), sources)
        seconds = time.perf_counter() - t0
    assert stats.accepted == events, stats
    return events / seconds


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgecore-bench-forward-"))
    rates: dict[str, list[float]] = {"shard_to_shard": [], "store_forward": []}
    with LocalCluster(edges=2) as cluster:
        for r in range(args.runs):
            for label, on in (("shard_to_shard", False), ("store_forward", True)):
                rate = one_run(
                    cluster.address, work / f"{label}-{r}", cluster.sites, args.events, on
                )
                rates[label].append(round(rate))
    result = {
        "events": args.events,
        "runs": rates,
        "median_events_per_s": {k: round(statistics.median(v)) for k, v in rates.items()},
    }
    if args.json:
        print(json.dumps(result))
        return
    for label, values in rates.items():
        print(f"{label:16} median {statistics.median(values):>10,.0f} events/s  runs {values}")


if __name__ == "__main__":
    main()
