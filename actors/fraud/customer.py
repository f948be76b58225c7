"""The customer: a 360° profile kept per card holder, and the fraud features it yields.

:class:`Customer` is an entity kind with a vectorized ``apply``. For every event of
a batch it computes features against the profile *as it was just before that
event* (point-in-time correct, also for several events of one customer in one
batch: events of a customer are taken in arrival order, so results do not depend
on where batch boundaries fall), scores them with rules and the online model
(test-then-train), then folds the batch into the profiles with a few grouped
numpy operations.

>>> import pyarrow as pa, tempfile
>>> from runtime import Runtime
>>> from actors.fraud.generator import TxnGenerator, TxnGeneratorConfig
>>> events = pa.Table.from_batches(TxnGenerator(TxnGeneratorConfig(n_customers=50)).batches(2000))
>>> with Runtime(data_dir=tempfile.mkdtemp(), mode="local", shards=1) as rt:
...     rt.register(Customer)
...     _ = rt.send("customers", events)
...     profile = Customer.ref("c1").get()
>>> profile["txn_count"] == events.filter(pa.compute.equal(events["customer_id"], "c1")).num_rows
True
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from actors.fraud.features import (
    DEVICES,
    NO_TS,
    RECENT,
    devices_one_by_one,
    features,
    haversine_km,
)
from actors.fraud.model import OnlineModel
from actors.grouped import by_entity
from runtime import Batch, EntityKind, handler
from runtime.state.keys import hash_keys

ALERT_SCHEMA = pa.schema(
    [
        ("event_id", pa.int64()),
        ("customer_id", pa.string()),
        ("score", pa.float64()),
        ("reason", pa.string()),
        ("ts", pa.timestamp("ms")),
        ("amount", pa.float64()),
        ("model_version", pa.int64()),
        # wall-clock time the runtime produced the alert: detected_at - ts is how late it
        # came after the event, measured from the alerts table alone
        ("detected_at", pa.timestamp("ms")),
    ]
)
PREDICTION_SCHEMA = pa.schema(
    [
        ("event_id", pa.int64()),
        ("customer_id", pa.string()),
        ("score", pa.float64()),
        ("ts", pa.timestamp("ms")),
    ]
)


@dataclass(frozen=True)
class FraudConfig:
    """Scoring settings. Rule weights combine as independent evidence: 1 - Π(1 - w)."""

    threshold: float = 0.5
    learn: bool = True
    predictions: bool = False  # also publish every event's score to the `predictions` topic
    burst_window_ms: int = 60_000
    burst_count: int = 2  # prior transactions within the window that make a burst
    far_km: float = 500.0
    negative_sample: float = 0.1  # share of non-fraud labels the model learns from
    weights: dict[str, float] = field(
        default_factory=lambda: {
            # a burst alone is weak evidence: busy card holders make them too
            "high_amount": 0.7,
            "burst": 0.45,
            "far_location": 0.6,
            "new_device_high_amount": 0.6,
        }
    )


class Customer(EntityKind):
    name = "customers"
    key = "customer_id"
    topics = ("alerts", "predictions")
    #: when the alert was raised (wall clock): differs between two runs of the same events
    volatile_columns = ("detected_at",)
    state = {
        "txn_count": "int64",
        "amount_sum": "float64",
        "amount_sumsq": "float64",
        "amount_max": "float64",
        "first_ts": "timestamp",
        "last_ts": "timestamp",
        "last_lat": "float64",
        "last_lon": "float64",
        "lat_sum": "float64",
        "lon_sum": "float64",
        "device_count": "int64",
        "devices": ("int64", 0, DEVICES),
        "recent_ts": ("int64", NO_TS, RECENT),
        "alert_count": "int64",
    }

    def __init__(self, config: FraudConfig | None = None) -> None:
        super().__init__(config or FraudConfig())
        self.model = OnlineModel()

    # -- the hot path ----------------------------------------------------------------------
    def apply(self, batch: Batch) -> None:
        cfg: FraudConfig = self.config
        ev, st = batch.events, batch.state
        order, gstart = batch.order, batch.starts  # grouped by customer, arrival order kept
        s, gsize, grp, rank, gslot = by_entity(batch)
        n = len(s)
        num = lambda name: ev.column(name).to_numpy()[order]  # noqa: E731
        t = ev.column("ts").cast(pa.int64()).to_numpy()[order]
        amt, lat, lon = num("amount"), num("lat"), num("lon")
        dev = hash_keys(ev.column("device_id")).view(np.int64)[order]
        c = st.cols

        def before(values: np.ndarray, base: np.ndarray) -> np.ndarray:
            """Stored value plus the sum over this customer's earlier events in the batch."""
            cum = np.cumsum(values)
            excl = cum - values
            return base[s] + excl - excl[gstart][grp]

        n_prev = c["txn_count"][s] + rank
        has = n_prev > 0
        denom = np.maximum(n_prev, 1)
        mean = before(amt, c["amount_sum"]) / denom
        var = np.maximum(before(amt * amt, c["amount_sumsq"]) / denom - mean * mean, 0.0)
        std = np.sqrt(var)
        clat = before(lat, c["lat_sum"]) / denom
        clon = before(lon, c["lon_sum"]) / denom
        prev = np.maximum(np.arange(n) - 1, 0)
        plat = np.where(rank > 0, lat[prev], c["last_lat"][s])
        plon = np.where(rank > 0, lon[prev], c["last_lon"][s])
        # far from both the usual place and the last one: a trip moves the last place,
        # so only its first purchase counts as far
        dist = np.where(
            has,
            np.minimum(haversine_km(lat, lon, clat, clon), haversine_km(lat, lon, plat, plon)),
            0.0,
        )

        # previous arrival's timestamp, and how many earlier events fall in the burst window
        # the previous arrival (not the latest timestamp): the same whatever the batching
        prev_t = np.where(rank > 0, t[prev], c["recent_ts"][s, 0])
        since = np.where(has, np.maximum(t - prev_t, 0) / 1000.0, 1e6)
        ring = c["recent_ts"][s]
        burst = np.zeros(n, dtype=np.int64)
        for j in range(1, RECENT + 1):
            within = rank >= j
            from_ring = np.clip(j - rank - 1, 0, RECENT - 1)
            pj = np.where(within, t[np.maximum(np.arange(n) - j, 0)], ring[np.arange(n), from_ring])
            burst += (pj != NO_TS) & (t - pj >= 0) & (t - pj <= cfg.burst_window_ms)

        # a device is new if neither the profile nor an earlier event of the batch had it
        in_profile = (c["devices"][s] == dev[:, None]).any(axis=1)
        unseen = ~in_profile
        cand = np.flatnonzero(unseen)  # few once profiles are warm: only they need the sort
        if len(cand):
            po = cand[np.lexsort((rank[cand], dev[cand], grp[cand]))]
            repeat = (grp[po[1:]] == grp[po[:-1]]) & (dev[po[1:]] == dev[po[:-1]])
            unseen[po[1:][repeat]] = False  # an earlier event of the batch brought it
        sequential = devices_one_by_one(c["devices"], unseen, grp, gstart, gsize, s, dev)
        new_device = unseen & has

        # -- score: rules and model, then learn from labels (test-then-train) -----------------
        rules = {
            "high_amount": (n_prev >= 5) & (amt > mean + 5 * std) & (amt > 5 * mean),
            "burst": burst >= cfg.burst_count,
            "far_location": (n_prev >= 3) & (dist > cfg.far_km),
            "new_device_high_amount": new_device & (n_prev >= 3) & (amt > 3 * mean),
        }
        keep = np.ones(n)
        for name, hit in rules.items():
            keep *= np.where(hit, 1.0 - cfg.weights[name], 1.0)
        rule_score = 1.0 - keep
        X = features(amt, mean, std, burst, dist, new_device, since, n_prev)
        p = self.model.score(X)
        score = np.maximum(rule_score, p)
        alert = score >= cfg.threshold

        labels = None
        if "is_fraud" in ev.column_names:
            lab = ev.column("is_fraud")
            known = ~lab.is_null().to_numpy(zero_copy_only=False)[order]
            labels = lab.fill_null(False).to_numpy(zero_copy_only=False)[order].astype(bool)
            if known.any():
                batch.count("labelled", int(known.sum()))
                batch.count("true_positives", int((alert & labels & known).sum()))
                batch.count("false_positives", int((alert & ~labels & known).sum()))
                batch.count("false_negatives", int((~alert & labels & known).sum()))
                for name, hit in rules.items():
                    batch.count(f"rule:{name}:fraud", int((hit & labels & known).sum()))
                batch.count(
                    "model_alerts:fraud", int(((p >= cfg.threshold) & labels & known).sum())
                )
                if cfg.learn:
                    # all frauds, and a fixed, id-chosen share of the rest, weighted back up:
                    # the model sees the same evidence at a fraction of the partial_fit cost
                    ids = ev.column("event_id").to_numpy()[order]
                    with np.errstate(over="ignore"):
                        mixed = ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
                    keep_neg = (mixed >> np.uint64(40)) % np.uint64(
                        1000
                    ) < cfg.negative_sample * 1000
                    use = known & (labels | keep_neg)
                    weight = np.where(labels[use], 1.0, 1.0 / cfg.negative_sample)
                    self.model.learn(X[use], labels[use], weight)
        batch.count("alerts", int(alert.sum()))
        batch.count("model_alerts", int((p >= cfg.threshold).sum()))
        for name, hit in rules.items():
            batch.count(f"rule:{name}", int(hit.sum()))
        self._emit(batch, order, alert, score, p, rules, amt, cfg)

        # -- fold the batch into the profiles ------------------------------------------------
        gend = gstart + gsize - 1
        first_time = c["txn_count"][gslot] == 0
        c["txn_count"][gslot] += gsize
        c["amount_sum"][gslot] += np.add.reduceat(amt, gstart)
        c["amount_sumsq"][gslot] += np.add.reduceat(amt * amt, gstart)
        c["lat_sum"][gslot] += np.add.reduceat(lat, gstart)
        c["lon_sum"][gslot] += np.add.reduceat(lon, gstart)
        gmax = np.maximum.reduceat(amt, gstart)
        c["amount_max"][gslot] = np.where(
            first_time, gmax, np.maximum(c["amount_max"][gslot], gmax)
        )
        tmin, tmax = np.minimum.reduceat(t, gstart), np.maximum.reduceat(t, gstart)
        c["first_ts"][gslot] = np.where(first_time, tmin, np.minimum(c["first_ts"][gslot], tmin))
        c["last_ts"][gslot] = np.where(first_time, tmax, np.maximum(c["last_ts"][gslot], tmax))
        c["last_lat"][gslot] = lat[gend]
        c["last_lon"][gslot] = lon[gend]
        c["alert_count"][gslot] += np.add.reduceat(alert.astype(np.int64), gstart)
        # recent timestamps: the group's last events, then what the ring held before
        old = c["recent_ts"][gslot].copy()
        for m in range(RECENT):
            from_batch = m < gsize
            c["recent_ts"][gslot, m] = np.where(
                from_batch,
                t[np.maximum(gend - m, gstart)],
                old[np.arange(len(gslot)), np.clip(m - gsize, 0, RECENT - 1)],
            )
        # devices: push each new one to the front of the profile's list
        new_rows = np.flatnonzero(unseen)  # in (customer, arrival) order
        if len(new_rows):
            np.add.at(c["device_count"], s[new_rows], 1)
            new_rows = new_rows[~np.isin(grp[new_rows], sequential)]  # their lists are final
            g = grp[new_rows]
            k = np.arange(len(new_rows)) - np.searchsorted(g, g)  # n-th new device of its customer
            for step in range(int(k.max(initial=-1)) + 1):
                sel = new_rows[k == step]
                rows = c["devices"][s[sel]]
                c["devices"][s[sel]] = np.column_stack([dev[sel], rows[:, :-1]])

    def _emit(
        self,
        batch: Batch,
        order: np.ndarray,
        alert: np.ndarray,
        score: np.ndarray,
        p: np.ndarray,
        rules: dict[str, np.ndarray],
        amt: np.ndarray,
        cfg: FraudConfig,
    ) -> None:
        ev = batch.events
        if alert.any():
            rows = np.flatnonzero(alert)
            reasons = [
                "+".join(
                    [name for name, hit in rules.items() if hit[i]]
                    + ([f"model:{p[i]:.2f}"] if p[i] >= cfg.threshold else [])
                )
                for i in rows.tolist()
            ]
            src = pa.array(order[rows])
            batch.emit(
                "alerts",
                pa.table(
                    {
                        "event_id": ev.column("event_id").take(src),
                        "customer_id": ev.column("customer_id").take(src),
                        "score": score[rows],
                        "reason": reasons,
                        "ts": ev.column("ts").take(src),
                        "amount": amt[rows],
                        "model_version": np.full(len(rows), self.model.version, dtype=np.int64),
                        "detected_at": pa.array(
                            np.full(len(rows), int(time.time() * 1000), dtype=np.int64)
                        ).cast(pa.timestamp("ms")),
                    },
                    schema=ALERT_SCHEMA,
                ),
            )
        if cfg.predictions:
            src = pa.array(order)
            batch.emit(
                "predictions",
                pa.table(
                    {
                        "event_id": ev.column("event_id").take(src),
                        "customer_id": ev.column("customer_id").take(src),
                        "score": score,
                        "ts": ev.column("ts").take(src),
                    },
                    schema=PREDICTION_SCHEMA,
                ),
            )

    # -- profile export, model sync ------------------------------------------------------------
    def active_topics(self) -> tuple[str, ...]:
        return ("alerts", "predictions") if self.config.predictions else ("alerts",)

    def export(self, table: pa.Table) -> pa.Table:
        n = pc.max_element_wise(table["txn_count"], 1).cast(pa.float64())
        mean = pc.divide(table["amount_sum"], n)
        var = pc.max_element_wise(
            pc.subtract(pc.divide(table["amount_sumsq"], n), pc.multiply(mean, mean)), 0.0
        )
        return table.append_column("amount_mean", mean).append_column("amount_std", pc.sqrt(var))

    def snapshot(self) -> bytes:
        return self.model.snapshot()

    def restore(self, blob: bytes) -> None:
        import pickle

        self.model = pickle.loads(blob)

    def merge_snapshots(self, blobs: list[bytes]) -> bytes | None:
        return OnlineModel.average(blobs) if blobs else None

    @handler
    def summary(self, state: dict) -> dict:
        """A short view of the profile: count, mean amount, distinct devices, alerts."""
        n = max(state["txn_count"], 1)
        return {
            "txn_count": state["txn_count"],
            "amount_mean": state["amount_sum"] / n,
            "device_count": state["device_count"],
            "alert_count": state["alert_count"],
        }
