"""The device: telemetry validated and condensed at the edge, only what matters sent to the core.

:class:`Device` is an entity kind with a vectorized ``apply``, meant to run on the
edge node of the device's site. Per reading it

* scores temperature and vibration against the device's EWMA mean and variance
  *as they were just before the reading* (a z-score). Readings with
  ``|z| > z_threshold`` are anomalies: one row each goes to the ``maintenance`` topic;
* folds the reading into an event-time tumbling window of ``summary_every_ms``
  (aligned to the epoch, so all devices' windows line up at the core). When a
  reading of a later window arrives, the device's open window closes and ONE
  summary row (count, mean and max of temperature and vibration, anomalies)
  goes to ``device_summaries``.

Windows close on event time, when the device's next reading arrives: a device that
goes silent keeps its last window at the edge until it reports again (the engine
has no timers or watermarks to close it earlier).

Only summaries and maintenance alerts cross to the core; the raw readings stay at
the edge. The counters ``raw_rows/raw_bytes`` and ``summary_*``/``maintenance_*``
measure the difference.

Everything is computed per device in arrival order, so state, alerts and
summaries are the same whatever the batch boundaries (and whether a site's
stream runs alone at its edge or the whole fleet's at once).

>>> import pyarrow as pa, tempfile
>>> from runtime import Runtime, run
>>> from actors.telemetry import TelemetryConfig, TelemetrySource
>>> src = TelemetrySource(TelemetryConfig(n_devices=20), n_events=2_000, batch_size=700)
>>> with Runtime(data_dir=tempfile.mkdtemp(), mode="local", shards=1) as rt:
...     stats = run(rt, device_app(), src)
...     device = Device.ref("d-eu-1-00003").get()
>>> stats.accepted, device["count"], device["site"]
(2000, 100, 'eu-1')
>>> stats.app["raw_rows"], stats.app["summary_rows"] > 0, stats.app["reduction_rows"] > 5
(2000, True, True)
>>> report(stats)["edge_to_core"]["raw_rows"]  # what `edgecore` prints about the run
2000
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from actors.telemetry import TelemetryConfig, TelemetrySource
from runtime import App, Batch, Column, EntityKind, EventSchema, Paced, RunStats, Source, handler
from runtime.errors import ConfigError

MAX_ID_LEN = 128
METRICS = ("temperature", "vibration")

TELEMETRY = EventSchema(
    "telemetry",
    [
        Column("event_id", "int64", min=0),
        Column("ts", "timestamp"),
        Column("device_id", "string", max_len=MAX_ID_LEN),
        Column("site", "string", max_len=MAX_ID_LEN),
        Column("temperature", "float64", min=-50.0, max=200.0),
        Column("vibration", "float64", min=0.0, max=100.0),
        Column("pressure", "float64", min=0.0, max=1000.0),
        Column("failure", "bool", required=False),
    ],
)

SUMMARY_SCHEMA = pa.schema(
    [
        ("device_id", pa.string()),
        ("site", pa.string()),
        ("window_start", pa.timestamp("ms")),
        ("window_end", pa.timestamp("ms")),
        ("n", pa.int64()),
        ("temp_mean", pa.float64()),
        ("temp_max", pa.float64()),
        ("vib_mean", pa.float64()),
        ("vib_max", pa.float64()),
        ("anomalies", pa.int64()),
    ]
)
MAINTENANCE_SCHEMA = pa.schema(
    [
        ("event_id", pa.int64()),
        ("device_id", pa.string()),
        ("site", pa.string()),
        ("ts", pa.timestamp("ms")),
        ("metric", pa.string()),  # temperature, vibration or temperature+vibration
        ("value", pa.float64()),  # of the metric with the larger |z|
        ("z", pa.float64()),
    ]
)
_METRIC_NAMES = pa.array([METRICS[0], METRICS[1], "+".join(METRICS)], pa.string())


SITES = TelemetryConfig().sites  # the sites of the default synthetic fleet


@dataclass(frozen=True)
class DeviceConfig:
    """Detection and summarising settings."""

    alpha: float = 0.05  # EWMA weight of a new reading (memory ~ 1/alpha readings)
    z_threshold: float = 4.0
    summary_every_ms: int = 60_000
    #: readings a device needs before it is scored (its EWMA must settle first)
    warmup: int = 20
    #: floors of the standard deviation (degrees C, mm/s): an alert needs a deviation of at
    #: least z_threshold x floor (4 C, 1 mm/s). Without them an EWMA variance, estimated
    #: from ~40 effective readings, is often too small by chance and turns sensor noise
    #: into "4-sigma" anomalies (a quarter of healthy devices alerted over 3 h of stream)
    temp_min_std: float = 1.0
    vib_min_std: float = 0.25

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha <= 1.0:
            raise ConfigError(f"alpha must be in (0, 1], got {self.alpha}")
        if min(self.summary_every_ms, self.z_threshold, self.warmup) <= 0:
            raise ConfigError("summary_every_ms, z_threshold and warmup must be positive")
        if min(self.temp_min_std, self.vib_min_std) <= 0:
            raise ConfigError("temp_min_std and vib_min_std must be positive")


class Device(EntityKind):
    name = "devices"
    key = "device_id"
    topics = ("device_summaries", "maintenance")
    site_key = "site"  # a site's devices live in that site's shards, at its edge
    state = {
        "site": "string",  # the engine keeps strings too; lets the core query devices by site
        "count": "int64",
        "last_ts": "timestamp",
        "temp_mean": "float64",  # EWMA
        "temp_var": "float64",  # EWMA variance
        "vib_mean": "float64",
        "vib_var": "float64",
        "anomalies": "int64",
        # the open summary window (win_n == 0: none)
        "window_start": "timestamp",
        "win_n": "int64",
        "win_temp_sum": "float64",
        "win_temp_max": "float64",
        "win_vib_sum": "float64",
        "win_vib_max": "float64",
        "win_anomalies": "int64",
    }

    def __init__(self, config: DeviceConfig | None = None) -> None:
        super().__init__(config or DeviceConfig())

    # -- the hot path ----------------------------------------------------------------------
    def apply(self, batch: Batch) -> None:
        cfg: DeviceConfig = self.config
        ev, st = batch.events, batch.state
        order, gstart = batch.order, batch.starts  # grouped by device, arrival order kept
        s = batch.slots[order]
        n = len(s)
        gsize = np.diff(np.append(gstart, n))
        grp = np.repeat(np.arange(len(gstart)), gsize)
        rank = np.arange(n) - gstart[grp]
        gslot = s[gstart]
        c = st.cols
        t = ev.column("ts").cast(pa.int64()).to_numpy()[order]
        x = np.column_stack([ev.column(m).to_numpy()[order] for m in METRICS])

        # -- z-scores against the EWMA before each reading, then the EWMA after the batch ----
        mean = np.column_stack([c["temp_mean"][gslot], c["vib_mean"][gslot]])
        var = np.column_stack([c["temp_var"][gslot], c["vib_var"][gslot]])
        z = _ewma_scores(x, mean, var, c["count"][gslot], gstart, gsize, cfg)
        absz = np.abs(z)
        anomaly = (absz > cfg.z_threshold).any(axis=1)

        # -- windows ------------------------------------------------------------------------
        summaries, last = self._windows(batch, t, x, anomaly, grp, rank, gstart, gsize, gslot)

        # -- fold into the state ------------------------------------------------------------
        tmax = np.maximum.reduceat(t, gstart)
        c["last_ts"][gslot] = np.where(
            c["count"][gslot] == 0, tmax, np.maximum(c["last_ts"][gslot], tmax)
        )
        c["count"][gslot] += gsize
        c["temp_mean"][gslot], c["vib_mean"][gslot] = mean[:, 0], mean[:, 1]
        c["temp_var"][gslot], c["vib_var"][gslot] = var[:, 0], var[:, 1]
        c["anomalies"][gslot] += np.add.reduceat(anomaly.astype(np.int64), gstart)
        c["site"][gslot] = (
            ev.column("site").take(pa.array(order[last])).to_numpy(zero_copy_only=False)
        )

        # -- outputs and counters -----------------------------------------------------------
        alerts = self._alerts(ev, order, anomaly, z, absz, x, cfg)
        batch.emit("device_summaries", summaries)
        batch.emit("maintenance", alerts)
        raw = ev.drop_columns(["_key_hash"]) if "_key_hash" in ev.column_names else ev
        batch.count("raw_rows", n)
        batch.count("raw_bytes", raw.nbytes)
        batch.count("summary_rows", summaries.num_rows)
        batch.count("summary_bytes", summaries.nbytes if summaries.num_rows else 0)
        batch.count("summarized_rows", int(pc.sum(summaries["n"]).as_py() or 0))
        batch.count("maintenance_rows", alerts.num_rows)
        batch.count("maintenance_bytes", alerts.nbytes if alerts.num_rows else 0)
        if "failure" in ev.column_names:
            label = ev.column("failure")
            if label.null_count < len(label):
                lab = label.fill_null(False).to_numpy(zero_copy_only=False)[order].astype(bool)
                batch.count("labelled_rows", int(lab.sum()))
                batch.count("anomalies_labelled", int((anomaly & lab).sum()))

    def _windows(
        self,
        batch: Batch,
        t: np.ndarray,
        x: np.ndarray,
        anomaly: np.ndarray,
        grp: np.ndarray,
        rank: np.ndarray,
        gstart: np.ndarray,
        gsize: np.ndarray,
        gslot: np.ndarray,
    ) -> tuple[pa.Table, np.ndarray]:
        """Close the windows that a later reading ended; keep each device's newest open.

        Returns the summary rows and, per device, its last row (grouped order).
        """
        every = self.config.summary_every_ms
        c = batch.state.cols
        n = len(t)
        open_ = c["win_n"][gslot] > 0
        sw = c["window_start"][gslot] // every  # the open window's index
        # a late reading (older than the open window) is folded into the open window
        w = t // every
        w = np.where(open_[grp], np.maximum(w, sw[grp]), w)
        w = _segmented_cummax(w, grp, gstart, gsize)
        seg_first = (rank == 0) | np.append(True, w[1:] != w[:-1])
        segs = np.flatnonzero(seg_first)
        sgrp = grp[segs]
        seg_w = w[segs]
        seg_n = np.diff(np.append(segs, n))
        last_seg = np.append(sgrp[1:] != sgrp[:-1], True)
        # a device's first segment continues its open window, or that window closes alone
        first_seg = rank[segs] == 0
        cont = first_seg & open_[sgrp] & (seg_w == sw[sgrp])
        cg = gslot[sgrp[cont]]
        agg = {
            "temp_max": np.maximum.reduceat(x[:, 0], segs),
            "vib_max": np.maximum.reduceat(x[:, 1], segs),
            "anomalies": np.add.reduceat(anomaly.astype(np.int64), segs),
        }
        # sums reading by reading onto the open window's (np.add.at adds in row order), the
        # rounding of a per-reading loop: the same sums wherever batch boundaries fall
        seg_of = np.cumsum(seg_first) - 1
        for name, j in (("temp_sum", 0), ("vib_sum", 1)):
            acc = np.zeros(len(segs))
            acc[cont] = c[f"win_{name}"][cg]
            np.add.at(acc, seg_of, x[:, j])
            agg[name] = acc
        seg_n[cont] += c["win_n"][cg]
        agg["temp_max"][cont] = np.maximum(agg["temp_max"][cont], c["win_temp_max"][cg])
        agg["vib_max"][cont] = np.maximum(agg["vib_max"][cont], c["win_vib_max"][cg])
        agg["anomalies"][cont] += c["win_anomalies"][cg]
        alone = np.flatnonzero(open_ & (seg_w[first_seg] > sw))  # groups whose window closed
        ag = gslot[alone]

        # summaries: open windows closed alone, then the segments a later one followed
        done = ~last_seg
        gid = np.concatenate([alone, sgrp[done]])
        widx = np.concatenate([sw[alone], seg_w[done]])
        rows = np.concatenate([gstart[alone], segs[done]])  # a row of the device, for its ids
        cnt = np.concatenate([c["win_n"][ag], seg_n[done]])

        def col(name: str, state_col: str) -> np.ndarray:
            return np.concatenate([c[state_col][ag], agg[name][done]])

        out = np.lexsort((widx, gid))  # by device, then window
        cnt = cnt[out]
        src = pa.array(batch.order[rows[out]])
        ev = batch.events
        summaries = pa.table(
            {
                "device_id": ev.column(self.key).take(src),
                "site": ev.column("site").take(src),
                "window_start": pa.array(widx[out] * every).cast(pa.timestamp("ms")),
                "window_end": pa.array((widx[out] + 1) * every).cast(pa.timestamp("ms")),
                "n": cnt,
                "temp_mean": col("temp_sum", "win_temp_sum")[out] / cnt,
                "temp_max": col("temp_max", "win_temp_max")[out],
                "vib_mean": col("vib_sum", "win_vib_sum")[out] / cnt,
                "vib_max": col("vib_max", "win_vib_max")[out],
                "anomalies": col("anomalies", "win_anomalies")[out],
            },
            schema=SUMMARY_SCHEMA,
        )

        # the newest segment of each device is its open window now
        keep = np.flatnonzero(last_seg)
        kg = gslot[sgrp[keep]]
        c["window_start"][kg] = seg_w[keep] * every
        c["win_n"][kg] = seg_n[keep]
        c["win_temp_sum"][kg] = agg["temp_sum"][keep]
        c["win_temp_max"][kg] = agg["temp_max"][keep]
        c["win_vib_sum"][kg] = agg["vib_sum"][keep]
        c["win_vib_max"][kg] = agg["vib_max"][keep]
        c["win_anomalies"][kg] = agg["anomalies"][keep]
        return summaries, gstart + gsize - 1

    def _alerts(
        self,
        ev: pa.Table,
        order: np.ndarray,
        anomaly: np.ndarray,
        z: np.ndarray,
        absz: np.ndarray,
        x: np.ndarray,
        cfg: DeviceConfig,
    ) -> pa.Table:
        """One maintenance row per anomalous reading (the sink upserts by event_id)."""
        rows = np.flatnonzero(anomaly)
        if len(rows) == 0:
            return MAINTENANCE_SCHEMA.empty_table()
        hit = absz[rows] > cfg.z_threshold
        code = np.where(hit.all(axis=1), 2, np.where(hit[:, 0], 0, 1))
        worst = np.argmax(absz[rows], axis=1)
        src = pa.array(order[rows])
        return pa.table(
            {
                "event_id": ev.column("event_id").take(src),
                "device_id": ev.column(self.key).take(src),
                "site": ev.column("site").take(src),
                "ts": ev.column("ts").take(src),
                "metric": _METRIC_NAMES.take(pa.array(code)),
                "value": x[rows, worst],
                "z": z[rows, worst],
            },
            schema=MAINTENANCE_SCHEMA,
        )

    # -- profile export, single-device view -------------------------------------------------
    def export(self, table: pa.Table) -> pa.Table:
        for m in ("temp", "vib"):
            std = pc.sqrt(pc.max_element_wise(table[f"{m}_var"], 0.0))
            table = table.append_column(f"{m}_std", std)
        return table

    @handler
    def health(self, state: dict) -> dict:
        """The device's current baseline and how often it was anomalous."""
        return {
            "count": state["count"],
            "temp_mean": state["temp_mean"],
            "temp_std": max(state["temp_var"], 0.0) ** 0.5,
            "vib_mean": state["vib_mean"],
            "vib_std": max(state["vib_var"], 0.0) ** 0.5,
            "anomalies": state["anomalies"],
        }


