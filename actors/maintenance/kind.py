"""The machine: a device's readings condensed at its edge into a failure risk.

:class:`Machine` is an entity kind with a vectorized ``apply``, partitioned by site so each
site's devices live at its edge. Per device, in arrival order:

1. readings fold into hourly windows; each closed window yields rolling trend features
   (:mod:`actors.maintenance.features`);
2. the device's own drift detector (:mod:`actors.maintenance.detector`, no failure needed)
   and the shard's :class:`~actors.maintenance.brain.Brain` score them: the CUSUM risk,
   the online classifier's P(failure within 24 h) and the isolation forest's verdict, the
   largest being the risk;
3. an alarm **opens** when the risk stays at or above ``threshold`` for ``confirm``
   windows, stays open while it is above ``reset`` and **closes** below (or at the
   failure); the ``maintenance`` topic gets a row on open, on a material change (mode,
   lead-time estimate) and on close, with the failure mode, the lead-time estimate and
   the top signals. A sensor the detector flags opens one ``sensor_fault`` episode (one
   row) and closes it (one row) after ``sensor_clear`` clean windows, never an alarm;
4. the last day of windows waits at the edge for its label: a failure makes the windows
   before it positives (learned at once), a day without one makes a window a negative
   and a healthy sample for the forest at the core.

Only risk changes, six-hourly summaries (``device_health``) and alarms cross to the core.
A ``failure`` reading marks a repair too: the device's baseline starts over.

>>> import tempfile
>>> from runtime import Runtime, run
>>> from actors.maintenance.app import make_app
>>> from actors.maintenance.fleet import FleetConfig, FleetSource
>>> src = FleetSource(FleetConfig(n_devices=20, days=3), batch_size=5_000)
>>> with Runtime(data_dir=tempfile.mkdtemp(), mode="local", shards=1) as rt:
...     stats = run(rt, make_app(), src)
...     m = Machine.ref("m-eu-1-00003").get()
>>> stats.accepted, m["readings"], m["site"]
(8640, 432, 'eu-1')
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from actors.grouped import by_entity
from actors.maintenance.brain import Brain
from actors.maintenance.detector import N_DET, DetectorConfig, detect
from actors.maintenance.detector import risk as detector_risk
from actors.maintenance.features import (
    MAXES,
    N_EWMA,
    N_FEATURES,
    SUMS,
    close_windows,
    reading_inputs,
    window_features,
)
from actors.maintenance.fleet import CONDITIONS, HOUR_MS
from actors.maintenance.model import MODEL_KIND
from actors.maintenance.outputs import Windows, evaluate, explain, health_rows, outputs
from runtime import Batch, EntityKind, handler
from runtime.errors import ConfigError
from runtime.state.keys import hash_keys
from runtime.state.snapshot import reading


@dataclass(frozen=True)
class MaintenanceConfig:
    """Windows, horizon and alarm settings."""

    window_ms: int = HOUR_MS
    horizon_h: float = 24.0
    threshold: float = 0.5  # risk that opens an alarm ...
    reset: float = 0.25  # ... and below which it closes
    confirm: int = 2  # windows in a row above the threshold
    lead_change_h: float = 6.0  # a lead-time estimate moving this much is a material change
    sensor_confirm: int = 2  # flagged windows in a row that open a sensor-fault episode
    sensor_clear: int = 3  # clean windows that close it
    detector: DetectorConfig = DetectorConfig()
    warmup_windows: int = 48  # a device needs two days of baseline before it is scored
    negative_share: float = 0.25  # of healthy windows the classifier learns from
    health_every: int = 6  # windows between summaries to the core
    health_delta: float = 0.1  # a risk change that is sent at once
    learn: bool = True

    def __post_init__(self) -> None:
        if self.window_ms < 60_000 or self.horizon_h * HOUR_MS < 2 * self.window_ms:
            raise ConfigError("window_ms must be >= 1 min and the horizon at least two windows")
        if not 0.0 <= self.reset < self.threshold <= 1.0:
            raise ConfigError("need 0 <= reset < threshold <= 1")
        if self.confirm < 1 or self.warmup_windows < 0 or self.health_every < 1:
            raise ConfigError("confirm and health_every must be >= 1, warmup_windows >= 0")

    @property
    def ring(self) -> int:
        """Windows kept at the edge awaiting their label: one horizon."""
        return int(round(self.horizon_h * HOUR_MS / self.window_ms))


_CFG = MaintenanceConfig()
_CODES = pa.array(CONDITIONS)


class Machine(EntityKind):
    name = "machines"
    key = "device_id"
    site_key = "site"
    topics = ("maintenance", "device_health")
    state = {
        "site": "string",
        "readings": "int64",
        "last_temp": "float64",
        "last_vib": "float64",
        "win": ("int64", -1),  # the open window's index (-1: none)
        "wsum": ("float64", 0.0, len(SUMS)),
        "wmax": ("float64", 0.0, len(MAXES)),
        "windows": "int64",  # closed since the last repair
        "ewma": ("float64", 0.0, N_EWMA),
        "ring_x": ("float64", 0.0, _CFG.ring * N_FEATURES),
        "ring_w": ("int64", -1, _CFG.ring),
        "risk": "float64",
        "mode": ("int64", -1),
        "lead_h": ("float64", float("nan")),
        "alarm": "bool",
        "alarm_w": ("int64", -1),  # the window the latest alarm opened at
        "closed_w": ("int64", -1),  # ... and closed at
        "alarm_mode": ("int64", -1),  # what the open alarm last reported
        "alarm_lead": ("float64", float("nan")),
        "judged": "bool",  # the latest opening was already found false (no failure in time)
        "above": "int64",
        "sensor": "int64",  # sensor flags of the open fault episode (0: none)
        "sensor_ok": "int64",  # clean windows since the last flagged one
        "sensor_bad": "int64",  # flagged windows in a row
        "det": ("float64", 0.0, N_DET),
        "health_w": ("int64", -1),
        "health_risk": "float64",
        "failures": "int64",
        "alarms": "int64",
    }

    def __init__(self, config: MaintenanceConfig | None = None) -> None:
        super().__init__(config or MaintenanceConfig())
        if self.config.ring != _CFG.ring:
            raise ConfigError("horizon_h / window_ms must stay at the state's ring length")
        self.brain = Brain(N_FEATURES)

    @classmethod
    def needs(cls) -> tuple[str, ...]:
        return ("device_id", "site", "ts", "temperature", "vibration", "load")

    # -- the hot path ----------------------------------------------------------------------
    def apply(self, batch: Batch) -> None:
        cfg: MaintenanceConfig = self.config
        ev, c, order = batch.events, batch.state.cols, batch.order
        s, gsize, grp, rank, gslot = by_entity(batch)
        col = lambda name: ev.column(name).to_numpy()[order]  # noqa: E731
        t = ev.column("ts").cast(pa.int64()).to_numpy()[order]
        temp, vib, load = col("temperature"), col("vibration"), col("load")
        fail = np.zeros(len(s), bool)
        if "failure" in ev.column_names:
            fail = ev.column("failure").fill_null(False).to_numpy(zero_copy_only=False)[order]
        cond = np.zeros(len(s))
        if "condition" in ev.column_names:  # ground truth, for the run's report only
            code = pc.index_in(ev.column("condition"), _CODES).fill_null(0)
            cond = code.to_numpy(zero_copy_only=False)[order].astype(float)
        sums, maxes = reading_inputs(
            t,
            cfg.window_ms,
            temp,
            vib,
            load,
            fail,
            cond,
            rank,
            c["last_temp"][s],
            c["last_vib"][s],
            c["readings"][s] > 0,
        )
        gend = np.append(batch.starts[1:], len(s)) - 1
        c["last_temp"][gslot], c["last_vib"][gslot] = temp[gend], vib[gend]
        c["readings"][gslot] += gsize
        c["site"][gslot] = (
            ev.column("site").take(pa.array(order[gend])).to_numpy(zero_copy_only=False)
        )
        ow, osum, omax = c["win"][gslot], c["wsum"][gslot], c["wmax"][gslot]
        gid, widx, agg, mx, crow = close_windows(
            t, sums, maxes, grp, rank, batch.starts, gsize, ow, osum, omax, cfg.window_ms
        )
        c["win"][gslot], c["wsum"][gslot], c["wmax"][gslot] = ow, osum, omax
        batch.count("raw_rows", len(s))
        raw = ev.drop_columns(["_key_hash"]) if "_key_hash" in ev.column_names else ev
        batch.count("raw_bytes", raw.nbytes)
        if len(gid) == 0:
            return
        slot = gslot[gid]
        wrank = np.arange(len(gid)) - np.searchsorted(gid, gid)
        X = np.zeros((len(gid), N_FEATURES))
        Z, S = np.zeros((len(gid), 2)), np.zeros((len(gid), 2))
        flags = np.zeros(len(gid), np.int64)
        warm = np.zeros(len(gid), bool)
        failed = mx[:, MAXES.index("failure")] > 0
        for k in range(int(wrank.max()) + 1):  # k-th closed window of every device at once
            r = np.flatnonzero(wrank == k)
            sl = slot[r]
            e, n = c["ewma"][sl], c["windows"][sl].astype(np.float64)
            warm[r] = n >= cfg.warmup_windows
            d = c["det"][sl]
            Z[r], S[r], flags[r] = detect(agg[r], mx[r], d, n, cfg.detector)
            X[r] = window_features(agg[r], mx[r], e, n, flags[r])
            c["ewma"][sl] = np.where(failed[r, None], 0.0, e)  # repaired: a new baseline
            c["det"][sl] = np.where(failed[r, None], 0.0, d)
            c["windows"][sl] = np.where(failed[r], 0, n.astype(np.int64))
        w = Windows(gid, slot, widx, wrank, X, flags, warm, failed, agg, mx, crow)
        w.window_ms, w.z_det, w.S = cfg.window_ms, Z, S
        self._score(batch, w)
        if cfg.learn:
            self._label(batch, w)

    def _score(self, batch: Batch, w: Windows) -> None:
        cfg: MaintenanceConfig = self.config
        P = self.brain.clf.proba(w.X)
        r_if = self.brain.detector_risk(w.X)
        r_det = detector_risk(w.S, cfg.detector)
        w.p, w.r_if, w.r_det = P, r_if, r_det
        live = w.warm & ~w.failed
        w.risk = np.where(live, np.maximum(np.maximum(P[:, -1], r_if), r_det), 0.0)
        explain(self.brain, w)
        # alarms and sensor episodes are recurrences per device: step through the k-th windows
        c = batch.state.cols
        h = cfg.ring
        n = len(w.gid)
        w.state = np.zeros(n, np.int8)  # 1 opened, 2 updated, 3 closed
        w.sensor_state = np.zeros(n, np.int8)  # 1 episode opened, 3 closed
        w.sensor_rep = np.zeros(n, np.int64)  # the flags a sensor row reports
        w.send = np.zeros(n, bool)
        for k in range(int(w.wrank.max()) + 1):
            r = np.flatnonzero(w.wrank == k)
            sl, risk, wi, failed = w.slot[r], w.risk[r], w.widx[r], w.failed[r]
            above = np.where(risk >= cfg.threshold, c["above"][sl] + 1, 0)
            alarm = c["alarm"][sl]
            open_ = ~alarm & (above >= cfg.confirm) & ~failed
            close = alarm & ((risk < cfg.reset) | failed)
            lead, mode = w.lead[r], w.mode[r]
            old = c["alarm_lead"][sl]
            moved = np.where(
                np.isnan(lead) | np.isnan(old),
                np.isnan(lead) != np.isnan(old),
                np.abs(lead - old) >= cfg.lead_change_h,
            )
            update = alarm & ~close & ((mode != c["alarm_mode"][sl]) | moved)
            # judged at the edge: an opening with no failure within the horizon was false
            aw = c["alarm_w"][sl]
            late = (aw >= 0) & ~c["judged"][sl] & (wi - aw >= h) & ~failed
            evaluate(batch, w, r, c, sl, late, h, cfg.window_ms)
            c["judged"][sl] = np.where(open_, False, failed | c["judged"][sl] | late)
            c["alarm_w"][sl] = np.where(open_, wi, np.where(failed, -1, aw))
            c["closed_w"][sl] = np.where(close, wi, np.where(failed, -1, c["closed_w"][sl]))
            c["alarm"][sl] = (alarm | open_) & ~close
            tell = open_ | update
            c["alarm_mode"][sl] = np.where(tell, mode, c["alarm_mode"][sl])
            c["alarm_lead"][sl] = np.where(tell, lead, c["alarm_lead"][sl])
            c["above"][sl] = np.where(failed, 0, above)
            c["alarms"][sl] += open_
            c["failures"][sl] += failed
            w.state[r] = np.select([open_, update, close], [1, 2, 3], 0)
            # sensor-fault episodes: open on the first flagged window, close after clean ones
            f, active = w.flags[r], c["sensor"][sl] != 0
            ok = np.where(f == 0, c["sensor_ok"][sl] + 1, 0)
            bad = np.where(f != 0, c["sensor_bad"][sl] + 1, 0)
            s_open = ~active & (bad >= cfg.sensor_confirm)  # a lone odd window is no fault
            c["sensor_bad"][sl] = bad
            s_close = active & (ok >= cfg.sensor_clear)
            w.sensor_state[r] = np.select([s_open, s_close], [1, 3], 0)
            w.sensor_rep[r] = np.where(s_open, f, c["sensor"][sl])
            c["sensor"][sl] = np.where(s_close | ~(active | s_open), 0, c["sensor"][sl] | f)
            c["sensor_ok"][sl] = ok
            due = (wi - c["health_w"][sl] >= cfg.health_every) | (
                np.abs(risk - c["health_risk"][sl]) >= cfg.health_delta
            )
            due |= open_ | close | failed
            w.send[r] = due
            c["health_w"][sl] = np.where(due, wi, c["health_w"][sl])
            c["health_risk"][sl] = np.where(due, risk, c["health_risk"][sl])
            c["risk"][sl] = risk
        batch.count("windows", n)
        batch.count("device_hours", n * cfg.window_ms / HOUR_MS)
        alarms, sensors = outputs(self.brain, w, batch, cfg)
        health = health_rows(self.brain, w, batch, c)
        # what is kept per device: mode and lead estimate of its latest window
        c["mode"][w.slot] = w.mode
        c["lead_h"][w.slot] = w.lead
        batch.emit("maintenance", pa.concat_tables([alarms, sensors]))
        batch.emit("device_health", health)
        for name, table in (("maintenance", alarms), ("sensor", sensors), ("health", health)):
            batch.count(f"{name}_rows", table.num_rows)
            batch.count(f"{name}_bytes", table.nbytes if table.num_rows else 0)

    def _label(self, batch: Batch, w: Windows) -> None:
        """Push the batch's windows into each device's ring; label what a failure or the
        passing of a horizon decided; learn from it."""
        cfg: MaintenanceConfig = self.config
        c, K, F = batch.state.cols, cfg.ring, N_FEATURES
        devs, first = np.unique(w.gid, return_index=True)
        sl = w.slot[first]
        M = int(w.wrank.max()) + 1
        cx = np.zeros((len(devs), K + M, F))
        cw = np.full((len(devs), K + M), -1, np.int64)
        cf = np.zeros((len(devs), K + M), np.int64)
        cx[:, :K] = c["ring_x"][sl].reshape(-1, K, F)
        cw[:, :K] = c["ring_w"][sl]
        row = np.searchsorted(devs, w.gid)
        cx[row, K + w.wrank] = w.X
        cw[row, K + w.wrank] = w.widx
        cf[row, K + w.wrank] = w.flags | (~w.warm * 16)  # not healthy samples: unwarmed
        cf[:, :K] = 0
        wf = np.full(len(devs), -1, np.int64)
        np.maximum.at(wf, row[w.failed], w.widx[w.failed])
        valid = cw >= 0
        consumed = valid & (cw <= wf[:, None])
        remaining = valid & ~consumed
        pos_rank = np.cumsum(remaining, axis=1) - 1
        n_rem = remaining.sum(axis=1, keepdims=True)
        evicted = remaining & (pos_rank < n_rem - K)
        hours = cfg.window_ms / HOUR_MS
        tte = np.where(consumed, (wf[:, None] - cw) * hours, np.inf)
        learn = consumed | evicted
        # negatives are many: learn from a fixed share (hash of device and window, not luck)
        keyh = hash_keys(batch.events.column(self.key).take(pa.array(batch.order[w.crow[first]])))
        mix = (cw.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ keyh[:, None]
        keep_neg = (mix >> np.uint64(40)) % np.uint64(1000) < np.uint64(cfg.negative_share * 1000)
        pick = learn & ((tte < cfg.horizon_h) | keep_neg)
        self.brain.clf.learn(cx[pick], tte[pick])
        healthy = evicted & (cf == 0)
        self.brain.add_healthy(cx[healthy])
        batch.count("failure_windows_learned", int((consumed & (tte < cfg.horizon_h)).sum()))
        batch.count("healthy_windows", int(healthy.sum()))
        key = np.where(remaining & ~evicted, np.arange(K + M)[None, :], -1)
        keep = np.sort(key, axis=1)[:, -K:]
        take = np.maximum(keep, 0)
        rx = np.take_along_axis(cx, take[:, :, None], axis=1)
        rw = np.where(keep >= 0, np.take_along_axis(cw, take, axis=1), -1)
        c["ring_x"][sl] = np.where(keep[:, :, None] >= 0, rx, 0.0).reshape(len(devs), K * F)
        c["ring_w"][sl] = rw

    # -- the model at the core -------------------------------------------------------------
    def snapshot(self) -> bytes:
        return self.brain.to_bytes()

    def restore(self, blob: bytes) -> None:
        """The model as :meth:`snapshot` saved it; anything else is refused
        (:class:`~runtime.errors.SnapshotError`: the start stops), never unpickled."""
        with reading(MODEL_KIND, "the saved model of machines"):
            self.brain = Brain.from_bytes(blob)

    def merge_snapshots(self, blobs: list[bytes]) -> bytes | None:
        return Brain.merge(blobs) if blobs else None

    def model_card(self, snapshot: bytes) -> dict:
        return Brain.from_bytes(snapshot).card()

    @handler
    def health(self, state: dict) -> dict:
        """The device's current risk, alarm and sensor state."""
        return {
            k: state[k]
            for k in ("risk", "alarm", "mode", "lead_h", "sensor", "windows", "alarms", "failures")
        }
