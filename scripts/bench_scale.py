"""Benchmark: many customers through the runtime under a memory budget, then a restart.

    python scripts/bench_scale.py [--customers 10000000] [--events 20000000]
                                  [--budget-mb 512 | --max-active N] [--shards 2]
                                  [--restore 1000000] [--sample 1000] [--json]

1. Load: ``--events`` generated purchases (``scripts/scale_stream.py``: every customer
   once in a first pass, then Zipf-skewed activity) go through a counting kind on an
   embedded local Ray with ``--shards`` shards. Each shard keeps at most ``max_active``
   entities in memory (``--max-active``, or ``--budget-mb`` split over the shards and
   turned into entities by the runtime's own per-entity estimate); the least recently
   used are passivated and come back from LanceDB when their customer appears again.
   Every ``--interval`` s a sampler records the RSS of the driver + every ``ray::``
   worker (the shards apart), and the shards' counters: active entities, passivated and
   activated (loaded back) per second. A table of that timeline is printed.
2. Restart: the runtime stops (final checkpoint); a new one starts on the same data
   folder. Timed: (a) start-up until the kind's shards answer (they learn which keys are
   stored), (b) ``Runtime.lookup`` of ``--restore`` distinct stored customers, the
   batch read a stream-state join uses (each shard brings them back from LanceDB).
3. Exactness: for ``--sample`` random customers the stored profiles (read with DuckDB
   over the data folder, as ``edgecore sql`` does) and the restored ones (from the
   lookup) are compared with sums computed from the stream regenerated from its seed;
   so are the table's row count, total events and total cents. Any mismatch: exit 1.

A guard stops the intake (then commits) if the machine's used memory passes
``--stop-above-gb``: the report then says how far the run got.

Targets: 10 M customers with the hot set in memory and the rest passivated; a restore of
1 M profiles after a restart in <= 5 s; sums exact.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import PeakRss  # noqa: E402
from scale_stream import SCHEMA, ScaleSource, Tally, check, customer_keys  # noqa: E402

from runtime import App  # noqa: E402

# the restart forks Ray's services after LanceDB was loaded in this process (harmless here)
warnings.filterwarnings("ignore", message="lancedb fork support")
MB = 1024 * 1024
TARGET_RESTORE_S = 5.0
KIND = Tally.name


class Timeline(PeakRss):
    """PeakRss plus a row every ``interval`` s: RSS now (all, shards) and shard counters."""

    def __init__(self, interval: float, stop_above: float, stop: threading.Event) -> None:
        super().__init__(interval)
        self.stop_above, self.halt = stop_above, stop
        self.rt: Any = None
        self.events = 0  # input so far, set by the run's progress callback
        self.rows: list[dict[str, float]] = []
        self.halted_at: dict[str, float] | None = None
        self._shard_pids: set[int] = set()
        self._t0 = time.perf_counter()
        self._last: dict[str, float] = {}

    def sample(self) -> None:
        for p in self.me.children(recursive=True):  # every time: a row must see every shard
            if p.pid not in self._known:
                try:
                    self._known[p.pid] = (p, any("ray::" in part for part in p.cmdline()))
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
        super().sample()
        now = time.perf_counter() - self._t0
        driver = self.me.memory_info().rss
        workers = shards = shards_anon = 0
        for pid, (p, is_worker) in list(self._known.items()):
            try:
                mem = p.memory_info()
                if is_worker and pid not in self._shard_pids and "Shard" in " ".join(p.cmdline()):
                    self._shard_pids.add(pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            workers += mem.rss if is_worker else 0
            if pid in self._shard_pids:
                # anonymous = the heap; the rest is mapped files and Ray's shared objects
                shards, shards_anon = shards + mem.rss, shards_anon + mem.rss - mem.shared
        vm = psutil.virtual_memory()
        used_gb = (vm.total - vm.available) / 2**30
        row = {"t": now, "events": self.events, "rss_mb": (driver + workers) / MB}
        row.update(shards_mb=shards / MB, shards_anon_mb=shards_anon / MB, machine_gb=used_gb)
        if self.rt is not None:
            try:
                st = self.rt.shard_stats().get(KIND, [])
            except Exception:  # noqa: BLE001 - a shard busy restarting: no counters this time
                st = []
            for k in ("active", "passivated", "loaded", "outbox"):
                row[k] = float(sum(s.get(k, 0) for s in st))
        if self._last and "active" in row and "active" in self._last:
            dt = max(1e-9, row["t"] - self._last["t"])
            row["passivated_per_s"] = (row["passivated"] - self._last["passivated"]) / dt
            row["activated_per_s"] = (row["loaded"] - self._last["loaded"]) / dt
        if "active" in row:
            self._last = row
        self.rows.append(row)
        if used_gb > self.stop_above and not self.halt.is_set():
            self.halted_at = row
            self.halt.set()


def make_runtime(args: argparse.Namespace, data_dir: Path) -> Any:
    from runtime import Runtime

    budget: dict[str, Any] = {"max_active": args.max_active}
    if args.max_active is None:
        budget = {"shard_memory_mb": args.budget_mb / args.shards}
    return Runtime(
        data_dir=str(data_dir),
        mode="ray",
        shards=args.shards,
        idle_seconds=args.idle_seconds,
        checkpoint_rows=args.checkpoint_rows,
        checkpoint_seconds=args.checkpoint_seconds,
        topic_log=False,
        **budget,
    )


def load(args: argparse.Namespace, app: App, data_dir: Path) -> dict[str, Any]:
    """Phase 1: the stream through the runtime, sampled every ``--interval`` s."""
    from runtime.dataflow.app import setup
    from runtime.dataflow.driver import SourceFeeder, drive

    src = ScaleSource(args.customers, args.events, args.batch_size, args.seed, args.zipf)
    halt = threading.Event()
    tl = Timeline(args.interval, args.stop_above_gb, halt)
    tl.start()
    t0 = time.perf_counter()
    rt = make_runtime(args, data_dir)
    with rt:
        setup(rt, app)
        t_ready = time.perf_counter()
        max_active = rt.deployment.max_active(app.kind)
        tl.rt = rt

        def progress(stats: Any) -> None:
            tl.events = stats.input

        stats = drive(rt, app, [SourceFeeder(src)], progress=progress, stop=halt)
        tl.rt = None
        t_done = time.perf_counter()
        shard_stats = rt.shard_stats()[KIND]
    wall = time.perf_counter() - t0
    tl.sample()  # after the shutdown's checkpoint
    mem = tl.stop()
    per_entity = Tally.spec().bytes_per_entity()  # the runtime's estimate
    return {
        "startup_s": t_ready - t0,
        "run_s": stats.seconds,
        "events_per_s": stats.events_per_s,
        "shutdown_s": wall - (t_done - t0),
        "input": stats.input,
        "accepted": stats.accepted,
        "checkpoints": stats.checkpoints,
        "customers_seen": min(args.customers, stats.input),
        "max_active_per_shard": max_active,
        "estimated_bytes_per_entity": per_entity,
        "active_end": int(sum(s["active"] for s in shard_stats)),
        "passivated": int(sum(s["passivated"] for s in shard_stats)),
        "activated": int(sum(s["loaded"] for s in shard_stats)),
        "shard_busy_s": [round(s["busy_s"], 1) for s in shard_stats],
        "halted": tl.halted_at,
        "timeline": tl.rows,
        **mem,
    }


def per_entity_cost(rows: list[dict[str, float]], column: str = "shards_anon_mb") -> float | None:
    """Shard memory (bytes) per active entity while the shards fill up, before the first
    passivation: the least-squares slope of ``column`` over the active entities."""
    pts = []
    for r in rows:
        if "active" not in r or r.get("passivated", 0) > 0:
            if pts:
                break
            continue
        if r["active"] > 0:
            pts.append((r["active"], r[column] * MB))
    if len(pts) < 3 or pts[-1][0] - pts[0][0] < 10_000:
        return None
    x, y = np.array(pts).T
    return float(np.polyfit(x, y, 1)[0])


def restore(args: argparse.Namespace, app: App, data_dir: Path, keys: pa.Array) -> dict[str, Any]:
    """Phase 2: a new runtime on the same folder; start-up, then a lookup of ``keys``."""
    from runtime.dataflow.app import setup

    tl = Timeline(args.interval, args.stop_above_gb, threading.Event())
    tl.start()
    t0 = time.perf_counter()
    rt = make_runtime(args, data_dir)
    with rt:
        t_started = time.perf_counter()
        setup(rt, app)  # the shards start and learn which keys are stored
        t_ready = time.perf_counter()
        parts = []
        for i in range(0, len(keys), args.lookup_batch):
            parts.append(rt.lookup(KIND, keys.slice(i, args.lookup_batch)))
        t_read = time.perf_counter()
        got = pa.concat_tables(parts)
        st = rt.shard_stats()[KIND]
    mem = tl.stop()
    read_s = t_read - t_ready
    return {
        "ray_and_actors_s": t_started - t0,
        "kind_ready_s": t_ready - t_started,
        "startup_s": t_ready - t0,
        "profiles": len(keys),
        "lookup_s": read_s,
        "profiles_per_s": len(keys) / read_s if read_s > 0 else 0.0,
        "seconds_per_1m": read_s * 1_000_000 / max(1, len(keys)),
        "found": int(got.column("n").is_valid().to_numpy(zero_copy_only=False).sum()),
        "loaded": int(sum(s["loaded"] for s in st)),
        "active_after": int(sum(s["active"] for s in st)),
        "table": got,
        **mem,
    }


def pick(n_seen: int, restore_n: int, sample_n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The sample to check (sorted) and the ids to restore (the sample among them, shuffled)."""
    rng = np.random.default_rng(seed + 1)
    restore_n, sample_n = min(restore_n, n_seen), min(sample_n, n_seen)
    ids = rng.choice(n_seen, size=max(restore_n, sample_n), replace=False)
    sample = np.sort(ids[:sample_n])
    return sample, ids[:restore_n]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=10_000_000)
    ap.add_argument("--events", type=int, default=20_000_000)
    ap.add_argument("--zipf", type=float, default=1.0, help="exponent of the activity law")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--batch-size", type=int, default=100_000)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--budget-mb", type=float, default=512.0, help="entity state, all shards")
    ap.add_argument("--max-active", type=int, default=None, help="per shard (overrides budget)")
    ap.add_argument("--idle-seconds", type=float, default=None)
    ap.add_argument("--checkpoint-rows", type=int, default=2_000_000)
    ap.add_argument("--checkpoint-seconds", type=float, default=60.0)
    ap.add_argument("--restore", type=int, default=1_000_000, help="profiles read after restart")
    ap.add_argument("--lookup-batch", type=int, default=1_000_000, help="keys per lookup call")
    ap.add_argument("--sample", type=int, default=1000, help="customers checked for exactness")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    ap.add_argument("--stop-above-gb", type=float, default=18.0, help="machine memory guard")
    ap.add_argument("--data-dir", type=Path, default=None, help="default: a temporary folder")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else print
    app = App("scale", SCHEMA, Tally)
    result: dict[str, Any] = {
        "customers": args.customers,
        "events": args.events,
        "zipf": args.zipf,
        "shards": args.shards,
        "budget_mb": None if args.max_active else args.budget_mb,
        "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    with tempfile.TemporaryDirectory(prefix="edgecore-scale-", ignore_cleanup_errors=True) as tmp:
        data_dir = args.data_dir or Path(tmp) / "data"
        say(f"loading {args.events:,} events for {args.customers:,} customers ...")
        ld = load(args, app, data_dir)
        ld["bytes_per_entity_measured"] = per_entity_cost(ld["timeline"])
        ld["bytes_per_entity_rss"] = per_entity_cost(ld["timeline"], "shards_mb")
        result["load"] = ld
        seen = min(args.customers, ld["input"])
        sample, ids = pick(seen, args.restore, args.sample, args.seed)
        say(f"restarting, then reading {len(ids):,} profiles ...")
        rs = restore(args, app, data_dir, customer_keys(ids))
        say(f"checking {len(sample):,} profiles against the regenerated stream ...")
        src = ScaleSource(args.customers, ld["input"], args.batch_size, args.seed, args.zipf)
        table = rs.pop("table")
        result["restore"] = rs
        result["exactness"] = check(src, data_dir, sample, table)
    result["targets"] = {
        "customers": {
            "target": 10_000_000,
            "value": seen,
            "pass": seen >= 10_000_000 and ld["active_end"] < seen,
        },
        "restore_1m_s": {
            "target": TARGET_RESTORE_S,
            "value": rs["seconds_per_1m"],
            "pass": rs["profiles"] >= 1_000_000 and rs["seconds_per_1m"] <= TARGET_RESTORE_S,
        },
        "exact": {
            "target": True,
            "value": result["exactness"]["exact"],
            "pass": result["exactness"]["exact"],
        },
    }
    if args.json:
        print(json.dumps(result))
    else:
        report(result)
    return 0 if result["exactness"]["exact"] else 1


def report(r: dict[str, Any], max_rows: int = 40) -> None:
    ld, rs, ex = r["load"], r["restore"], r["exactness"]
    rows = [x for x in ld["timeline"] if "active" in x]
    step = max(1, math.ceil(len(rows) / max_rows))
    shown = rows[::step] + ([rows[-1]] if rows and (len(rows) - 1) % step else [])
    print(
        f"\n{r['events']:,} events, {r['customers']:,} customers (Zipf {r['zipf']}), "
        f"{r['shards']} shards, {ld['max_active_per_shard']:,} active per shard at most, "
        f"{r['cpus']} CPUs (load before: {r['loadavg_before']})"
    )
    print(
        f"{'t s':>7}{'events':>13}{'RSS MB':>9}{'shards MB':>10}{'anon':>7}{'active':>12}"
        f"{'passivated/s':>14}{'activated/s':>13}{'outbox':>10}{'machine GB':>11}"
    )
    for x in shown:
        print(
            f"{x['t']:>7.1f}{x['events']:>13,}{x['rss_mb']:>9,.0f}{x['shards_mb']:>10,.0f}"
            f"{x['shards_anon_mb']:>7,.0f}{x['active']:>12,.0f}{x.get('passivated_per_s', 0):>14,.0f}"
            f"{x.get('activated_per_s', 0):>13,.0f}{x['outbox']:>10,.0f}{x['machine_gb']:>11.1f}"
        )

    def per(v: float | None) -> str:
        return "-" if v is None else f"{v:,.0f} B"

    print(
        f"load: {ld['input']:,} events in {ld['run_s']:.1f} s ({ld['events_per_s']:,.0f}/s), "
        f"start-up {ld['startup_s']:.1f} s, shutdown {ld['shutdown_s']:.1f} s, "
        f"{ld['checkpoints']} checkpoints; shards busy {ld['shard_busy_s']} s"
    )
    print(
        f"residency: {ld['active_end']:,} active at the end, {ld['passivated']:,} passivated, "
        f"{ld['activated']:,} activated from storage; per entity: runtime's estimate "
        f"{ld['estimated_bytes_per_entity']} B, measured while filling: "
        f"{per(ld['bytes_per_entity_measured'])} anonymous, {per(ld['bytes_per_entity_rss'])} RSS"
    )
    print(
        f"peak RSS: {ld['peak_rss_mb']:,.0f} MB (driver {ld['peak_rss_driver_mb']:,.0f} MB + "
        f"{ld['ray_workers_at_peak']} Ray workers {ld['peak_rss_ray_workers_mb']:,.0f} MB; "
        f"Ray services apart {ld['peak_rss_ray_services_mb']:,.0f} MB)"
    )
    if ld["halted"]:
        print(f"HALTED by the memory guard at {ld['halted']['machine_gb']:.1f} GB used")
    print(
        f"restart: start-up {rs['startup_s']:.1f} s (Ray + actors {rs['ray_and_actors_s']:.1f} s, "
        f"kind ready {rs['kind_ready_s']:.1f} s); lookup of {rs['profiles']:,} profiles "
        f"{rs['lookup_s']:.2f} s = {rs['profiles_per_s']:,.0f}/s ({rs['seconds_per_1m']:.2f} s "
        f"per 1M), {rs['found']:,} found, peak RSS {rs['peak_rss_mb']:,.0f} MB"
    )
    print(
        f"exactness: {ex['sample']:,} sampled profiles, stored (DuckDB) and restored (lookup): "
        f"{len(ex['mismatches'])} mismatches; totals {ex['totals']} "
        f"(expected {ex['totals_expected']})"
    )
    for m in ex["mismatches"][:20]:
        print(f"  MISMATCH {m}")
    for name, t in r["targets"].items():
        print(
            f"target {name:<13} {t['value']!s:<22} vs {t['target']!s:<10} {'PASS' if t['pass'] else 'MISS'}"
        )


if __name__ == "__main__":
    sys.exit(main())