def _ewma_scores(
    x: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    count: np.ndarray,
    gstart: np.ndarray,
    gsize: np.ndarray,
    cfg: DeviceConfig,
) -> np.ndarray:
    """z-scores of readings ``x`` (rows grouped by device, columns metrics) against each
    device's EWMA mean/variance before the reading; updates ``mean`` and ``var`` (one row
    per device) in place to their values after the batch.

    The EWMA is a recurrence, so it steps through the k-th reading of every device at once:
    ``max(gsize)`` vectorized steps, exactly the arithmetic of a per-reading loop (hence
    bit-identical whatever the batching). Telemetry is regular, so ``max(gsize)`` is about
    batch size / devices. A reading beyond the threshold enters the EWMA clipped to it, so
    one spike does not inflate the variance and blind the detector for ~1/alpha readings.
    """
    a = cfg.alpha
    floor = np.array([cfg.temp_min_std, cfg.vib_min_std]) ** 2
    z = np.zeros_like(x)
    by_size = np.argsort(-gsize, kind="stable")  # devices active at step k are a prefix
    neg_sizes = -gsize[by_size]
    for k in range(int(gsize.max(initial=0))):
        g = by_size[: np.searchsorted(neg_sizes, -k, side="left")]
        rows = gstart[g] + k
        xk, mu, v = x[rows], mean[g], var[g]
        cnt = (count[g] + k)[:, None]
        std = np.sqrt(np.maximum(v, floor))
        scored = cnt >= cfg.warmup
        zk = np.where(scored, (xk - mu) / std, 0.0)
        z[rows] = zk
        lim = cfg.z_threshold * std
        d = np.where(scored, np.clip(xk - mu, -lim, lim), xk - mu)
        first = cnt == 0
        mean[g] = np.where(first, xk, mu + a * d)
        var[g] = np.where(first, 0.0, (1.0 - a) * (v + a * d * d))
    return z


