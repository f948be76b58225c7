"""What the fraud app publishes: alerts, per-event predictions and drift events.

Each is an Arrow table with a fixed schema, built from one scored batch (rows in the
batch's grouped order, ``order`` mapping them back to the events).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa

from actors.fraud.scoring import Decision

ALERT_SCHEMA = pa.schema(
    [
        ("event_id", pa.int64()),
        ("customer_id", pa.string()),
        ("score", pa.float64()),
        # the features that pushed the score up most (a list: GROUP BY over its items works)
        ("reason", pa.list_(pa.string())),
        ("threshold", pa.float64()),
        ("ts", pa.timestamp("ms")),
        ("amount", pa.float64()),
        ("model_version", pa.int64()),
        # wall-clock time the runtime produced the alert: detected_at - ts is how late it
        # came after the event, measured from the alerts table alone
        ("detected_at", pa.timestamp("ms")),
    ]
)
DRIFT_SCHEMA = pa.schema(
    [
        ("detector", pa.string()),  # psi, page_hinkley
        ("signal", pa.string()),  # score, feature:<name>, error
        ("value", pa.float64()),
        ("threshold", pa.float64()),
        ("position", pa.int64()),  # events the shard's model had scored when it fired
        ("model_version", pa.int64()),
        ("detected_at", pa.timestamp("ms")),
    ]
)
PREDICTION_SCHEMA = pa.schema(
    [
        ("event_id", pa.int64()),
        ("customer_id", pa.string()),
        ("score", pa.float64()),
        ("alert", pa.bool_()),
        ("threshold", pa.float64()),
        ("model_version", pa.int64()),
        ("ts", pa.timestamp("ms")),
    ]
)


def _now(n: int) -> pa.Array:
    return pa.array(np.full(n, int(time.time() * 1000), dtype=np.int64)).cast(pa.timestamp("ms"))


def alert_rows(
    ev: pa.Table,
    order: np.ndarray,
    rows: np.ndarray,
    d: Decision,
    reasons: list[list[str]],
    amt: np.ndarray,
    version: int,
) -> pa.Table:
    """One row per alerted event (``rows`` index the grouped batch)."""
    src = pa.array(order[rows])
    return pa.table(
        {
            "event_id": ev.column("event_id").take(src),
            "customer_id": ev.column("customer_id").take(src),
            "score": d.score[rows],
            "reason": pa.array(reasons, pa.list_(pa.string())),
            "threshold": np.full(len(rows), d.threshold),
            "ts": ev.column("ts").take(src),
            "amount": amt[rows],
            "model_version": np.full(len(rows), version, dtype=np.int64),
            "detected_at": _now(len(rows)),
        },
        schema=ALERT_SCHEMA,
    )


def prediction_rows(ev: pa.Table, order: np.ndarray, d: Decision, version: int) -> pa.Table:
    """Every event's score, alert and threshold."""
    src = pa.array(order)
    return pa.table(
        {
            "event_id": ev.column("event_id").take(src),
            "customer_id": ev.column("customer_id").take(src),
            "score": d.score,
            "alert": d.alert,
            "threshold": np.full(len(order), d.threshold),
            "model_version": np.full(len(order), version, dtype=np.int64),
            "ts": ev.column("ts").take(src),
        },
        schema=PREDICTION_SCHEMA,
    )


def drift_rows(found: list[dict[str, Any]], version: int) -> pa.Table:
    """What a drift monitor reported (see runtime.ml.monitor)."""
    now = int(time.time() * 1000)
    return pa.Table.from_pylist(
        [
            {
                "detector": f["detector"],
                "signal": f["signal"],
                "position": int(f["at"]),
                "value": float(f["value"]),
                "threshold": float(f["threshold"]),
                "model_version": version,
                "detected_at": now,
            }
            for f in found
        ],
        schema=DRIFT_SCHEMA,
    )
