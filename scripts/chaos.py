"""The chaos matrix: break one thing at a time under load and account for every event.

    python scripts/chaos.py                          # 7 scenarios x 10 seeds
    python scripts/chaos.py --seeds 3 --events 5000 --scenario shard,commit --json

Scenarios, named by what they break, each at a random point between 30 % and 70 % of
the stream (fixed by scenario and seed):

- ``shard``: SIGKILL of an entity shard's worker process during ``edgecore replay``;
- ``stage``: SIGKILL of the live ingest stage (HTTP) during ``edgecore serve``;
- ``topic``: SIGKILL of a topic actor (the dead letters' topic: the apps' own output
  topics live inside their shards) during ``edgecore replay``;
- ``sink``: SIGKILL of the process hosting the sink that persists the ``entries`` topic to
  its table (with the status board: runtime.cluster.host);
- ``edge``: removal of an edge node of a real multi-node Ray (core + two edge sites);
- ``commit``: a crash inside a LanceDB commit, between writing the table versions and
  the ``_checkpoints`` row (``EDGECORE_FAULT``, runtime.testing.faults), then the same
  command again on the same data folder;
- ``broker``: the MQTT broker stopped and started again during ``edgecore serve --mqtt``.

Every run uses the ledger app (runtime.testing.ledger): unique event ids, each key's
``j``-th event worth ``3**j``, so the committed state names every event applied 0, 1 or
2 times; its sink's table and the dead letters must hold each event once. ``lost`` and
``doubled`` count distinct events, from the data folder alone. ``recovery_s`` is the time
from the fault to the first commit past the last position committed before it (the
runtime is processing and committing again; it includes the restart and at most one
checkpoint interval).

Prints a table (scenario, seed, events, lost, doubled, recovery_s), or with ``--json``
one object ``{"scenarios": [{"scenario", "seed", "events", "lost", "doubled",
"recovery_s", "ok", "why"}, ...]}``. Exit code 1 if any row is not 0 lost / 0 doubled
(or its fault did not happen), naming the rows on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
# Ray workers of the in-process cluster (edge) import the runtime too
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(HERE.parent), os.environ.get("PYTHONPATH", "")) if p
)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("LANCE_LOG", "error")
# this process reads the data folders (LanceDB) and starts commands: each start warns
warnings.filterwarnings("ignore", message="lancedb fork support")

from chaos_scenarios import SCENARIOS, Result, run_replay, run_serve  # noqa: E402


def run_one(
    scenario: str, seed: int, events: int, seconds: float, work: Path, edge: Callable[[], object]
) -> Result:
    """One scenario at one seed, in its own folder under ``work``."""
    folder = work / f"{scenario}-{seed}"
    folder.mkdir(parents=True)
    try:
        if scenario in ("shard", "topic", "sink", "commit"):
            return run_replay(scenario, seed, events, folder, seconds)
        if scenario in ("stage", "broker"):
            return run_serve(scenario, seed, events, folder, seconds)
        from chaos_edge import run_edge

        return run_edge(edge(), seed, events, folder, seconds)  # type: ignore[arg-type]
    except Exception as err:  # a harness failure is a failed row, not a crash of the matrix
        return Result(scenario, seed, events, why=[f"! {type(err).__name__}: {err}"])


def table(rows: list[dict]) -> str:
    head = (
        f"{'scenario':<8} {'seed':>4} {'events':>8} {'lost':>6} {'doubled':>8} {'recovery_s':>11}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        rec = "-" if r["recovery_s"] is None else f"{r['recovery_s']:.2f}"
        flag = "" if r["ok"] else "  FAILED"
        lines.append(
            f"{r['scenario']:<8} {r['seed']:>4} {r['events']:>8} {r['lost']:>6} "
            f"{r['doubled']:>8} {rec:>11}{flag}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=10, help="seeds per scenario (0..N-1)")
    ap.add_argument("--events", type=int, default=20_000, help="events per run")
    ap.add_argument(
        "--seconds", type=float, default=12.0, help="how long the paced stream of a run lasts"
    )
    ap.add_argument(
        "--scenario",
        default=",".join(SCENARIOS),
        help=f"comma-separated, of: {', '.join(SCENARIOS)}",
    )
    ap.add_argument("--work", type=Path, default=None, help="folder for the runs (default: temp)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    chosen = [s.strip() for s in args.scenario.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown or not chosen:
        ap.error(f"unknown scenario {unknown}: choose from {', '.join(SCENARIOS)}")
    if args.seeds < 1 or args.events < 200:
        ap.error("--seeds must be >= 1 and --events >= 200")
    work = args.work or Path(tempfile.mkdtemp(prefix="edgecore-chaos-"))
    cluster: list[object] = []

    def edge() -> object:
        if not cluster:
            from chaos_edge import EdgeCluster

            cluster.append(EdgeCluster())
        return cluster[0]

    rows = []
    try:
        for scenario in chosen:
            for seed in range(args.seeds):
                t0 = time.monotonic()
                res = run_one(scenario, seed, args.events, args.seconds, work, edge)
                rows.append(res.row())
                print(
                    f"chaos: {scenario} seed {seed}: {res.lost} lost, {res.doubled} doubled, "
                    f"recovery {res.recovery_s}, {time.monotonic() - t0:.0f} s"
                    + ("" if res.ok else f" FAILED: {'; '.join(res.why)}"),
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        if cluster:
            cluster[0].close()  # type: ignore[attr-defined]
    print(json.dumps({"scenarios": rows}) if args.json else table(rows))
    failed = [r for r in rows if not r["ok"]]
    for r in failed:
        print(
            f"chaos: FAILED {r['scenario']} seed {r['seed']}: {r['lost']} lost, "
            f"{r['doubled']} doubled; {'; '.join(r['why'])}",
            file=sys.stderr,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
