"""Single-process, vectorized numpy baseline of the card-fraud app (the yardstick for the runtime).

An independent re-implementation of what ``actors.fraud.app.make_app`` + ``Customer.apply`` do,
without shards, Ray or LanceDB: one global set of numpy arrays holds every customer's
profile, indexed by a dense customer number. Per batch it

1. validates the rows (``actors.fraud.app.TRANSACTIONS.validate``) and drops redelivered
   ``event_id``s (a sorted array of seen ids; the first occurrence wins);
2. groups the events by customer, arrival order kept, and computes each event's features
   against the profile *as it was just before that event*: the stored profile plus prefix
   sums over the customer's earlier events of the same batch;
3. computes the rule signals (``high_amount``, ``burst``, ``far_location``,
   ``new_device_high_amount``) as features, scores with the online model (the rules'
   combined evidence before it has learned) and alerts at the live-calibrated threshold
   (``actors.fraud.scoring.Scorer``, shared with the app);
4. learns from the labels (test-then-train, every fraud plus the same event-id-chosen
   share of non-frauds as ``Customer.apply``, weighted back up);
5. folds the batch into the profiles.

Only the scoring (``actors.fraud.scoring.Scorer``: model and threshold) and the feature
scaling (``actors.fraud.features.features``) are shared with the runtime, so both score the same
feature vectors. There is **one model for the whole stream** (no replicas), trained batch
by batch. The runtime keeps one replica per shard, each learning from its shard's share
of the labels, and averages them at checkpoints, so its model scores differ slightly:
alert sets can differ where the model, not a rule, decides. (With a single shard and the
same batches the runtime trains exactly this model.) With ``FraudConfig(learn=False)`` no model is involved and the
results must match the runtime exactly.

Where ``Customer.apply`` batches an approximation of the per-event definition, this
baseline follows the per-event definition:

* "since last" is the time since the customer's previous event in arrival order (as
  are the previous place and the burst ring), also across batches; ``Customer.apply``
  takes the profile's ``last_ts`` (the *latest* timestamp) across batches instead;
* the device memory is a ring of the 8 most recently *new* devices; an event's device is
  new if it is not in the ring as it stands just before the event, so a device pushed out
  earlier in the same batch counts as new again (customers whose ring can overflow
  within a batch are replayed event by event, which is rare).

Both agree with ``Customer.apply`` on time-ordered streams where no customer meets more
than 8 devices in one batch, which covers the generated streams at the usual sizes.

Usage: ``python scripts/baseline_fraud.py events.parquet [--batch-size N] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from actors.fraud.app import TRANSACTIONS
from actors.fraud.customer import FraudConfig
from actors.fraud.features import (
    category_bits,
    features,
    novelty,
)
from actors.fraud.merchants import buckets_of
from actors.fraud.scoring import Scorer, rule_hits
from runtime.state.keys import hash_keys

NO_TS = -(2**62)  # empty slot of the recent-timestamps ring
RECENT = 4  # recent timestamps kept per customer (burst rule)
DEVICES = 8  # new devices remembered per customer
EARTH_KM = 6371.0


class Profiles:
    """All customer profiles as numpy columns, row ``i`` = dense customer ``i``."""

    SCALARS = {
        "txn_count": (np.int64, 0),
        "amount_sum": (np.float64, 0.0),
        "amount_sumsq": (np.float64, 0.0),
        "amount_max": (np.float64, 0.0),
        "first_ts": (np.int64, 0),
        "last_ts": (np.int64, 0),
        "last_lat": (np.float64, 0.0),
        "last_lon": (np.float64, 0.0),
        "lat_sum": (np.float64, 0.0),
        "lon_sum": (np.float64, 0.0),
        "device_count": (np.int64, 0),
        "alert_count": (np.int64, 0),
        "categories": (np.int64, 0),
        "last_new_device": (np.int64, 0),
        "last_new_device_ts": (np.int64, NO_TS),
    }

    def __init__(self, capacity: int = 1 << 14) -> None:
        self.n = 0
        self.cap = capacity
        for k, (t, d) in self.SCALARS.items():
            setattr(self, k, np.full(capacity, d, dtype=t))
        self.devices = np.zeros((capacity, DEVICES), dtype=np.int64)
        self.recent_ts = np.full((capacity, RECENT), NO_TS, dtype=np.int64)
        self._hashes = np.zeros(0, dtype=np.uint64)  # sorted key hashes
        self._index = np.zeros(0, dtype=np.int64)  # dense index of each sorted hash
        self._names: list[pa.Array] = []  # customer ids, in dense order

    def rows_of(self, hashes: np.ndarray, names: pa.Array) -> np.ndarray:
        """Dense row of each unique, sorted key hash; new customers get the next free rows."""
        pos = np.searchsorted(self._hashes, hashes)
        known = pos < len(self._hashes)
        known[known] = self._hashes[pos[known]] == hashes[known]
        rows = np.empty(len(hashes), dtype=np.int64)
        rows[known] = self._index[pos[known]]
        fresh = np.flatnonzero(~known)
        if len(fresh):
            rows[fresh] = self.n + np.arange(len(fresh))
            self._grow(self.n + len(fresh))
            self.n += len(fresh)
            self._hashes = np.insert(self._hashes, pos[fresh], hashes[fresh])
            self._index = np.insert(self._index, pos[fresh], rows[fresh])
            self._names.append(names.take(pa.array(fresh)))
        return rows

    def _grow(self, need: int) -> None:
        if need <= self.cap:
            return
        new = max(need, 2 * self.cap)
        for k, (t, d) in self.SCALARS.items():
            setattr(
                self, k, np.concatenate([getattr(self, k), np.full(new - self.cap, d, dtype=t)])
            )
        self.devices = np.concatenate([self.devices, np.zeros((new - self.cap, DEVICES), np.int64)])
        self.recent_ts = np.concatenate(
            [self.recent_ts, np.full((new - self.cap, RECENT), NO_TS, np.int64)]
        )
        self.cap = new

    def table(self) -> pa.Table:
        n = self.n
        ids = pa.chunked_array(self._names, pa.string()).combine_chunks()  # in row order
        ts = pa.timestamp("ms")
        return pa.table(
            {
                "customer_id": ids,
                "txn_count": self.txn_count[:n],
                "amount_sum": self.amount_sum[:n],
                "amount_max": self.amount_max[:n],
                "first_ts": pa.array(self.first_ts[:n]).cast(ts),
                "last_ts": pa.array(self.last_ts[:n]).cast(ts),
                "device_count": self.device_count[:n],
                "alert_count": self.alert_count[:n],
            }
        )


class SeenIds:
    """Event ids applied so far, as one sorted array."""

    def __init__(self) -> None:
        self.ids = np.zeros(0, dtype=np.int64)

    def first_time(self, ids: np.ndarray) -> np.ndarray:
        """Mask of ids neither seen before nor repeated earlier in ``ids``; remembers them."""
        uniq, first = np.unique(ids, return_index=True)
        pos = np.searchsorted(self.ids, uniq)
        old = pos < len(self.ids)
        old[old] = self.ids[pos[old]] == uniq[old]
        mask = np.zeros(len(ids), dtype=bool)
        mask[first[~old]] = True
        self.ids = np.insert(self.ids, pos[~old], uniq[~old])
        return mask


def haversine_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(lon2 - lon1)
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


class Baseline:
    def __init__(self, config: FraudConfig | None = None) -> None:
        self.cfg = config or FraudConfig()
        self.p = Profiles()
        self.seen = SeenIds()
        self.scorer = Scorer(self.cfg)  # the app's model and threshold calibration
        self.model = self.scorer.model
        self.counts = dict.fromkeys(
            ["events", "accepted", "dead_lettered", "duplicates", "labelled", "tp", "fp", "fn"], 0
        )
        self.alert_ids: list[np.ndarray] = []

    def process(self, raw: pa.Table) -> None:
        self.counts["events"] += raw.num_rows
        ok, dead = TRANSACTIONS.validate(raw)
        self.counts["dead_lettered"] += dead.num_rows
        new = self.seen.first_time(ok.column("event_id").to_numpy())
        self.counts["duplicates"] += int((~new).sum())
        ev = ok if new.all() else ok.filter(pa.array(new))
        self.counts["accepted"] += ev.num_rows
        if ev.num_rows:
            self._score_and_fold(ev)

    def _score_and_fold(self, ev: pa.Table) -> None:
        cfg, P = self.cfg, self.p
        # group the batch by customer (key hash), arrival order kept inside each group
        ids = ev.column("customer_id").combine_chunks()
        h = hash_keys(ids)
        n = len(h)
        by_hash = np.argsort(h)  # a stable sort costs 5x more: sort twice on unique keys instead
        sh = h[by_hash]
        opens = np.r_[True, sh[1:] != sh[:-1]]
        gid = np.empty(n, dtype=np.int64)
        gid[by_hash] = np.cumsum(opens) - 1
        order = np.argsort(gid * n + np.arange(n))  # by group, then by arrival
        starts = np.flatnonzero(opens)
        sizes = np.diff(np.r_[starts, n])
        gc = P.rows_of(sh[starts], ids.take(pa.array(order[starts])))  # customer of each group
        c = np.repeat(gc, sizes)  # customer of each event

        def col(name: str) -> np.ndarray:
            return ev.column(name).to_numpy()[order]

        t = ev.column("ts").cast(pa.int64()).to_numpy()[order]
        amt, lat, lon = col("amount"), col("lat"), col("lon")
        dev = hash_keys(ev.column("device_id")).view(np.int64)[order]
        eid = col("event_id")
        idx = np.arange(n)
        grp = np.repeat(np.arange(len(starts)), sizes)
        rank = idx - starts[grp]  # how many earlier events of the customer are in this batch

        def before(v: np.ndarray, stored: np.ndarray) -> np.ndarray:
            """Stored total plus the customer's earlier events in this batch."""
            excl = np.cumsum(v) - v
            return stored[c] + excl - excl[starts][grp]

        # -- features against the profile just before each event ----------------------------
        n_prev = P.txn_count[c] + rank
        has = n_prev > 0
        denom = np.maximum(n_prev, 1)
        mean = before(amt, P.amount_sum) / denom
        std = np.sqrt(np.maximum(before(amt * amt, P.amount_sumsq) / denom - mean * mean, 0.0))
        clat, clon = before(lat, P.lat_sum) / denom, before(lon, P.lon_sum) / denom
        # the place of the previous event: an earlier event's of the batch, or the profile's
        prev = np.maximum(idx - 1, 0)
        plat = np.where(rank > 0, lat[prev], P.last_lat[c])
        plon = np.where(rank > 0, lon[prev], P.last_lon[c])
        # far = far from both the usual place (centroid) and the previous one
        far = np.minimum(haversine_km(lat, lon, clat, clon), haversine_km(lat, lon, plat, plon))
        dist = np.where(has, far, 0.0)

        # time since the customer's previous event (in arrival order, as for the place and
        # the burst ring): an earlier event of the batch, or the newest entry of the ring
        prev_t = np.where(rank > 0, t[prev], P.recent_ts[c, 0])
        since = np.where(has, np.maximum(t - prev_t, 0) / 1000.0, 1e6)

        # burst: how many of the last RECENT earlier events fall in [t - window, t]
        ring = P.recent_ts[c]
        burst = np.zeros(n, dtype=np.int64)
        for j in range(1, RECENT + 1):
            in_batch = rank >= j
            pj = np.where(
                in_batch, t[np.maximum(idx - j, 0)], ring[idx, np.clip(j - rank - 1, 0, RECENT - 1)]
            )
            gap = t - pj
            burst += (pj != NO_TS) & (gap >= 0) & (gap <= cfg.burst_window_ms)

        # new device: not in the ring of the last DEVICES new devices just before the event
        new_dev = self._new_devices(c, dev, grp, starts, sizes, gc)
        new_device = new_dev & has
        bits = category_bits(ev.column("category"))[order]
        stored = (P.last_new_device[c], P.last_new_device_ts[c], P.categories[c])
        young_device, category_new = novelty(
            t, dev, bits, new_device, n_prev, grp, rank, starts[grp], stored
        )

        # -- rules as features, model, calibrated alert (the app's Scorer) -----------------
        rules = rule_hits(cfg, n_prev, amt, mean, std, burst, dist, new_device)
        merchant = buckets_of(ev.column("merchant_id"))[order]
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
        self.alert_ids.append(eid[alert])

        lab = ev.column("is_fraud")
        known = ~lab.is_null().to_numpy(zero_copy_only=False)[order]
        y = lab.fill_null(False).to_numpy(zero_copy_only=False)[order].astype(bool)
        self.counts["labelled"] += int(known.sum())
        self.scorer.merchants.observe(merchant[known], y[known])
        self.counts["tp"] += int((alert & y & known).sum())
        self.counts["fp"] += int((alert & ~y & known).sum())
        self.counts["fn"] += int((~alert & y & known).sum())
        if cfg.learn and known.any():
            with np.errstate(over="ignore"):
                mixed = eid.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
            sampled = (mixed >> np.uint64(40)) % np.uint64(1000) < cfg.negative_sample * 1000
            # rows in the batch's grouped order (customers by key hash, arrival order within):
            # the order of a runtime shard, so with one shard both train the same model
            use = np.flatnonzero(known & (y | sampled))
            weight = np.where(y[use], 1.0, 1.0 / cfg.negative_sample)
            self.scorer.learn(X[use], y[use], weight)
        self.scorer.observe_scores(d)
        if d.model_scored and known.any():
            shadow = d.shadow[known] if d.shadow is not None else np.full(int(known.sum()), np.nan)
            self.scorer.observe_labels(d.score[known], shadow, d.alert[known], y[known])

        # -- fold the batch into the profiles -----------------------------------------------
        last = starts + sizes - 1
        fresh = P.txn_count[gc] == 0
        gmax = np.maximum.reduceat(amt, starts)
        tmin, tmax = np.minimum.reduceat(t, starts), np.maximum.reduceat(t, starts)
        P.amount_max[gc] = np.where(fresh, gmax, np.maximum(P.amount_max[gc], gmax))
        P.first_ts[gc] = np.where(fresh, tmin, np.minimum(P.first_ts[gc], tmin))
        P.last_ts[gc] = np.where(fresh, tmax, np.maximum(P.last_ts[gc], tmax))
        P.txn_count[gc] += sizes
        P.amount_sum[gc] += np.add.reduceat(amt, starts)
        P.amount_sumsq[gc] += np.add.reduceat(amt * amt, starts)
        P.lat_sum[gc] += np.add.reduceat(lat, starts)
        P.lon_sum[gc] += np.add.reduceat(lon, starts)
        P.last_lat[gc], P.last_lon[gc] = lat[last], lon[last]
        P.alert_count[gc] += np.add.reduceat(alert.astype(np.int64), starts)
        P.categories[gc] |= np.bitwise_or.reduceat(bits, starts)
        newest = np.maximum.accumulate(np.where(new_device, idx, -1))[last]
        got_new = newest >= starts
        P.last_new_device[gc[got_new]] = dev[newest[got_new]]
        P.last_new_device_ts[gc[got_new]] = t[newest[got_new]]
        # recent timestamps, newest first: the group's last events, then the old ring
        old = P.recent_ts[gc]
        g = np.arange(len(gc))
        for m in range(RECENT):
            P.recent_ts[gc, m] = np.where(
                m < sizes,
                t[np.maximum(last - m, starts)],
                old[g, np.clip(m - sizes, 0, RECENT - 1)],
            )
        # devices, newest first: the group's new devices (latest first), then the old ring
        pushed = np.flatnonzero(new_dev)  # grouped, arrival order kept
        if len(pushed):
            k = np.bincount(grp[pushed], minlength=len(gc))  # new devices per group
            last_push = np.cumsum(k) - 1
            old = P.devices[gc]
            for m in range(DEVICES):
                P.devices[gc, m] = np.where(
                    m < k,
                    dev[pushed[np.clip(last_push - m, 0, len(pushed) - 1)]],
                    old[g, np.clip(m - k, 0, DEVICES - 1)],
                )
            P.device_count[gc] += k

    def _new_devices(self, c, dev, grp, starts, sizes, gc) -> np.ndarray:
        """Per event: is its device absent from the customer's device ring just before it?"""
        P = self.p
        in_ring = (P.devices[c] == dev[:, None]).any(axis=1)
        new = np.zeros(len(c), dtype=bool)
        cand = np.flatnonzero(~in_ring)
        if len(cand):
            # the first event of the batch with a (customer, device) pair brings the device
            o = cand[np.lexsort((cand, dev[cand], c[cand]))]
            first = np.r_[True, (c[o[1:]] != c[o[:-1]]) | (dev[o[1:]] != dev[o[:-1]])]
            new[o[first]] = True
        # that is exact unless the ring overflows inside the batch: replay those customers
        pushes = np.bincount(grp[new], minlength=len(gc))
        for g in np.flatnonzero(np.minimum(P.device_count[gc], DEVICES) + pushes > DEVICES):
            ring = P.devices[gc[g]].tolist()
            for i in range(starts[g], starts[g] + sizes[g]):
                d = int(dev[i])
                new[i] = d not in ring
                if new[i]:
                    ring = [d, *ring[:-1]]
        return new

    def result(self, seconds: float) -> dict[str, Any]:
        cnt = self.counts
        tp, fp, fn = cnt["tp"], cnt["fp"], cnt["fn"]
        alert_ids = np.concatenate(self.alert_ids) if self.alert_ids else np.zeros(0, np.int64)
        return {
            "events": cnt["events"],
            "accepted": cnt["accepted"],
            "dead_lettered": cnt["dead_lettered"],
            "duplicates": cnt["duplicates"],
            "alerts": len(alert_ids),
            "labelled": cnt["labelled"],
            "precision": round(tp / (tp + fp), 4) if tp + fp else None,
            "recall": round(tp / (tp + fn), 4) if tp + fn else None,
            "seconds": seconds,
            "events_per_s": cnt["events"] / seconds if seconds > 0 else 0.0,
            "profiles": self.p.table(),
            "alert_ids": np.sort(alert_ids),
        }


