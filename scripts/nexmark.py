"""NEXMark on the runtime: events/s per query, side by side with Flink's published figures.

Generates the standard NEXMark stream (``actors.nexmark.generator``), writes it to
``OUT/person.parquet``, ``OUT/auction.parquet``, ``OUT/bid.parquet``, then runs each
query (``actors.nexmark.queries``) on an embedded Ray with one shard per core and
writes its answer to ``OUT/qN.parquet``. Events/s counts every event of the stream
(persons, auctions and bids), as the nexmark/nexmark benchmark does, from the first
batch in to the last result published; starting the actors is timed apart.

Flink's figures are the per-core throughputs of the nexmark/nexmark README (8 nodes,
each with 8 cores), times this machine's cores.

    python scripts/nexmark.py [--events 1000000] [--out nexmark-out] [--queries q0,q5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from actors.nexmark.config import NexmarkConfig
from actors.nexmark.generator import generate, union, write
from actors.nexmark.queries import QUERIES, answer
from runtime import Runtime
from runtime.cluster.handles import init_ray
from runtime.dataflow.app import run, setup
from runtime.testing import MemorySource

#: events/s per core published for Flink in the nexmark/nexmark README
FLINK_PER_CORE = {
    "q0": 155_000,
    "q1": 158_000,
    "q2": 175_000,
    "q3": 152_000,
    "q4": 34_000,
    "q5": 22_000,
    "q7": 12_000,
    "q8": 146_000,
}


def run_query(q: str, stream: Any, out: Path, shards: int, batch: int) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory() as data,
        Runtime(
            data_dir=data,
            shards=shards,
            topic_retention_rows=stream.num_rows + 1,
            topic_retention_bytes=None,
            checkpoint_rows=10**9,
        ) as rt,
    ):
        app = QUERIES[q]().build()
        t0 = time.perf_counter()
        setup(rt, app)
        started = time.perf_counter() - t0
        stats = run(rt, app, MemorySource(stream, batch_size=batch, id=f"nexmark-{q}"))
        seconds = stats.seconds
        result = answer(q, rt.read_topic(q, 0, 10 * stream.num_rows + 1))
        late = int(stats.counters.get(f"{q}_late", 0))
    pq.write_table(result, out / f"{q}.parquet")
    eps = stream.num_rows / seconds
    flink = FLINK_PER_CORE[q] * shards
    return {
        "events_per_s": round(eps),
        "seconds": round(seconds, 3),
        "start_s": round(started, 2),
        "result_rows": result.num_rows,
        "late_events": late,
        "flink_events_per_s": flink,
        "vs_flink": round(eps / flink, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--out", default="nexmark-out")
    ap.add_argument("--queries", default=",".join(QUERIES))
    ap.add_argument("--shards", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--batch", type=int, default=50_000, help="events per source batch")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    queries = [q.strip() for q in args.queries.split(",") if q.strip()]
    unknown = sorted(set(queries) - set(QUERIES))
    if unknown:
        sys.exit(f"unknown queries {unknown}; choose from {sorted(QUERIES)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tables = generate(NexmarkConfig(events=args.events))
    write(tables, out)
    stream = union(tables)
    gen_s = time.perf_counter() - t0
    init_ray()  # one embedded Ray for every query: its start-up is not any query's
    results = {}
    for q in queries:
        results[q] = run_query(q, stream, out, args.shards, args.batch)
        if not args.json:
            r = results[q]
            print(
                f"{q}: {r['events_per_s']:>10,} events/s  (Flink x{args.shards} cores: "
                f"{r['flink_events_per_s']:>8,}, ratio {r['vs_flink']:>5})  "
                f"{r['result_rows']:,} result rows",
                flush=True,
            )
    report = {
        "events": args.events,
        "shards": args.shards,
        "cores": os.cpu_count(),
        "generate_s": round(gen_s, 2),
        "out": str(out.resolve()),
        "queries": results,
    }
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