def _segmented_cummax(
    w: np.ndarray, grp: np.ndarray, gstart: np.ndarray, gsize: np.ndarray
) -> np.ndarray:
    """Running maximum of ``w`` within each group (rows grouped, groups contiguous)."""
    if len(w) == 0:
        return w
    lo = int(w.min())
    span = int(w.max()) - lo + 1
    if span * (len(gstart) + 1) < 2**62:  # offset groups apart: one cumulative max
        key = grp.astype(np.int64) * span + (w - lo)
        return np.maximum.accumulate(key) - grp * span + lo
    out = w.copy()  # timestamps spread too far for the offset trick: per group
    for a, m in zip(gstart.tolist(), gsize.tolist(), strict=True):
        out[a : a + m] = np.maximum.accumulate(w[a : a + m])
    return out


def summarize(counters: dict[str, float]) -> dict[str, Any]:
    """What crossed edge -> core (summaries, maintenance alerts) against shipping raw readings."""
    raw_rows = int(counters.get("raw_rows", 0))
    raw_bytes = int(counters.get("raw_bytes", 0))
    summaries = int(counters.get("summary_rows", 0))
    alerts = int(counters.get("maintenance_rows", 0))
    crossed_rows = summaries + alerts
    crossed_bytes = int(counters.get("summary_bytes", 0) + counters.get("maintenance_bytes", 0))
    out: dict[str, Any] = {
        "raw_rows": raw_rows,
        "raw_bytes": raw_bytes,
        "summary_rows": summaries,
        "maintenance_rows": alerts,
        "crossed_rows": crossed_rows,
        "crossed_bytes": crossed_bytes,
        "reduction_rows": round(raw_rows / crossed_rows, 2) if crossed_rows else None,
        "reduction_bytes": round(raw_bytes / crossed_bytes, 2) if crossed_bytes else None,
        # readings still in open windows: summarised when their device's next window begins
        "open_rows": raw_rows - int(counters.get("summarized_rows", 0)),
    }
    if counters.get("labelled_rows"):
        out["labelled_rows"] = int(counters["labelled_rows"])
        # share of alerts raised in the hour before a failure
        out["alert_precision"] = (
            round(counters.get("anomalies_labelled", 0) / alerts, 4) if alerts else None
        )
    return out


