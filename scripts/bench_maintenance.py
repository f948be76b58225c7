"""Predictive maintenance, measured: train on one fleet, evaluate on a held-out one.

One run: the app (real Runtime, real LanceDB) sees a training fleet (it learns from the
failures it observes; the core fits the isolation forest on healthy windows), then a
held-out fleet drawn with another seed and differently shaped (``FleetConfig.heldout``:
5-minute readings, other degradation lengths, gains, noise, duty and seasons), never
tuned on. The held-out fleet's alarms are read back from the ``maintenance`` table and
scored against the generator's ground truth; a plain fixed-threshold z-score detector is
scored on the same held-out readings. A failure counts as predicted if an alarm came
within the horizon H before it (lead time = the time between); an alarm with no failure
within H after it is a false alarm; a sensor fault is reported if its device got a
failure alarm during the fault or within H after it.

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


def score_alarms(alarms: pa.Table, truth: pa.Table, cfg: FleetConfig, horizon_h: float) -> dict:
    """Failures predicted, lead times, false alarms and sensor faults reported, for alarms
    ``(device_id, ts[, mode])`` against the fleet's ground truth."""
    H = int(horizon_h * HOUR_MS)
    ids = truth["device_id"].to_numpy(zero_copy_only=False)
    pos = {d: i for i, d in enumerate(ids.tolist())}
    ms = lambda col: truth[col].cast(pa.int64()).fill_null(-1).to_numpy()  # noqa: E731
    fails, f0, f1 = ms("fails_at"), ms("fault_start"), ms("fault_end")
    mode = truth["mode"].to_numpy(zero_copy_only=False)
    dev = np.array([pos[d] for d in alarms["device_id"].to_pylist()], dtype=np.int64)
    ts = alarms["ts"].cast(pa.int64()).to_numpy()
    amode = alarms["mode"].to_numpy(zero_copy_only=False) if "mode" in alarms.column_names else None
    start = round(cfg.start.timestamp() * 1000)
    end = start + int(cfg.days * DAY_MS)
    failing = np.flatnonzero((fails >= start) & (fails < end))
    ft = fails[dev]
    good = (ft >= 0) & (ts < ft) & (ft - ts <= H)
    leads, modes_right = [], 0
    for i in failing.tolist():
        hit = np.flatnonzero((dev == i) & good)
        if len(hit):
            first = hit[np.argmin(ts[hit])]
            leads.append((fails[i] - ts[first]) / HOUR_MS)
            modes_right += amode is not None and amode[first] == mode[i]
    faulty = np.flatnonzero(f0 >= 0)
    reported = sum(
        bool(np.any((dev == i) & (ts >= f0[i]) & (ts < f1[i] + H))) for i in faulty.tolist()
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
        "alarms": len(ts),
        **({"mode_correct": int(modes_right)} if amode is not None else {}),
    }


def zscore_baseline(cfg: FleetConfig, z: float = 4.0, horizon_h: float = 24.0) -> pa.Table:
    """Alarms of a fixed-threshold z-score on the raw readings: each device's temperature and
    vibration against their EWMA mean and variance over about a day, after two days of
    warm-up; an alarm silences the device for one horizon. Vectorized over devices."""
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
    quiet = np.full(n, -1)
    out_dev, out_tick = [], []
    silence = int(horizon_h * HOUR_MS // cfg.interval_ms)
    for k in range(1, gen.ticks):
        d = x[k] - mean
        zz = np.abs(d) / np.sqrt(np.maximum(var, 1e-6))
        hit = (k >= warm) & (zz > z).any(axis=1) & (k >= quiet)
        if hit.any():
            out_dev.append(np.flatnonzero(hit))
            out_tick.append(np.full(int(hit.sum()), k))
            quiet[hit] = k + silence
        mean += a * d
        var = (1 - a) * (var + a * d * d)
    devs = np.concatenate(out_dev) if out_dev else np.zeros(0, np.int64)
    ticks = np.concatenate(out_tick) if out_tick else np.zeros(0, np.int64)
    return pa.table(
        {
            "device_id": gen._ids.take(pa.array(devs)),
            "ts": pa.array(grids["ts"][ticks, devs].astype(np.int64)).cast(pa.timestamp("ms")),
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
    result = score_alarms(alarms, truth, held, mcfg.horizon_h)
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
