"""A LanceDB writer's heap over many checkpoints: glibc's default arenas vs the runtime's cap.

    python scripts/lance_heap.py [--writes 600] [--rows 7500] [--upsert] [--json]

Each side runs in a fresh interpreter: a table sink's loop, one write of ``--rows``
alert-shaped rows per checkpoint into a growing table (an upsert by ``event_id`` with
``--upsert``, as ``TableSink`` does for alerts; an append otherwise), a compaction every
20 writes and a heap trim after each, as the runtime does. It samples the process's
anonymous memory as it goes and prints both curves; the capped side gets
``MALLOC_ARENA_MAX`` the way the embedded Ray's workers do (inherited), the default
side has ``EDGECORE_MALLOC_ARENAS=0``.

Measured (2 cores, 600 appends of 7,500 rows): 97 -> 246 MB with glibc's default, still
climbing; 97 -> 141 MB with 2 arenas, flat after ~180 writes (runtime/cluster/heap.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LOOP = r"""
import json, os, sys, tempfile, time
import numpy as np, pyarrow as pa
from runtime.cluster.heap import limit_arenas, trim_heap
cap = limit_arenas()
from runtime.state.store import Store

def anon():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) // 1024 for l in f if l.startswith("RssAnon"))

writes, per, upsert = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
store, rng, samples, t0 = Store(tempfile.mkdtemp()), np.random.default_rng(0), [], time.perf_counter()
for i in range(writes):
    keys = rng.permutation(np.arange(i * per, (i + 1) * per, dtype=np.int64))
    ts = pa.array(np.full(per, 1_700_000_000_000, "datetime64[ms]"))
    data = pa.table({
        "event_id": keys, "customer_id": pa.array([f"c{k % 50_000}" for k in keys]),
        "score": rng.random(per), "reason": pa.array([["amount"]] * per, pa.list_(pa.string())),
        "amount": rng.random(per) * 100, "model_version": np.ones(per, np.int64), "ts": ts,
    })
    if upsert:
        store.upsert("alerts", data, key="event_id")
    else:
        store.append("alerts", data)
    if i % 20 == 19:
        store.compact("alerts", keep_newer_than=time.time() - 60)
    trim_heap(force=True)
    if i % max(1, writes // 20) == 0 or i == writes - 1:
        samples.append((i + 1, anon()))
print(json.dumps({"cap": cap, "env": os.environ.get("MALLOC_ARENA_MAX"), "samples": samples,
                  "seconds": round(time.perf_counter() - t0, 1)}))
"""


def side(arenas: str, args: argparse.Namespace) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    env.update(EDGECORE_MALLOC_ARENAS=arenas, PYTHONPATH=str(ROOT))
    if arenas != "0":  # from the first allocation, as a worker of the embedded Ray has it
        env["MALLOC_ARENA_MAX"] = arenas
    cmd = [sys.executable, "-c", LOOP, str(args.writes), str(args.rows), str(int(args.upsert))]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--writes", type=int, default=600)
    ap.add_argument("--rows", type=int, default=7_500)
    ap.add_argument("--upsert", action="store_true", help="merge_insert by key, as TableSink")
    ap.add_argument("--arenas", default="2", help="the capped side's arenas")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    out = {"default": side("0", args), "capped": side(args.arenas, args)}
    for s in out.values():
        anon = [a for _, a in s["samples"]]
        s["first_mb"], s["last_mb"], s["max_mb"] = anon[0], anon[-1], max(anon)
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{'writes':>8} {'default MB':>11} {'capped MB':>10}")
    for (n, a), (_, b) in zip(out["default"]["samples"], out["capped"]["samples"], strict=True):
        print(f"{n:8d} {a:11d} {b:10d}")
    for name, s in out.items():
        print(
            f"{name}: {s['first_mb']} -> {s['last_mb']} MB (max {s['max_mb']}) in {s['seconds']} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