def _batches(source: str | Path | Iterable[pa.Table | pa.RecordBatch], batch_size: int):
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.suffix.lower() not in (".parquet", ".pq"):
            raise ValueError(f"the baseline reads Parquet files only, not {path.name}")
        for rb in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
            yield pa.Table.from_batches([rb])
    else:
        for b in source:
            yield b if isinstance(b, pa.Table) else pa.Table.from_batches([b])


def run_baseline(
    path_or_table_iter: str | Path | Iterable[pa.Table | pa.RecordBatch],
    batch_size: int = 100_000,
    config: FraudConfig | None = None,
) -> dict[str, Any]:
    """Replay a Parquet file (read in ``batch_size`` rows) or an iterable of Arrow batches.

    Returns counts, alerts, precision/recall on labelled rows, timing (reading included;
    ``cpu_seconds`` too, which is less sensitive to other load on the machine),
    ``profiles`` (an Arrow table) and ``alert_ids`` (sorted event ids that raised an alert).
    """
    base = Baseline(config)
    t0, cpu0 = time.perf_counter(), time.process_time()
    for table in _batches(path_or_table_iter, batch_size):
        base.process(table)
    out = base.result(time.perf_counter() - t0)
    out["cpu_seconds"] = time.process_time() - cpu0  # all threads of the process
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", help="a Parquet file of transactions")
    ap.add_argument("--batch-size", type=int, default=100_000)
    ap.add_argument("--no-learn", action="store_true", help="rules only (FraudConfig(learn=False))")
    ap.add_argument("--alerts-out", help="write the alerted event ids here (.npy)")
    ap.add_argument("--profiles-out", help="write the profiles here (.parquet)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    res = run_baseline(args.path, args.batch_size, FraudConfig(learn=not args.no_learn))
    if args.alerts_out:
        np.save(args.alerts_out, res["alert_ids"])
    if args.profiles_out:
        pq.write_table(res["profiles"], args.profiles_out)
    out = {k: v for k, v in res.items() if k not in ("profiles", "alert_ids")}
    out["customers"] = res["profiles"].num_rows
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>14}: {v:,.2f}" if isinstance(v, float) else f"{k:>14}: {v}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
