"""Predictive maintenance, measured: train on one fleet, evaluate on a held-out one.

One run: the app (real Runtime, real LanceDB) sees a training fleet (it learns from the
failures it observes; the core fits the isolation forest on healthy windows), then a
held-out fleet drawn with another seed and differently shaped (``FleetConfig.heldout``:
5-minute readings, other degradation lengths, gains, noise, duty and seasons), never
tuned on. The held-out fleet's alarm episodes are read back from the ``maintenance``
table (its ``open`` and ``close`` rows) and scored against the generator's ground truth; a
plain fixed-threshold z-score detector is scored on the same held-out readings by the
same rule. The rule, for the horizon H (24 h):

* a failure is **predicted** if an alarm of its device was open at some point within
  ``(failure - H, failure]``; its **lead time** is ``failure - max(first opening of those
  alarms, failure - H)`` (so at most H: an alarm open since earlier counts as H);
* a **false alarm** is an alarm opening not followed by a failure of that device within
  H (an alarm that opened more than H ahead of its failure is one too), per 100
  device-days of the held-out fleet;
* a sensor fault is **reported as a failure** if its device had an alarm opening during
  the fault or within H after it.

Tune on a validation seed (``--seed 8``); report held-out seeds (101, 202) untouched.

    python scripts/bench_maintenance.py --json --seed 101
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.maintenance.app import make_app  # noqa: E402
from actors.maintenance.fleet import (  # noqa: E402
    DAY_MS,
    HOUR_MS,
    FleetConfig,
    FleetGenerator,
    FleetSource,
)
from actors.maintenance.kind import MaintenanceConfig  # noqa: E402


def episodes(rows: pa.Table, end_ms: int) -> pa.Table:
    """Alarm episodes ``(device_id, open_ms, close_ms, mode)`` from ``open``/``close`` rows
    (an alarm still open at the end closes at ``end_ms``)."""
    rows = rows.filter(pc.is_in(rows["state"], pa.array(["open", "close"])))
    rows = rows.sort_by([("device_id", "ascending"), ("ts", "ascending")])
    dev = rows["device_id"].to_numpy(zero_copy_only=False)
    ts = rows["ts"].cast(pa.int64()).to_numpy()
    is_open = rows["state"].to_numpy(zero_copy_only=False) == "open"
    mode = rows["mode"].to_numpy(zero_copy_only=False)
    o = np.flatnonzero(is_open)
    nxt = o + 1
    closes = (nxt < len(ts)) & ~is_open[np.minimum(nxt, len(ts) - 1)]
    closes &= dev[np.minimum(nxt, len(ts) - 1)] == dev[o]
    close_ms = np.where(closes, ts[np.minimum(nxt, len(ts) - 1)], end_ms)
    return pa.table({"device_id": dev[o], "open_ms": ts[o], "close_ms": close_ms, "mode": mode[o]})


def score_alarms(eps: pa.Table, truth: pa.Table, cfg: FleetConfig, horizon_h: float) -> dict:
    """Failures predicted, lead times, false alarms and sensor faults reported, for alarm
    episodes ``(device_id, open_ms, close_ms[, mode])``, by the rule of the docstring."""
    H = int(horizon_h * HOUR_MS)
    ids = truth["device_id"].to_numpy(zero_copy_only=False)
    pos = {d: i for i, d in enumerate(ids.tolist())}
    ms = lambda col: truth[col].cast(pa.int64()).fill_null(-1).to_numpy()  # noqa: E731
    fails, f0, f1 = ms("fails_at"), ms("fault_start"), ms("fault_end")
    mode = truth["mode"].to_numpy(zero_copy_only=False)
    dev = np.array([pos[d] for d in eps["device_id"].to_pylist()], dtype=np.int64)
    t_open = np.asarray(eps["open_ms"].to_numpy(), dtype=np.int64)
    t_close = np.asarray(eps["close_ms"].to_numpy(), dtype=np.int64)
    amode = eps["mode"].to_numpy(zero_copy_only=False) if "mode" in eps.column_names else None
    start = round(cfg.start.timestamp() * 1000)
    end = start + int(cfg.days * DAY_MS)
    failing = np.flatnonzero((fails >= start) & (fails < end))
    leads, modes_right = [], 0
    for i in failing.tolist():
        F = fails[i]
        hit = np.flatnonzero((dev == i) & (t_open <= F) & (t_close > F - H))
        if len(hit):
            first = hit[np.argmin(t_open[hit])]
            leads.append((F - max(t_open[first], F - H)) / HOUR_MS)
            modes_right += amode is not None and amode[first] == mode[i]
    ft = fails[dev]
    good = (ft >= 0) & (t_open <= ft) & (ft - t_open <= H)
    faulty = np.flatnonzero(f0 >= 0)
    reported = sum(
        bool(np.any((dev == i) & (t_open >= f0[i]) & (t_open < f1[i] + H))) for i in faulty.tolist()
    )
    return {
        "failures": len(failing),
        "predicted": len(leads),
        "recall": round(len(leads) / len(failing), 4) if len(failing) else None,
        "median_lead_time_h": round(float(np.median(leads)), 2) if leads else None,
        "horizon_h": horizon_h,
        "false_alarms": int((~good).sum()),
        "false_alarms_per_100_device_days": round(
            100.0 * int((~good).sum()) / (cfg.n_devices * cfg.days), 3
        ),
        "sensor_faults": len(faulty),
        "sensor_faults_reported": int(reported),
        "alarms": len(t_open),
        **({"mode_correct": int(modes_right)} if amode is not None else {}),
    }


def score_sensor_rows(table: pa.Table, truth: pa.Table) -> dict:
    """The held-out fleet's ``sensor_fault`` episodes: how many opened, how many of them on a
    device with a real sensor fault (opened during it), and how many of the faults got one."""
    rows = table.filter(
        pc.and_(pc.equal(table["kind"], "sensor_fault"), pc.equal(table["state"], "open"))
    )
    rows = rows.filter(pc.starts_with(rows["device_id"], "h-"))
    ids = truth["device_id"].to_pylist()
    pos = {d: i for i, d in enumerate(ids)}
    f0 = truth["fault_start"].cast(pa.int64()).fill_null(-1).to_numpy()
    f1 = truth["fault_end"].cast(pa.int64()).fill_null(-1).to_numpy()
    dev = np.array([pos[d] for d in rows["device_id"].to_pylist()], dtype=np.int64)
    ts = rows["ts"].cast(pa.int64()).to_numpy()
    during = (f0[dev] >= 0) & (ts >= f0[dev]) & (ts <= f1[dev] + HOUR_MS)
    return {
        "opened": len(ts),
        "during_a_real_fault": int(during.sum()),
        "faults_detected": len(set(dev[during].tolist())),
        "faults": int((f0 >= 0).sum()),
    }


def zscore_baseline(cfg: FleetConfig, z: float = 4.0, horizon_h: float = 24.0) -> pa.Table:
    """Alarms of a fixed-threshold z-score on the raw readings: each device's temperature and
    vibration against their EWMA mean and variance over about a day, after two days of
    warm-up. An alarm opens at an exceedance and closes after an hour without one (the
    same episodes the app's alarms are scored as). Vectorized over devices."""
    gen = FleetGenerator(cfg)
    t = pa.Table.from_batches(list(gen.stream(0, gen.n_events, 200_000)))
    n = cfg.n_devices
    eid = t["event_id"].to_numpy() - cfg.first_event_id
    tick, slot = eid // n, eid % n
    dev = gen._by_phase[slot]
    shape = (gen.ticks, n)
    grids = {}
    for name in ("temperature", "vibration", "ts"):
        g = np.zeros(shape)
        g[tick, dev] = t[name].cast(pa.int64()).to_numpy() if name == "ts" else t[name].to_numpy()
        grids[name] = g
    a = cfg.interval_ms / DAY_MS
    warm = int(2 * DAY_MS // cfg.interval_ms)
    x = np.stack([grids["temperature"], grids["vibration"]], axis=2)
    mean, var = x[0].copy(), np.zeros((n, 2))
    last = np.full(n, -(10**9))
    opened = np.full(n, -1)
    out_dev, out_open, out_close = [], [], []
    hour = max(1, int(HOUR_MS // cfg.interval_ms))
    ts = grids["ts"]
    for k in range(1, gen.ticks):
        d = x[k] - mean
        zz = np.abs(d) / np.sqrt(np.maximum(var, 1e-6))
        hit = (k >= warm) & (zz > z).any(axis=1)
        last = np.where(hit, k, last)
        done = (opened >= 0) & (k - last >= hour)
        if done.any():
            i = np.flatnonzero(done)
            out_dev.append(i), out_open.append(ts[opened[i], i]), out_close.append(ts[k, i])
            opened[i] = -1
        opened = np.where(hit & (opened < 0), k, opened)
        mean += a * d
        var = (1 - a) * (var + a * d * d)
    i = np.flatnonzero(opened >= 0)
    end = round(cfg.start.timestamp() * 1000) + int(cfg.days * DAY_MS)
    out_dev.append(i), out_open.append(ts[opened[i], i]), out_close.append(np.full(len(i), end))
    devs = np.concatenate(out_dev).astype(np.int64)
    return pa.table(
        {
            "device_id": gen._ids.take(pa.array(devs)),
            "open_ms": np.concatenate(out_open).astype(np.int64),
            "close_ms": np.concatenate(out_close).astype(np.int64),
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=101, help="seed of the held-out fleet")
    ap.add_argument("--train-seed", type=int, default=7)
    ap.add_argument("--train-devices", type=int, default=1000)
    ap.add_argument("--train-days", type=float, default=21.0)
    ap.add_argument("--heldout-devices", type=int, default=600)
    ap.add_argument("--heldout-days", type=float, default=14.0)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--mode", choices=("local", "ray"), default="local")
    ap.add_argument("--z", type=float, default=4.0, help="the baseline's z threshold")
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    from runtime import Runtime, run

    train = FleetConfig(n_devices=args.train_devices, days=args.train_days, seed=args.train_seed)
    held = FleetConfig.heldout(
        seed=args.seed, n_devices=args.heldout_devices, days=args.heldout_days
    )
    mcfg = MaintenanceConfig()
    app = make_app(mcfg, sites=train.sites + held.sites)
    data = args.data or Path(tempfile.mkdtemp(prefix="bench-maint-"))
    t0 = time.perf_counter()
    with Runtime(
        data_dir=data, mode=args.mode, shards=args.shards, checkpoint_rows=1_000_000
    ) as rt:
        s_train = run(rt, app, FleetSource(train, batch_size=100_000))
        s_held = run(rt, app, FleetSource(held, batch_size=100_000))
        models = rt.store.read("models").num_rows if rt.store.exists("models") else 0
    seconds = time.perf_counter() - t0
    from runtime.state.store import Store

    table = Store(data).read("maintenance")
    alarms = table.filter(
        pc.and_(pc.equal(table["kind"], "failure_risk"), pc.starts_with(table["device_id"], "h-"))
    )
    truth = FleetGenerator(held).devices()
    end_ms = round(held.start.timestamp() * 1000) + int(held.days * DAY_MS)
    result = score_alarms(episodes(alarms, end_ms), truth, held, mcfg.horizon_h)
    result["sensor_episodes"] = score_sensor_rows(table, truth)
    t1 = time.perf_counter()
    base = score_alarms(zscore_baseline(held, args.z, mcfg.horizon_h), truth, held, mcfg.horizon_h)
    result |= {
        "baseline": {"method": f"fixed-threshold z-score > {args.z}", **base},
        "heldout": {"seed": held.seed, "devices": held.n_devices, "days": held.days},
        "train": {"seed": train.seed, "devices": train.n_devices, "days": train.days},
        "events": s_train.input + s_held.input,
        "seconds": round(seconds, 1),
        "events_per_s": round((s_train.input + s_held.input) / seconds),
        "baseline_seconds": round(time.perf_counter() - t1, 1),
        "model_versions": models,
        "edge_counters_heldout": s_held.app,
    }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:36} {v}")


if __name__ == "__main__":
    main()
