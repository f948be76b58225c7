"""The recommend app: hit-rate against baselines, and latency as users call it.

    python scripts/bench_recommend.py [--products 1000000] [--events 1000000] [--rps 1000]
                                      [--seconds 20] [--cart-rate 100] [--json]

One run does:

1. **learn** - the synthetic world's catalog (``--products``) is written to LanceDB with
   its vector index, and ``--events`` of its shopping stream go through the runtime (Ray,
   ``--shards``, default one as ``serve`` has here), as ``edgecore demo --app recommend`` does;
2. **hit-rate** - on the next tenth of the stream (never ingested), each customer's next
   purchase in a new session against the live ``recommend`` (``Runtime.call_many``), the
   popularity and the co-occurrence baselines (:mod:`actors.recommend.evaluate`) - on the
   main world (seed 3) and on ``alt``, a world drawn with other settings (seed 11); the
   ranking's weights were chosen on the default seed (7), never on these;
3. **latency** - ``edgecore serve --app recommend`` as a subprocess on that data folder;
   an open-loop client sends ``GET /v1/recommend?customer=C&k=10`` at ``--rps`` for
   ``--seconds`` (after the same at each rate of ``--curve``, 300 and 600) while posting
   ``add_to_cart`` events at ``--cart-rate``; the p50/p99 of the answers, and of each cart
   add's offers (``offered_at`` minus the moment the POST
   was sent) read back from the ``offers`` table after the server stopped.

The issue's targets: hit-rate@10 >= 2x popularity and >= 1.3x co-occurrence; p99 of
/v1/recommend <= 15 ms at 1,000 requests/s with a 1M-product catalog; offers within 20 ms
p99 of the cart add.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from actors.recommend.app import demo_report, recommend_app  # noqa: E402
from actors.recommend.catalog import CommerceConfig  # noqa: E402
from actors.recommend.generator import CommerceSource  # noqa: E402
from runtime import Runtime, run  # noqa: E402
from runtime.state.store import Store  # noqa: E402

ALT = dict(seed=11, n_themes=500, popularity_bias=0.3, drift_step=0.1, mean_slots=5.0)


def learn(cfg: CommerceConfig, events: int, data: Path, shards: int) -> dict[str, Any]:
    """Catalog + stream through the runtime; hit-rates on the held-out tail."""
    t0 = time.perf_counter()
    source = CommerceSource(cfg, events)
    with Runtime(data_dir=str(data), shards=shards) as rt:
        t1 = time.perf_counter()
        stats = run(rt, recommend_app(catalog=cfg), source)
        t2 = time.perf_counter()
        report = demo_report(rt, source)
    return {
        "catalog_size": cfg.n_products,
        "customers": cfg.n_customers,
        "events": stats.input,
        "startup_and_catalog_s": round(t1 - t0, 1),
        "stream_s": round(t2 - t1, 1),
        "events_per_s": round(stats.input / (t2 - t1)),
        "offers": stats.app.get("offers"),
        "wall_s": round(time.perf_counter() - t0, 1),
        **report,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def load(
    port: int, customers: int, rps: float, seconds: float, cart_rate: float, first_id: int
) -> tuple[list[float], dict[int, float], int]:
    """Open-loop GETs at ``rps`` and cart adds at ``cart_rate``; latencies (ms), each cart
    add's send time (epoch ms) by event id, and the count of non-200 answers."""
    import aiohttp

    rng = np.random.default_rng(1)
    lat: list[float] = []
    sent: dict[int, float] = {}
    errors = 0
    conn = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=conn) as http:
        base = f"http://127.0.0.1:{port}"

        async def ask(c: int) -> None:
            nonlocal errors
            t = time.perf_counter()
            async with http.get(
                f"{base}/v1/recommend", params={"customer": f"c{c}", "k": "10"}
            ) as r:
                await r.read()
                if r.status != 200:
                    errors += 1
            lat.append((time.perf_counter() - t) * 1000)

        async def cart(i: int, c: int, p: int) -> None:
            nonlocal errors
            ev = {
                "event_id": first_id + i,
                "ts": int(time.time() * 1000),
                "customer_id": f"c{c}",
                "session_id": f"bench-{i}",
                "event_type": "add_to_cart",
                "product_id": f"p{p}",
            }
            sent[first_id + i] = time.time() * 1000
            async with http.post(f"{base}/v1/events", json=[ev]) as r:
                await r.read()
                if r.status != 200:
                    errors += 1

        n_get, n_cart = int(rps * seconds), int(cart_rate * seconds)
        plan = sorted(
            [(i / rps, "get", i) for i in range(n_get)]
            + [(i / cart_rate, "cart", i) for i in range(n_cart)]
        )
        who = rng.integers(0, customers, n_get + n_cart)
        what = rng.integers(0, 1000, n_cart)
        tasks = []
        t0 = time.perf_counter()
        for at, op, i in plan:
            delay = at - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            coro = ask(int(who[i])) if op == "get" else cart(i, int(who[n_get + i]), int(what[i]))
            tasks.append(asyncio.create_task(coro))
        await asyncio.gather(*tasks)
    return lat, sent, errors


