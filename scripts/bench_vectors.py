"""Benchmark runtime.state.vectors on a synthetic catalog: index build, search latency,
batched throughput and recall@10 against brute force.

    PYTHONPATH=. python scripts/bench_vectors.py                 # 1M products, dim 64
    PYTHONPATH=. python scripts/bench_vectors.py --products 200000 --index IVF_HNSW_SQ --json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np

from actors.recommend.catalog import CommerceConfig, catalog_table
from runtime.state.store import Store
from runtime.state.vectors import DEFAULT_NPROBES, DEFAULT_REFINE, VectorTable


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--products", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--index", default="IVF_PQ", choices=["IVF_PQ", "IVF_HNSW_SQ"])
    ap.add_argument("--nprobes", type=int, default=DEFAULT_NPROBES)
    ap.add_argument("--refine", type=int, default=DEFAULT_REFINE, help="0: no re-ranking")
    ap.add_argument("--queries", type=int, default=1_000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--data", default=None, help="data folder (default: a temporary one)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    say = (lambda *a: None) if args.json else print

    t0 = time.perf_counter()
    table = catalog_table(CommerceConfig(n_products=args.products, dim=args.dim))
    emb = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(-1, args.dim)
    ids = np.array(table.column("product_id").to_pylist())
    in_stock = table.column("stock").to_numpy() > 0
    gen_s = time.perf_counter() - t0
    say(f"catalog: {args.products:,} products, dim {args.dim}: {gen_s:.1f} s")

    vt = VectorTable(
        Store(args.data or tempfile.mkdtemp(prefix="bench_vectors_")),
        "products",
        key="product_id",
        nprobes=args.nprobes,
        refine_factor=args.refine or None,
    )
    t0 = time.perf_counter()
    vt.write(table, mode="overwrite")
    write_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    vt.build_index(filters=["category", "stock"], index_type=args.index)
    build_s = time.perf_counter() - t0
    say(f"write {write_s:.1f} s, index build ({args.index}) {build_s:.1f} s")
    info = {i.name: i.index_details for i in vt.store.table("products").list_indices()}.get(
        "embedding_idx"
    )

    # queries near products (a customer's taste is near what they buy), unit norm
    rng = np.random.default_rng(3)
    n = max(args.queries, 200)
    q = emb[rng.integers(0, len(emb), n)] + 0.1 * rng.standard_normal((n, args.dim), np.float32)
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)

    vt.search(q[:5], k=10, where="stock > 0")  # warm the index cache
    lat = []
    for i in range(args.queries):
        t0 = time.perf_counter()
        vt.search(q[i : i + 1], k=10, where="stock > 0")
        lat.append((time.perf_counter() - t0) * 1000)
    p50, p99 = np.percentile(lat, [50, 99])
    say(f"single query (where stock > 0): p50 {p50:.2f} ms, p99 {p99:.2f} ms")

    t0 = time.perf_counter()
    done = 0
    for lo in range(0, args.queries, args.batch):
        vt.search(q[lo : lo + args.batch], k=10, where="stock > 0")
        done += len(q[lo : lo + args.batch])
    qps = done / (time.perf_counter() - t0)
    say(f"batches of {args.batch}: {qps:,.0f} queries/s")

    # recall@10 on 200 queries against exact numpy cosine top-10 over in-stock products
    rq = q[:200]
    res = vt.search(rq, k=10, where="stock > 0")
    sims = rq @ emb.T
    sims[:, ~in_stock] = -np.inf
    truth = np.argpartition(-sims, 10, axis=1)[:, :10]
    recall = float(
        np.mean(
            [
                len(set(r.column("product_id").to_pylist()) & set(ids[t])) / 10
                for r, t in zip(res, truth, strict=True)
            ]
        )
    )
    say(f"recall@10 vs brute force (200 queries): {recall:.3f}")
    out = {
        "products": args.products,
        "dim": args.dim,
        "index": args.index,
        "index_details": info,
        "nprobes": args.nprobes,
        "refine_factor": args.refine or None,
        "catalog_s": round(gen_s, 2),
        "write_s": round(write_s, 2),
        "build_s": round(build_s, 2),
        "p50_ms": round(float(p50), 3),
        "p99_ms": round(float(p99), 3),
        "batch": args.batch,
        "batched_qps": round(qps, 1),
        "recall_at_10": round(recall, 4),
    }
    if args.json:
        print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
