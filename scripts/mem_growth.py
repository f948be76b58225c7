"""Memory growth of one process running an app in-process: anonymous RSS every million events.

The soak (``scripts/soak.py``) says *which* process grows; this narrows down *what* in
it grows, in seconds instead of a 10-minute run, without Ray. It runs the fraud app (or
a plain counting kind on the same stream, ``--plain``) in local mode and prints the
process's anonymous memory (``RssAnon``) after each million events::

    python scripts/mem_growth.py --events 5000000            # the fraud app
    python scripts/mem_growth.py --events 5000000 --plain    # the same stream, no app logic
    python scripts/mem_growth.py --no-alerts                 # a threshold nothing crosses
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 python scripts/mem_growth.py

On 2026-12-01: the fraud app grew ~23 MB per million events (289 -> 615 MB over 14M),
the plain kind stayed flat after warm-up (198 -> 229 -> 229 MB).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile

import numpy as np

from actors.fraud.app import TRANSACTIONS, make_app
from actors.fraud.customer import Customer, FraudConfig
from actors.fraud.generator import GeneratorSource, TxnGeneratorConfig
from runtime import App, Batch, EntityKind, RunStats, Runtime, run
from runtime.dataflow.builder import Pipeline


class Plain(EntityKind):
    """Counts and sums per customer: the runtime's own cost on the same stream."""

    name = "plain_customers"
    key = "customer_id"
    state = {"n": "int64", "amount": "float64"}

    def apply(self, batch: Batch) -> None:
        np.add.at(batch.state.cols["n"], batch.slots, 1)
        amount = batch.events.column("amount").to_numpy(zero_copy_only=False)
        np.add.at(batch.state.cols["amount"], batch.slots, amount)


def anon_mb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon"):
                return int(line.split()[1]) // 1024
    return -1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=5_000_000)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--customers", type=int, default=20_000)
    p.add_argument("--checkpoint-rows", type=int, default=300_000)
    p.add_argument("--plain", action="store_true", help="a counting kind instead of the app")
    p.add_argument("--no-alerts", action="store_true", help="a threshold no score crosses")
    p.add_argument("--no-sinks", action="store_true", help="the app without its table sinks")
    p.add_argument("--feature-log-rows", type=int, help="FraudConfig.feature_log_rows")
    args = p.parse_args()
    fraud = FraudConfig()
    if args.feature_log_rows is not None:
        fraud = FraudConfig(feature_log_rows=args.feature_log_rows)
    cfg = TxnGeneratorConfig(n_customers=args.customers, seed=11)
    src = GeneratorSource(cfg, n_events=args.events, batch_size=args.batch_size)
    if args.plain:
        app = App("plain", TRANSACTIONS, Plain)
    elif args.no_alerts:
        app = make_app(dataclasses.replace(fraud, threshold=1.01, target_precision=None))
    elif args.no_sinks:
        flow = Pipeline("fraud").validate(TRANSACTIONS).key_by("customer_id")
        app = flow.to_entity("profile", Customer, fraud).build()
    else:
        app = make_app(fraud)
    printed: set[int] = set()

    def progress(stats: RunStats) -> None:
        m = stats.input // 1_000_000
        if m not in printed:
            printed.add(m)
            print(f"{stats.input:>12,} events  anon {anon_mb():>5} MB", flush=True)

    with Runtime(
        data_dir=tempfile.mkdtemp(),
        mode="local",
        shards=1,
        checkpoint_rows=args.checkpoint_rows,
        dedup_capacity=1_000_000,
    ) as rt:
        run(rt, app, src, progress=progress)
    print(f"{'end':>12}         anon {anon_mb():>5} MB")


if __name__ == "__main__":
    main()