def serve_latency(
    data: Path, args: argparse.Namespace, customers: int, first_id: int = 10**12
) -> dict[str, Any]:
    """``edgecore serve`` on ``data``, loaded at each rate of ``--curve`` and then at
    ``--rps``; cart adds get event ids from ``first_id`` on (ids the folder has seen are
    duplicates, and get no new offers)."""
    port = free_port()
    cmd = [sys.executable, "-m", "runtime.cli", "serve", "--app", "recommend", "--data", str(data)]
    cmd += ["--shards", str(args.shards), "--http", f"127.0.0.1:{port}"]
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    rates = [*args.curve, args.rps]
    runs: list[tuple[list[float], dict[int, float], int]] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        import urllib.request

        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None or time.perf_counter() - t0 > 300:
                    why = proc.stderr.read().decode()[-2000:]
                    raise RuntimeError(f"serve did not start: {why}") from None
                time.sleep(0.2)
        startup = time.perf_counter() - t0
        # warm up: the first answers load code paths and connections
        asyncio.run(load(port, customers, 50, 2, 0, 0))
        for i, rps in enumerate(rates):
            ids = first_id + i * 10**9
            runs.append(asyncio.run(load(port, customers, rps, args.seconds, args.cart_rate, ids)))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    offers = Store(data).read("offers", columns=["event_id", "offered_at"])
    offered = dict(
        zip(
            offers["event_id"].to_pylist(),
            offers["offered_at"].cast("int64").to_pylist(),
            strict=True,
        )
    )
    curve = []
    for rps, (lat, sent, errors) in zip(rates, runs, strict=True):
        waits = np.array([offered[e] - t for e, t in sent.items() if e in offered])
        lat_a = np.array(lat)
        curve.append(
            {
                "rps": rps,
                "requests": len(lat),
                "errors": errors,
                "recommend_p50_ms": _pct(lat_a, 50),
                "recommend_p99_ms": _pct(lat_a, 99),
                "recommend_max_ms": round(float(lat_a.max()), 2) if len(lat_a) else None,
                "cart_adds": len(sent),
                "offers_seen": len(waits),
                "offers_p50_ms": _pct(waits, 50),
                "offers_p99_ms": _pct(waits, 99),
            }
        )
    return {
        "serve_startup_s": round(startup, 1),
        "target_rps": args.rps,
        **curve[-1],
        "curve": curve,
    }


def _pct(x: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(x, q)), 2) if len(x) else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--products", type=int, default=1_000_000)
    ap.add_argument("--customers", type=int, default=50_000)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--alt-products", type=int, default=200_000)
    ap.add_argument("--rps", type=float, default=1000, help="the target rate (reported on top)")
    ap.add_argument(
        "--curve",
        type=lambda v: [float(x) for x in v.split(",") if x],
        default=[300.0, 600.0],
        help="rates measured first, on the same server: where the latency bends",
    )
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--cart-rate", type=float, default=100)
    # serve's default on this 2-core machine (half the CPUs): one shard answered 1,000
    # requests/s with a p50 of 16 ms where two took 22 ms (each request's batch went to
    # both, and each paid its fixed cost)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # seed 3: the ranking was weighed on the default seed (7), never on these worlds
        main_cfg = CommerceConfig(n_products=args.products, n_customers=args.customers, seed=3)
        alt_cfg = CommerceConfig(n_products=args.alt_products, n_customers=args.customers, **ALT)
        worlds = {"main": learn(main_cfg, args.events, Path(tmp) / "main", args.shards)}
        worlds["alt"] = learn(alt_cfg, args.events, Path(tmp) / "alt", args.shards)
        m = worlds["main"]
        out.update(
            {
                "hit_rate_at_10": m["hit_rate_at_10"],
                "popularity_hit_rate_at_10": m["popularity_hit_rate_at_10"],
                "cooccurrence_hit_rate_at_10": m["cooccurrence_hit_rate_at_10"],
                "catalog_size": args.products,
            }
        )
        out.update(serve_latency(Path(tmp) / "main", args, args.customers))
        out["worlds"] = worlds
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    if args.json:
        print(json.dumps(out))
        return
    for k, v in out.items():
        if k not in ("worlds", "curve"):
            print(f"{k:32} {v}")
    print("\n[latency by rate]")
    for c in out["curve"]:
        print(f"  {c}")
    for name, w in out["worlds"].items():
        print(f"\n[{name}]")
        for k, v in w.items():
            print(f"  {k:30} {v}")


if __name__ == "__main__":
    main()