def report(stats: RunStats) -> dict[str, Any]:
    """What `edgecore` prints about a run: the maintenance alerts and what crossed edge ->
    core against shipping the raw readings."""
    a = stats.app
    return {
        "maintenance_alerts": a.get("maintenance_rows", 0),
        "edge_to_core": {
            "rows": a.get("crossed_rows", 0),
            "bytes": a.get("crossed_bytes", 0),
            "raw_rows": a.get("raw_rows", 0),
            "raw_bytes": a.get("raw_bytes", 0),
        },
        "reduction_rows": a.get("reduction_rows"),
        "reduction_bytes": a.get("reduction_bytes"),
        **{k: a[k] for k in ("labelled_rows", "alert_precision") if k in a},
    }


def demo_source(
    n_events: int,
    rate: float | None = None,
    devices: int = 2_000,
    sites: tuple[str, ...] = SITES,
    site: str | None = None,
) -> Source:
    """Synthetic fleet telemetry, paced to ``rate`` events/s if given; with ``site`` only
    that site's readings (what its edge sees). A second demo in the same data folder
    continues the stream."""
    source = TelemetrySource(TelemetryConfig(n_devices=devices, sites=sites), n_events, site=site)
    return Paced(source, rate) if rate else source


def device_app(config: DeviceConfig | None = None, sites: tuple[str, ...] = SITES) -> App:
    """The device app: telemetry in, device state, window summaries and maintenance alerts out."""
    return App(
        "devices",
        TELEMETRY,
        Device,
        config,
        sinks={
            "device_summaries": ("device_health", None),
            "maintenance": ("maintenance", "event_id"),
        },
        summarize=summarize,
        report=report,
        demo=demo_source,  # takes sites= for site-partitioned apps
        sites=tuple(sites),
    )


devices_app = device_app()  # what the `edgecore.apps` entry point names
