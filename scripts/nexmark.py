"""NEXMark on the runtime: events/s per query, side by side with Flink's published figures.

By default each query (``actors.nexmark.queries``) reads the standard NEXMark stream from
:class:`actors.nexmark.source.NexmarkSource`, which generates it while the query runs,
padded like the reference generator (``extra``): that is how Flink's figures are
measured (its source generates events as the job consumes them). Events/s counts every
event of the stream (persons, auctions and bids), as the nexmark/nexmark benchmark does,
from the first event generated to the last result published. Starting the query's
actors (``start_s``) is timed apart and reported beside it, with the query's wall time
including it (``wall_s``); starting Ray is once for all queries (``ray_init_s``).

``--pregenerated`` also runs every query the old way, on the stream generated before the
timing (and written to ``OUT/{person,auction,bid}.parquet``), and checks that each
answer equals the one with generation inside the run; a difference exits with 1.
``--no-extra`` leaves ``extra`` empty (unpadded events, to compare). Each answer goes to
``OUT/qN.parquet``.

Flink's figures are the per-core throughputs of the nexmark/nexmark README (8 nodes,
each with 8 cores), times this machine's cores.

    python scripts/nexmark.py [--events 1000000] [--queries q0,q5] [--pregenerated]
        [--no-extra] [--out nexmark-out] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file from anywhere

from actors.nexmark.config import NexmarkConfig  # noqa: E402
from actors.nexmark.generator import generate, union, write  # noqa: E402
from actors.nexmark.queries import QUERIES, answer  # noqa: E402
from actors.nexmark.source import NexmarkSource  # noqa: E402
from runtime import Runtime  # noqa: E402
from runtime.cluster.handles import init_ray  # noqa: E402
from runtime.dataflow.app import run, setup  # noqa: E402
from runtime.streams.sources import Source  # noqa: E402
from runtime.testing import MemorySource  # noqa: E402

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
MODES = ("generating", "pregenerated")


def run_query(q: str, source: Source, events: int, shards: int) -> tuple[dict[str, Any], pa.Table]:
    """One query on a fresh runtime: its figures and its answer."""
    cores = os.cpu_count() or shards
    with tempfile.TemporaryDirectory() as data:
        t0 = time.perf_counter()
        with Runtime(
            data_dir=data,
            shards=shards,
            topic_retention_rows=events + 1,
            topic_retention_bytes=None,
            checkpoint_rows=10**9,
        ) as rt:
            app = QUERIES[q]().build()
            setup(rt, app)
            started = time.perf_counter() - t0
            stats = run(rt, app, source)
            wall = time.perf_counter() - t0
            result = answer(q, rt.read_topic(q, 0, 10 * events + 1))
    if stats.input != events:
        raise RuntimeError(f"{q}: {stats.input:,} events in, not {events:,}")
    eps = events / stats.seconds
    flink = FLINK_PER_CORE[q] * cores
    figures = {
        "events": events,
        "events_per_s": round(eps),
        "seconds": round(stats.seconds, 3),
        "flink_events_per_s": flink,
        "vs_flink": round(eps / flink, 2),
        "start_s": round(started, 2),
        "wall_s": round(wall, 2),
        "result_rows": result.num_rows,
        "late_events": int(stats.counters.get(f"{q}_late", 0)),
    }
    return figures, result


def canonical(t: pa.Table) -> pa.Table:
    """Rows in a fixed order, to compare answers whatever order the shards gave them."""
    return t.sort_by([(c, "ascending") for c in t.column_names]).combine_chunks()


def print_row(q: str, mode: str, r: dict[str, Any]) -> None:
    print(
        f"{q:<3} {mode:<12} {r['events']:>10,} {r['events_per_s']:>12,} "
        f"{r['flink_events_per_s']:>10,} {r['vs_flink']:>7.2f} {r['start_s']:>8.2f} "
        f"{r['wall_s']:>7.2f} {r['result_rows']:>9,}",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--out", default="nexmark-out")
    ap.add_argument("--queries", default=",".join(QUERIES))
    ap.add_argument("--shards", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--batch", type=int, default=50_000, help="events per source batch")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--prefetch", type=int, default=2, help="chunks generated ahead (0: inline)")
    ap.add_argument("--no-extra", action="store_true", help="leave extra empty (no padding)")
    ap.add_argument(
        "--pregenerated", action="store_true", help="also run on the stream generated before"
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    queries = [q.strip() for q in args.queries.split(",") if q.strip()]
    unknown = sorted(set(queries) - set(QUERIES))
    if unknown:
        sys.exit(f"unknown queries {unknown}; choose from {sorted(QUERIES)}")
    if args.events < 1:
        sys.exit("--events must be at least 1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = NexmarkConfig(
        events=args.events, seed=args.seed, extra_bytes=0 if args.no_extra else None
    )
    report: dict[str, Any] = {
        "events": args.events,
        "shards": args.shards,
        "cores": os.cpu_count(),
        "config": dataclasses.asdict(config),
        "out": str(out.resolve()),
    }
    stream = None
    if args.pregenerated:
        t0 = time.perf_counter()
        tables = generate(config)
        stream = union(tables)
        report["generate_s"] = round(time.perf_counter() - t0, 2)
        write(tables, out)
    t0 = time.perf_counter()
    init_ray()  # one embedded Ray for every query: its start-up is not any query's
    report["ray_init_s"] = round(time.perf_counter() - t0, 2)
    if not args.json:
        print(f"ray.init {report['ray_init_s']} s; padding: {'off' if args.no_extra else 'on'}")
        print(
            f"{'q':<3} {'mode':<12} {'events':>10} {'events/s':>12} {'Flink x' + str(os.cpu_count()):>10} "
            f"{'ratio':>7} {'start s':>8} {'wall s':>7} {'rows':>9}"
        )
    results: dict[str, dict[str, Any]] = {}
    mismatched = []
    for q in queries:
        results[q] = {}
        source = NexmarkSource(config, batch_size=args.batch, prefetch=args.prefetch)
        figures, got = run_query(q, source, args.events, args.shards)
        results[q]["generating"] = figures
        pq.write_table(got, out / f"{q}.parquet")
        if not args.json:
            print_row(q, "generating", figures)
        if stream is not None:
            memory = MemorySource(stream, batch_size=args.batch, id=f"nexmark-{q}")
            figures, old = run_query(q, memory, args.events, args.shards)
            figures["same_answer"] = canonical(old).equals(canonical(got))
            results[q]["pregenerated"] = figures
            if not figures["same_answer"]:
                mismatched.append(q)
            if not args.json:
                print_row(q, "pregenerated", figures)
    report["queries"] = results
    if mismatched:
        report["mismatched"] = mismatched
    if args.json:
        print(json.dumps(report))
    elif stream is not None:
        print("answers equal in both modes" if not mismatched else f"ANSWERS DIFFER: {mismatched}")
    if mismatched:
        sys.exit(1)


if __name__ == "__main__":
    main()
