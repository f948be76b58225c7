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

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from actors.fraud.features import (
    DEVICES,
    NO_TS,
    RECENT,
    category_bits,
    devices_one_by_one,
    features,
    haversine_km,
    novelty,
)
from actors.fraud.labels import LABELS, LabelDesk
from actors.fraud.merchants import buckets_of
from actors.fraud.model import FEATURES, MODEL_KIND
from actors.fraud.outputs import (
    alert_rows,
    drift_rows,
    prediction_rows,
)
from actors.fraud.scoring import Decision, Scorer, rule_hits
from actors.grouped import by_entity
from runtime import Batch, EntityKind, handler
from runtime.state.keys import hash_keys
from runtime.state.snapshot import reading


@dataclass(frozen=True)
class FraudConfig:
    """Scoring settings: the alert threshold is calibrated live (see actors.fraud.threshold)
    to meet ``target_precision`` once enough frauds are labelled, and keeps within
    ``alert_budget`` alerts per 10,000 events until then. A fixed ``threshold`` overrides both.
    The rule ``weights`` score only until the model has learned (1 - prod(1 - w))."""

    threshold: float | None = None
    target_precision: float | None = 0.8
    alert_budget: float = 50.0
    #: events after which old score evidence counts half in the threshold's calibration
    calibration_half_life: float = 200_000.0
    learn: bool = True
    #: replay labelled events as if each label came this long (event time) after it
    label_delay_ms: int | None = None
    feature_log_rows: int = 200_000  # per shard: scored events kept for their labels
    label_retention_ms: int = 30 * 24 * 3600 * 1000  # a label later than this finds nothing
    predictions: bool = False  # also publish every event's score to the `predictions` topic
    #: with predictions: the model's feature columns too (x_<feature>), for offline yardsticks
    prediction_features: bool = False
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
    topics = ("alerts", "predictions", "drift")
    feedback = LABELS  # labels that come after their events (see actors.fraud.labels)
    #: when the alert was raised (wall clock): differs between two runs of the same events
    volatile_columns = ("detected_at",)
    preload = ("sklearn.linear_model",)  # the first labels fit the model (OnlineModel.clf)
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
        "categories": "int64",  # a bit per category bought in (features.category_bits)
        "last_new_device": "int64",  # the latest device new to the profile, and when
        "last_new_device_ts": ("int64", NO_TS),
    }

    def __init__(self, config: FraudConfig | None = None) -> None:
        super().__init__(config or FraudConfig())
        self.scorer = Scorer(self.config)
        self.desk = LabelDesk(self.config, self.scorer)  # labels now, or when they come

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
        bits = category_bits(ev.column("category"))[order]
        merchant = buckets_of(ev.column("merchant_id"))[order]
        stored = (c["last_new_device"][s], c["last_new_device_ts"][s], c["categories"][s])
        young_device, category_new = novelty(
            t, dev, bits, new_device, n_prev, grp, rank, gstart[grp], stored
        )

        # -- score: the rules are features, the model decides, then it learns ----------------
        rules = rule_hits(cfg, n_prev, amt, mean, std, burst, dist, new_device)
        X = features(
            amt,
            mean,
            std,
            burst,
            dist,
            new_device,
            since,
            n_prev,
            rules,
            category_new,
            young_device,
            self.scorer.merchants.feature(merchant),
        )
        d = self.scorer.decide(X, rules)
        alert = d.alert

        batch.count("alerts", int(alert.sum()))
        batch.count("model_scored", len(alert) if d.model_scored else 0)
        for name, hit in rules.items():
            batch.count(f"rule:{name}", int(hit.sum()))
        self.scorer.observe_scores(d)
        self.desk.on_events(batch, ev, order, t, X, d, merchant)
        self._emit(batch, order, d, X, rules, amt, cfg)

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
        c["categories"][gslot] |= np.bitwise_or.reduceat(bits, gstart)
        newest = np.maximum.accumulate(np.where(new_device, np.arange(n), -1))[gend]
        got_new = newest >= gstart
        c["last_new_device"][gslot[got_new]] = dev[newest[got_new]]
        c["last_new_device_ts"][gslot[got_new]] = t[newest[got_new]]
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

    def on_feedback(self, batch: Batch) -> None:
        """Labels that came on their own (see actors.fraud.labels)."""
        self.desk.on_labels(batch)
        self._emit_drift(batch)

    def _emit(
        self,
        batch: Batch,
        order: np.ndarray,
        d: Decision,
        X: np.ndarray,
        rules: dict[str, np.ndarray],
        amt: np.ndarray,
        cfg: FraudConfig,
    ) -> None:
        version = self.scorer.model.version
        self._emit_drift(batch)
        if d.alert.any():
            rows = np.flatnonzero(d.alert)
            why = self.scorer.reasons(X, rules, rows, d)
            batch.emit("alerts", alert_rows(batch.events, order, rows, d, why, amt, version))
        if cfg.predictions:
            table = prediction_rows(batch.events, order, d, version)
            if cfg.prediction_features:
                for j, name in enumerate(FEATURES):
                    table = table.append_column(f"x_{name}", pa.array(X[:, j]))
            batch.emit("predictions", table)

    def _emit_drift(self, batch: Batch) -> None:
        if self.scorer.drifts:  # what the drift monitor found (a challenger now trains)
            found, self.scorer.drifts = self.scorer.drifts, []
            batch.count("drift_events", len(found))
            batch.emit("drift", drift_rows(found, self.scorer.model.version))

    # -- profile export, model sync ------------------------------------------------------------
    def active_topics(self) -> tuple[str, ...]:
        return (
            ("alerts", "predictions", "drift") if self.config.predictions else ("alerts", "drift")
        )

    def export(self, table: pa.Table) -> pa.Table:
        n = pc.max_element_wise(table["txn_count"], 1).cast(pa.float64())
        mean = pc.divide(table["amount_sum"], n)
        var = pc.max_element_wise(
            pc.subtract(pc.divide(table["amount_sumsq"], n), pc.multiply(mean, mean)), 0.0
        )
        return table.append_column("amount_mean", mean).append_column("amount_std", pc.sqrt(var))

    def snapshot(self) -> bytes:
        return self.scorer.to_bytes()

    def restore(self, blob: bytes) -> None:
        """Model and calibration from arrays and JSON (a ``fraud_model`` snapshot); anything
        else (a pickle, an older bare npz, a corrupt one) is refused with
        :class:`~runtime.errors.SnapshotError`, never unpickled: the start stops."""
        with reading(MODEL_KIND, "the saved model of customers"):
            self.scorer.load(blob)

    def shard_snapshot(self) -> bytes | None:
        return self.desk.snapshot()  # this shard's scored events waiting for labels

    def restore_shard(self, blob: bytes) -> None:
        self.desk.restore(blob)

    def merge_snapshots(self, blobs: list[bytes]) -> bytes | None:
        return Scorer.merge(blobs) if blobs else None

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

    def model_card(self, snapshot: bytes) -> dict:
        """What the model registry records of a snapshot (see Scorer.card)."""
        return Scorer.card(snapshot, self.config)
