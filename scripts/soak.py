"""Soak: ``edgecore serve`` under steady load for minutes; does anything grow without bound?

    python scripts/soak.py [--minutes 10] [--load 0.7] [--rate R] [--sample-seconds 10]
                           [--checkpoint-seconds 30] [--out DIR] [--json]

1. Starts ``edgecore serve --app fraud`` as users do (a subprocess on its embedded Ray,
   write-ahead log on) on a fresh data folder, remembering the last 10M event ids for
   dedup (``--dedup-capacity``; see :data:`DEDUP_CAPACITY`).
2. Measures capacity: ``--capacity-seconds`` (default 20) of Arrow IPC posts as fast as
   two connections carry them; capacity = events acknowledged per second. ``--rate``
   skips this and soaks at the rate given.
3. Soaks at ``--load`` (70 %) of capacity for ``--minutes``, from a separate load process
   (``scripts/soak_load.py``: a fixed population of 20,000 customers, every event new).
   Every ``--sample-seconds`` it samples: the RSS of every process of the serve's tree
   (the driver, Ray's GCS and raylet, every actor's worker: named by its actor class),
   the number of versions of every LanceDB table, and the bytes of every entry of the
   data folder (tables, write-ahead log, ...).
4. Stops ``serve`` with SIGTERM (it must exit 0), and checks that every acknowledged
   event is in the committed profiles: ``sum(txn_count)`` over ``customers`` equals the
   events the load got a ``200`` for (nothing acknowledged was lost over the soak).
5. Judges each series with :mod:`soak_stats` (a least-squares slope after a warm-up:
   fails if it is significant and would grow more than 10 % an hour; a process by its
   RSS without its pages of Ray's object store, a high-water mark reported beside the
   store's capacity, and of shared libraries' files: see :mod:`soak_stats`), writes
   ``soak.json``, ``soak.csv`` and a plot ``soak.png`` to ``--out``, prints a table (or one
   JSON object with ``--json``), and exits 1 if anything grows without bound, the
   acknowledged events and the profiles disagree, or ``serve`` did not exit cleanly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

from soak_procs import object_store_mb, rss_by_role  # noqa: E402
from soak_stats import judge, largest_part, own_mb  # noqa: E402

from runtime.testing import procs  # noqa: E402
from runtime.testing.procs import free_port  # noqa: E402

MB = 2**20
#: event ids serve remembers for dedup: its default (50M) is bounded too, but a 10-minute
#: soak sends ~100M events, so that window would still be filling when the soak ends and
#: its growth could not be told from a leak; 10M turns over several times in the soak
DEDUP_CAPACITY = 10_000_000


def env() -> dict[str, str]:
    return procs.env(root=ROOT)


def start_serve(data: Path, port: int, args: argparse.Namespace, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "runtime.cli", "serve", "--app", "fraud"]
    cmd += ["--http", f"127.0.0.1:{port}", "--data", str(data)]
    cmd += ["--checkpoint-seconds", str(args.checkpoint_seconds)]
    if args.dedup_capacity:
        cmd += ["--dedup-capacity", str(args.dedup_capacity)]
    proc = subprocess.Popen(
        cmd, env=env(), cwd=data.parent, stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    t0 = time.monotonic()
    while time.monotonic() - t0 < 300:
        if proc.poll() is not None:
            raise SystemExit(f"soak: serve exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("soak: serve did not answer /healthz within 300 s")


def load(port: int, rate: float, seconds: float, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, str(HERE / "soak_load.py"), str(port), str(rate), str(seconds)]
    return subprocess.Popen([*cmd, str(out)], env=env())


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def folder(data: Path) -> tuple[dict[str, float], dict[str, float]]:
    """MB per top-level entry of the data folder, and versions per LanceDB table."""
    sizes: dict[str, float] = {}
    versions: dict[str, float] = {}
    for entry in data.iterdir() if data.exists() else []:
        name = entry.name.removesuffix(".lance")
        total = 0
        for dirpath, _dirs, files in os.walk(entry):
            for f in files:
                with contextlib.suppress(OSError):  # compaction removed it since the listing
                    total += os.stat(os.path.join(dirpath, f)).st_size
        sizes[name] = total / MB if entry.is_dir() else entry.stat().st_size / MB
        vdir = entry / "_versions"
        if entry.name.endswith(".lance") and vdir.is_dir():
            versions[name] = float(sum(1 for f in vdir.iterdir() if f.suffix == ".manifest"))
    return sizes, versions


def capacity(port: int, seconds: float, work: Path) -> tuple[float, int]:
    """Events acknowledged per second flat out, and how many were accepted."""
    out = work / "capacity.json"
    proc = load(port, 0, seconds, out)
    proc.wait(timeout=seconds + 300)
    got = read_json(out)
    return got.get("acked", 0) / max(got.get("seconds", seconds), 1e-9), got.get("accepted", 0)


def soak(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    t_start = time.monotonic()
    serve = start_serve(data, port, args, work / "serve.log")
    startup_s = time.monotonic() - t_start
    tree = psutil.Process(serve.pid)
    try:
        cap, probed = (args.rate, 0) if args.rate else capacity(port, args.capacity_seconds, work)
        rate = args.rate or cap * args.load
        seconds = args.minutes * 60
        progress = work / "load.json"
        loader = load(port, rate, seconds, progress)
        samples: list[dict[str, Any]] = []
        t0 = time.monotonic()
        while loader.poll() is None:
            time.sleep(max(0.0, t0 + (len(samples) + 1) * args.sample_seconds - time.monotonic()))
            sizes, versions = folder(data)
            sent = read_json(progress)
            rss, parts = rss_by_role(tree)
            samples.append(
                {
                    "t": round(time.monotonic() - t0, 1),
                    "acked": sent.get("acked", 0),
                    "rss_mb": rss,
                    "rss_parts_mb": parts,
                    "size_mb": sizes,
                    "versions": versions,
                }
            )
            if not args.json:
                total = sum(samples[-1]["rss_mb"].values())
                print(
                    f"  t={samples[-1]['t']:6.0f}s acked={samples[-1]['acked']:>10,} "
                    f"rss={total:7.0f} MB data={sum(sizes.values()):7.1f} MB "
                    f"versions={int(sum(versions.values()))}",
                    flush=True,
                )
        sent = read_json(progress)
        store_mb = object_store_mb(tree)
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            code = serve.wait(timeout=180)
        except subprocess.TimeoutExpired:
            serve.kill()
            code = -9
    return {
        "startup_s": round(startup_s, 1),
        "dedup_capacity": args.dedup_capacity,
        "capacity_eps": round(cap, 1),
        "object_store_mb": store_mb,
        "rate_eps": round(rate, 1),
        "load": sent,
        "capacity_accepted": probed,
        "samples": samples,
        "serve_exit": code,
        "profiles_txn_count": profiles_total(data),
    }


def profiles_total(data: Path) -> int | None:
    cmd = [sys.executable, "-m", "runtime.cli", "sql", "SELECT sum(txn_count) AS n FROM customers"]
    done = subprocess.run(
        [*cmd, "--data", str(data), "--json"], capture_output=True, text=True, env=env()
    )
    if done.returncode:
        print(f"soak: sql failed: {done.stderr.strip()[-500:]}", file=sys.stderr)
        return None
    rows = json.loads(done.stdout).get("rows") or [{}]
    return int(rows[0].get("n") or 0)


def write(run: dict[str, Any], verdicts: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps({**run, **verdicts}, indent=1))
    samples = [{**s, "own_mb": own_mb(s)} for s in run["samples"]]  # what is judged
    keys = sorted(
        {
            f"{f}:{k}"
            for s in samples
            for f in ("rss_mb", "own_mb", "size_mb", "versions")
            for k in s[f]
        }
    )
    lines = [",".join(["t", "acked", *keys])]
    for s in samples:
        vals = [str(s[f].get(k, "")) for f, k in (key.split(":", 1) for key in keys)]
        lines.append(",".join([str(s["t"]), str(s["acked"]), *vals]))
    (out / "soak.csv").write_text("\n".join(lines) + "\n")
    plot(run["rate_eps"], samples, out / "soak.png")


def plot(rate_eps: float, samples: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] / 60 for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(10, 11), sharex=True)
    for ax, field, unit in zip(
        axes, ("own_mb", "size_mb", "versions"), ("MB", "MB", "versions"), strict=True
    ):
        for name in sorted({k for s in samples for k in s[field]}):
            y = [s[field].get(name, 0.0) for s in samples]
            if max(y) > 0:
                ax.plot(t, y, label=name.lstrip("_"))  # matplotlib hides "_" labels
        if field == "own_mb":  # the object store's pages, judged apart (soak_stats)
            ax.plot(t, [largest_part(s) for s in samples], "k--", label="object store pages")
        ax.set_ylabel(unit)
        ax.set_title(
            {
                "own_mb": "memory per process role (RSS without object store and library pages)",
                "size_mb": "data folder per entry",
                "versions": "LanceDB versions per table",
            }[field]
        )
        ax.legend(fontsize=7, ncol=3, loc="upper left")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel(f"minutes at {rate_eps:,.0f} events/s")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def show(run: dict[str, Any], v: dict[str, Any]) -> None:
    print(
        f"serve start-up {run['startup_s']} s; capacity {run['capacity_eps']:,.0f} events/s; "
        f"soak at {run['rate_eps']:,.0f} events/s for {run['samples'][-1]['t'] / 60:.1f} min; "
        f"dedup window {run['dedup_capacity'] or 'serve default'}"
    )
    print(f"{'series':42} {'first':>10} {'last':>10} {'max':>10} {'slope/h':>10}  verdict")
    for name, s in v["series"].items():
        if s["kind"] == "per_event":
            print(
                f"{name:42} bytes/event {s['first_half'] or 0:9.2f} -> {s['second_half'] or 0:9.2f}  "
                f"{'ACCELERATES' if s['accelerates'] else 'linear'}"
            )
            continue
        said = "GROWS" if s["grows"] else "bounded"
        if s["kind"] == "reported":  # a high-water mark, judged against capacity only
            cap = f"{s['capacity_mb']:,.0f} MB" if s.get("capacity_mb") else "?"
            if "capacity_mb" not in s:
                cap = "the libraries' files"
            said = f"{'OVER HALF ' if s['grows'] else ''}of {cap}"
        print(
            f"{name:42} {s['first']:10.1f} {s['last']:10.1f} {s['max']:10.1f} "
            f"{s['slope_per_hour']:10.1f}  {said}"
        )
    first, last = (
        run["samples"][0].get("rss_parts_mb", {}),
        run["samples"][-1].get("rss_parts_mb", {}),
    )
    for name in v["growing"]:
        role_ = name.partition(":")[2]  # (object_store_pages_mb, library_pages_mb: none)
        if name.startswith("own_mb:") and role_ in last:
            a, b = first.get(role_, {}), last[role_]
            print(
                f"  {role_}: "
                + ", ".join(
                    f"{k} {a.get(k, 0):.0f} -> {b[k]:.0f}{'' if k == 'libraries' else ' MB'}"
                    for k in sorted(b)
                )
            )
    print(
        f"acknowledged {v['acked_accepted']:,}; profiles count {run['profiles_txn_count']}; "
        f"serve exit {run['serve_exit']}; {'OK' if v['ok'] else 'FAILED'}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--load", type=float, default=0.7, help="share of measured capacity")
    ap.add_argument("--rate", type=float, default=0.0, help="events/s (skips the capacity probe)")
    ap.add_argument("--capacity-seconds", type=float, default=20.0)
    ap.add_argument("--sample-seconds", type=float, default=10.0)
    ap.add_argument("--checkpoint-seconds", type=float, default=30.0)
    ap.add_argument(
        "--dedup-capacity",
        type=int,
        default=DEDUP_CAPACITY,
        help="serve's --dedup-capacity (0: serve's own default, 50M ids)",
    )
    ap.add_argument("--out", type=Path, default=Path("soak-out"))
    ap.add_argument("--keep", action="store_true", help="keep the data folder (under --out)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--judge",
        type=Path,
        help="judge the samples of a soak.json written before (no run): after a change "
        "to the verdicts, an hour's run is not run again",
    )
    args = ap.parse_args(argv)
    if args.judge is not None:
        run = {k: v for k, v in json.loads(args.judge.read_text()).items()}
        verdicts = judge(run)
        show(run, verdicts)
        return 0 if verdicts["ok"] else 1
    work = Path(tempfile.mkdtemp(prefix="edgecore-soak-"))
    try:
        run = soak(args, work)
        verdicts = judge(run)
        write(run, verdicts, args.out)
        if args.keep:
            shutil.copytree(work, args.out / "work", dirs_exist_ok=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps({k: v for k, v in {**run, **verdicts}.items() if k != "samples"}))
    else:
        show(run, verdicts)
    return 0 if verdicts["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
