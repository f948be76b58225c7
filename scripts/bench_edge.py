"""Edge reduction on a simulated multi-node cluster: events/s and what crosses edge -> core.

Starts a core head node and two edge nodes (sites eu-1, eu-2) on this machine, then
runs the same synthetic fleet telemetry twice in one invocation:

* **edge**: the default policy, device shards at the edge of their site; only window
  summaries and maintenance alerts cross to the core topics and tables;
* **core**: every device shard placed at the core, as if raw readings were shipped
  there (what crosses is every raw reading).

Prints events/s of both and rows/bytes crossing edge -> core, and the ratios.

    python scripts/bench_edge.py [--events 400000] [--devices 2000] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from actors.devices.app import demo_source, device_app
from runtime import Runtime
from runtime.cluster.local import LocalCluster
from runtime.cluster.placement import DefaultPolicy, Placement
from runtime.ingest.sites import run_sites


def one_run(
    cluster: LocalCluster, data: Path, policy: DefaultPolicy, events: int, devices: int
) -> dict[str, Any]:
    app = dataclasses.replace(device_app(), sites=tuple(cluster.sites))
    per_site = events // len(app.sites)
    sources = {s: demo_source(per_site, None, devices, sites=app.sites, site=s) for s in app.sites}
    with Runtime(data_dir=str(data), address=cluster.address, policy=policy, shards=1) as rt:
        stats = run_sites(rt, app, sources)
        where = {
            p["actor"]: f"{p['role']}/{p['site']}"
            for p in rt.placement()
            if p["actor"].startswith("shard:")
        }
    a = stats.app
    at_edge = all(v.startswith("edge") for v in where.values())
    return {
        "events_per_s": round(stats.events_per_s),
        "seconds": round(stats.seconds, 2),
        "shards": where,
        # with shards at the core, raw readings are what crosses from the edge
        "crossed_rows": a["crossed_rows"] if at_edge else a["raw_rows"],
        "crossed_bytes": a["crossed_bytes"] if at_edge else a["raw_bytes"],
        "raw_rows": a["raw_rows"],
        "raw_bytes": a["raw_bytes"],
        "maintenance_alerts": a["maintenance_rows"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--events", type=int, default=400_000)
    ap.add_argument("--devices", type=int, default=2_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgecore-bench-edge-"))
    t0 = time.perf_counter()
    with LocalCluster(edges=2) as cluster:
        edge = one_run(cluster, work / "edge", DefaultPolicy(), args.events, args.devices)
        core = one_run(
            cluster,
            work / "core",
            # raw readings shipped: ingest and device state at the core
            DefaultPolicy(overrides={"devices": Placement("core"), "ingest": Placement("core")}),
            args.events,
            args.devices,
        )
    result = {
        "events": args.events,
        "devices": args.devices,
        "nodes": "1 core + 2 edge (eu-1, eu-2), one machine",
        "edge_reduction": edge,
        "raw_to_core": core,
        "rows_ratio": round(core["crossed_rows"] / max(edge["crossed_rows"], 1), 2),
        "bytes_ratio": round(core["crossed_bytes"] / max(edge["crossed_bytes"], 1), 2),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.events:,} telemetry readings, {args.devices:,} devices, {result['nodes']}")
    print(f"{'':22}{'events/s':>10}{'rows to core':>14}{'bytes to core':>15}")
    for label, r in (("edge reduction", edge), ("raw readings to core", core)):
        print(
            f"{label:22}{r['events_per_s']:>10,}{r['crossed_rows']:>14,}{r['crossed_bytes']:>15,}"
        )
    print(
        f"edge reduction sends {result['rows_ratio']}x fewer rows and {result['bytes_ratio']}x fewer bytes to the core"
    )
    print(f"shards: edge run {edge['shards']}; core run {core['shards']}")


if __name__ == "__main__":
    main()
