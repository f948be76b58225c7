"""The fraud model against offline yardsticks, on streams it was and was not tuned on.

    python scripts/bench_ml.py [--events 1000000] [--streams repo,alt,drift] [--label-delay 1h] [--json]

For each stream (written to a temporary Parquet file first):

* **online**: the fraud app as users run it (``edgecore replay``'s path: the runtime, two
  shards, local mode so the timing is the model's, not Ray's), publishing every event's
  score, alert and feature vector on the ``predictions`` topic. Prequential: every event
  is scored before its label is learned from, and the alert threshold is the live one.
* **offline LR (upper bound)**: scikit-learn's ``LogisticRegression`` on the same feature
  vectors, fit on the whole stream and scored in-sample: what the online linear model
  could reach with all history at once.
* **offline HGB**: ``HistGradientBoostingClassifier`` on the same features, trained on the
  first half and scored on the second (a stronger model class, out of sample).

Figures: ROC AUC (all events; and the second half, after the warm-up), alert precision
and recall at the live threshold (online), and the best recall at precision >= 0.8 for
each model (what a perfectly calibrated threshold would give). Streams:

* ``repo``: the repo's generator (seed 7, a seed nobody tuned on);
* ``alt``: ``actors.fraud.generator_alt`` (another world, other fraud patterns, 1.5 %);
* ``drift``: the repo's generator with a new fraud pattern from mid-stream on;
* ``habits``: the repo's generator whose legitimate habits shift mid-stream.

The issue's targets: online AUC >= 0.99 of the offline upper bound; precision >= 0.80 at
recall >= 0.85 on the repo generator.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from actors.fraud.app import make_app  # noqa: E402
from actors.fraud.customer import FraudConfig  # noqa: E402
from actors.fraud.generator import TxnGeneratorConfig, write_transactions  # noqa: E402
from actors.fraud.generator_alt import AltConfig, write_alt_transactions  # noqa: E402
from actors.fraud.model import FEATURES  # noqa: E402
from runtime import FileSource, Runtime, run  # noqa: E402

STREAMS = ("repo", "alt", "drift", "habits")
#: rows per batch read: a model learns from a batch after scoring all of it, so the
#: batch bounds how fast it can follow a drift (live batches are smaller still)
BATCH = 20_000


def write_stream(kind: str, path: Path, n: int) -> Path:
    if kind == "alt":
        return write_alt_transactions(path, n, AltConfig(seed=1))
    config = {
        "repo": TxnGeneratorConfig(seed=7),
        "drift": TxnGeneratorConfig(seed=3, drift_at=n // 2, drift="new_pattern"),
        "habits": TxnGeneratorConfig(seed=5, drift_at=n // 2, drift="habits"),
    }[kind]
    return write_transactions(path, n, config)


def online(
    path: Path, n: int, data: Path, delay_ms: int | None = None
) -> tuple[pa.Table, dict[str, Any]]:
    """The app on the runtime; its per-event predictions (with features) and its summary.
    ``delay_ms``: each label is learned from only that long (event time) after its event."""
    config = FraudConfig(predictions=True, prediction_features=True, label_delay_ms=delay_ms)
    t0 = time.perf_counter()
    with Runtime(
        data_dir=str(data),
        mode="local",
        shards=2,
        topic_retention_rows=4 * n,
        topic_retention_bytes=None,
    ) as rt:
        stats = run(rt, make_app(config), FileSource(path, batch_size=BATCH))
        preds = rt.read_topic("predictions", 0, 4 * n)
    return preds, {"seconds": round(time.perf_counter() - t0, 2), **stats.app}


def best_recall(y: np.ndarray, s: np.ndarray, precision: float = 0.8) -> float:
    from sklearn.metrics import precision_recall_curve

    p, r, _ = precision_recall_curve(y, s)
    ok = p >= precision
    return round(float(r[ok].max()), 4) if ok.any() else 0.0


def recovery(y: np.ndarray, alert: np.ndarray, at: int, window: int = 50_000) -> dict[str, Any]:
    """Recall before a drift at event ``at`` (the 100k events before it) and in each
    ``window`` of events after it: the issue asks for 90 % of the first within 50k events."""

    def recall(sl: slice) -> float | None:
        pos = int(y[sl].sum())
        return round(int((alert[sl] & y[sl]).sum()) / pos, 4) if pos else None

    before = recall(slice(max(at - 100_000, 0), at))
    after = [recall(slice(a, a + window)) for a in range(at, len(y), window)]
    back = next((i for i, r in enumerate(after) if before and r and r >= 0.9 * before), None)
    return {
        "recall_before": before,
        f"recall_per_{window // 1000}k_after": after,
        "recovered_within_events": None if back is None else (back + 1) * window,
    }


def evaluate(kind: str, n: int, work: Path, delay_ms: int | None = None) -> dict[str, Any]:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    path = write_stream(kind, work / f"{kind}.parquet", n)
    labels = pq.read_table(path, columns=["event_id", "is_fraud"])
    preds, summary = online(path, n, work / f"{kind}-data", delay_ms)
    preds = preds.join(labels, "event_id").sort_by("event_id")  # arrival order
    y = preds.column("is_fraud").to_numpy(zero_copy_only=False).astype(bool)
    s = preds.column("score").to_numpy()
    alert = preds.column("alert").to_numpy(zero_copy_only=False).astype(bool)
    X = np.column_stack([preds.column(f"x_{f}").to_numpy() for f in FEATURES])
    h = len(y) // 2

    def pr(sl: slice) -> tuple[float, float]:
        tp = int((alert[sl] & y[sl]).sum())
        return round(tp / max(int(alert[sl].sum()), 1), 4), round(tp / max(int(y[sl].sum()), 1), 4)

    out: dict[str, Any] = {
        "events": len(y),
        "fraud_rate": round(float(y.mean()), 4),
        "online": {
            "auc": round(roc_auc_score(y, s), 4),
            "auc_2nd_half": round(roc_auc_score(y[h:], s[h:]), 4),
            "precision_recall": pr(slice(None)),
            "precision_recall_2nd_half": pr(slice(h, None)),
            "best_recall_at_p80_2nd_half": best_recall(y[h:], s[h:]),
            "final_threshold": round(float(preds.column("threshold")[-1].as_py()), 4),
            "seconds": summary["seconds"],
        },
    }
    t0 = time.perf_counter()
    lr = LogisticRegression(max_iter=1000, class_weight={0: 1, 1: 10}).fit(X, y)
    p_lr = lr.predict_proba(X)[:, 1]
    out["offline_lr_upper_bound"] = {
        "auc": round(roc_auc_score(y, p_lr), 4),
        "auc_2nd_half": round(roc_auc_score(y[h:], p_lr[h:]), 4),
        "best_recall_at_p80_2nd_half": best_recall(y[h:], p_lr[h:]),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    t0 = time.perf_counter()
    hgb = HistGradientBoostingClassifier(max_iter=200, random_state=0).fit(X[:h], y[:h])
    p_hgb = hgb.predict_proba(X[h:])[:, 1]
    out["offline_hgb"] = {
        "auc_2nd_half": round(roc_auc_score(y[h:], p_hgb), 4),
        "best_recall_at_p80_2nd_half": best_recall(y[h:], p_hgb),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if kind in ("drift", "habits"):
        out["after_drift"] = recovery(y, alert, n // 2)
    out["online_auc_vs_upper_bound"] = round(
        out["online"]["auc_2nd_half"] / out["offline_lr_upper_bound"]["auc_2nd_half"], 4
    )
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--streams", default=",".join(STREAMS))
    ap.add_argument(
        "--label-delay", default=None, help="learn from labels this long after the event (1h, 1d)"
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    delay_ms = None
    if args.label_delay:
        from runtime.cli.common import parse_duration

        delay_ms = parse_duration(args.label_delay, "--label-delay")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.streams.split(","):
            results[kind] = evaluate(kind, args.events, Path(tmp), delay_ms)
            if not args.json:
                r = results[kind]
                o, u, g = r["online"], r["offline_lr_upper_bound"], r["offline_hgb"]
                print(
                    f"{kind:7} fraud {r['fraud_rate']:.2%}  online AUC {o['auc']:.4f} "
                    f"(2nd half {o['auc_2nd_half']:.4f}, {r['online_auc_vs_upper_bound']:.3f} "
                    f"of the upper bound)  P/R {o['precision_recall']} "
                    f"(2nd half {o['precision_recall_2nd_half']})  "
                    f"LR bound AUC {u['auc_2nd_half']:.4f}  HGB AUC {g['auc_2nd_half']:.4f}  "
                    f"best recall@P0.8: online {o['best_recall_at_p80_2nd_half']}, "
                    f"LR {u['best_recall_at_p80_2nd_half']}, HGB {g['best_recall_at_p80_2nd_half']}",
                    flush=True,
                )
                if "after_drift" in r:
                    print(f"        after the drift: {r['after_drift']}", flush=True)
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
