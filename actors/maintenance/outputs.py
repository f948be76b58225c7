"""What a machine's closed windows send to the core: alarms, sensor faults, health rows;
and how the edge keeps score of its own alarms (failures predicted, lead times, false alarms).

>>> ALARM_SCHEMA.names[:6]
['event_id', 'kind', 'state', 'device_id', 'site', 'ts']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from actors.maintenance.detector import SENSOR_FLAGS, SIGNALS
from actors.maintenance.features import FAMILY, FEATURES, MAXES, SUMS
from actors.maintenance.fleet import MODES
from actors.maintenance.model import HORIZONS_H
from runtime import Batch

if TYPE_CHECKING:
    from actors.maintenance.brain import Brain

ALARM_SCHEMA = pa.schema(
    [
        ("event_id", pa.int64()),  # the reading that closed the window
        ("kind", pa.string()),  # failure_risk | sensor_fault
        ("state", pa.string()),  # open | update | close (an alarm or a sensor-fault episode)
        ("device_id", pa.string()),
        ("site", pa.string()),
        ("ts", pa.timestamp("ms")),  # end of the window that decided
        ("mode", pa.string()),  # bearing_wear, overheating, unknown; or the sensor fault
        ("risk", pa.float64()),
        ("lead_time_h", pa.float64()),  # expected hours to the failure (null: unknown)
        ("top_signals", pa.list_(pa.string())),
        ("source", pa.string()),  # drift | classifier | forest | rule
        ("model_version", pa.int64()),
    ]
)
HEALTH_SCHEMA = pa.schema(
    [
        ("device_id", pa.string()),
        ("site", pa.string()),
        ("ts", pa.timestamp("ms")),
        ("risk", pa.float64()),
        ("alarm", pa.bool_()),
        ("mode", pa.string()),
        ("lead_time_h", pa.float64()),
        ("sensor_fault", pa.string()),
        ("temp_mean", pa.float64()),
        ("vib_mean", pa.float64()),
        ("load_mean", pa.float64()),
        ("model_version", pa.int64()),
    ]
)
_MODE_NAMES = np.array([*MODES, "unknown"], dtype=object)
_FAMILY_CODE = np.array([list(_MODE_NAMES).index(FAMILY[f]) for f in FEATURES])
_FEATURE_NAMES = np.array(FEATURES, dtype=object)
_MID = np.array(
    [HORIZONS_H[0] / 2, *((a + b) / 2 for a, b in zip(HORIZONS_H, HORIZONS_H[1:], strict=False))]
)
_COND_SENSOR = 3  # condition codes >= this are sensor faults (fleet.CONDITIONS)


@dataclass
class Windows:
    """The closed windows of a batch, sorted by device then window, and what became of them."""

    gid: np.ndarray
    slot: np.ndarray
    widx: np.ndarray
    wrank: np.ndarray
    X: np.ndarray
    flags: np.ndarray
    warm: np.ndarray
    failed: np.ndarray
    agg: np.ndarray
    mx: np.ndarray
    crow: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:  # scores etc. set as the windows go through
        try:
            return self.__dict__["extra"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dataclass_fields__:
            object.__setattr__(self, name, value)
        else:
            self.extra[name] = value


_STATES = np.array(["", "open", "update", "close"], dtype=object)
_SOURCES = np.array(["drift", "classifier", "forest"], dtype=object)


def evaluate(
    batch: Batch,
    w: Windows,
    r: np.ndarray,
    c: dict,
    sl: np.ndarray,
    late: np.ndarray,
    h: int,
    window_ms: int,
) -> None:
    """Score the edge's own alarms as windows ``r`` close (``c`` as before them), by the
    bench's rule: a failure is predicted if an alarm was open at some point within the
    horizon before it (lead = the time since that alarm opened, at most the horizon); an
    opening that saw no failure within the horizon was a false alarm (``late``)."""
    batch.count("false_alarms", int(late.sum()))
    f = w.failed[r]
    if not f.any():
        return
    s, wf = sl[f], w.widx[r][f]
    aw = c["alarm_w"][s]
    was_open = c["alarm"][s] | (c["closed_w"][s] >= wf - h)
    hit = (aw >= 0) & (aw <= wf) & was_open
    lead = np.minimum(wf - aw, h)
    batch.count("failures", int(f.sum()))
    batch.count("predicted", int(hit.sum()))
    hours = lead[hit] * window_ms / 3_600_000
    for b, n in enumerate(np.bincount(np.floor(hours).astype(np.int64)).tolist()):
        if n:
            batch.count(f"lead_bin_{b}", n)


def explain(brain: Brain, w: Windows) -> None:
    """Per window: which model speaks (the largest risk), its top signals, the mode they
    point to (the drifting signal's, for the detector), the classifier's expected time
    to failure."""
    p24 = w.p[:, -1]
    src = np.argmax(np.column_stack([w.r_det, p24, w.r_if]), axis=1)  # ties: drift first
    z = brain.clf.standardize(w.X)
    weight = np.where((src == 1)[:, None], brain.clf.contributions(w.X), np.abs(z))
    top = np.argsort(-weight, axis=1, kind="stable")[:, :3]
    w.top, w.z, w.src = top, z, src
    drifting = np.argmax(w.S, axis=1) if len(w.S) else np.zeros(0, np.int64)
    w.mode = np.where(src == 0, drifting, _FAMILY_CODE[top[:, 0]])
    probs = np.diff(np.column_stack([np.zeros(len(p24)), w.p]), axis=1)
    est = probs @ _MID / np.maximum(p24, 1e-9)
    w.lead = np.where(p24 >= 0.05, est, np.nan)


def _signals(w: Windows, rows: np.ndarray) -> pa.Array:
    top = w.top[rows]
    zt = np.take_along_axis(w.z[rows], top, axis=1)
    names = np.array(
        [f"{n} {v:+.1f}sd" for n, v in zip(_FEATURE_NAMES[top].ravel(), zt.ravel(), strict=True)],
        dtype=object,
    ).reshape(-1, 3)
    drift = w.src[rows] == 0
    if drift.any():  # the drift detector: its signals' accumulated evidence first
        order = np.argsort(-w.S[rows][drift], axis=1, kind="stable")
        S = np.take_along_axis(w.S[rows][drift], order, axis=1)
        for j in range(2):
            names[drift, j] = [
                f"{SIGNALS[o]}_drift {v:+.1f}sd" for o, v in zip(order[:, j], S[:, j], strict=True)
            ]
    return pa.ListArray.from_arrays(
        pa.array(np.arange(0, 3 * len(rows) + 1, 3, dtype=np.int32)),
        pa.array(names.ravel().tolist(), pa.string()),
    )


def outputs(brain: Brain, w: Windows, batch: Batch, cfg: Any) -> tuple[pa.Table, pa.Table]:
    """The ``maintenance`` rows: alarms opened, changed or closed; sensor-fault episodes
    opened or closed."""
    ev, order = batch.events, batch.order
    cond = w.mx[:, MAXES.index("condition")]
    opened = w.state == 1
    batch.count("sensor_faults_reported", int((opened & (cond >= _COND_SENSOR)).sum()))
    batch.count("alarms_opened", int(opened.sum()))
    batch.count("sensor_episodes", int((w.sensor_state == 1).sum()))
    tables = []
    for kind, rows in (
        ("failure_risk", np.flatnonzero(w.state > 0)),
        ("sensor_fault", np.flatnonzero(w.sensor_state > 0)),
    ):
        if len(rows) == 0:
            tables.append(ALARM_SCHEMA.empty_table())
            continue
        src = pa.array(order[w.crow[rows]])
        if kind == "failure_risk":
            signals = _signals(w, rows)
            mode = _MODE_NAMES[w.mode[rows]]
            source = _SOURCES[w.src[rows]]
            risk, lead, state = w.risk[rows], w.lead[rows], _STATES[w.state[rows]]
        else:
            bits = (w.sensor_rep[rows, None] >> np.arange(len(SENSOR_FLAGS))) & 1
            lists = [[SENSOR_FLAGS[j] for j in np.flatnonzero(b)] for b in bits]
            signals = pa.array(lists, pa.list_(pa.string()))
            mode = np.array(["+".join(x) for x in lists], dtype=object)
            source = np.full(len(rows), "rule", dtype=object)
            risk, lead = np.zeros(len(rows)), np.full(len(rows), np.nan)
            state = _STATES[w.sensor_state[rows]]
        tables.append(
            pa.table(
                {
                    "event_id": ev.column("event_id").take(src),
                    "kind": pa.array([kind] * len(rows), pa.string()),
                    "state": pa.array(state, pa.string()),
                    "device_id": ev.column("device_id").take(src),
                    "site": ev.column("site").take(src),
                    "ts": pa.array((w.widx[rows] + 1) * cfg.window_ms).cast(pa.timestamp("ms")),
                    "mode": pa.array(mode, pa.string()),
                    "risk": pa.array(risk, pa.float64()),
                    "lead_time_h": pa.array(lead, pa.float64(), from_pandas=True),
                    "top_signals": signals,
                    "source": pa.array(source, pa.string()),
                    "model_version": pa.array(np.full(len(rows), brain.version), pa.int64()),
                },
                schema=ALARM_SCHEMA,
            )
        )
    return tables[0], tables[1]


def health_rows(brain: Brain, w: Windows, batch: Batch, c: dict) -> pa.Table:
    """One ``device_health`` row per device whose risk moved, alarm changed or summary fell due
    in the batch: its latest such window (the core's table keeps each device's current state)."""
    send = np.flatnonzero(w.send)
    if len(send) == 0:
        return HEALTH_SCHEMA.empty_table()
    last = send[np.append(w.gid[send][1:] != w.gid[send][:-1], True)]
    src = pa.array(batch.order[w.crow[last]])
    ev = batch.events
    n = np.maximum(w.agg[last, SUMS.index("n")], 1.0)
    flags = w.flags[last]
    fault = np.array(
        [
            "+".join(SENSOR_FLAGS[j] for j in range(len(SENSOR_FLAGS)) if f >> j & 1) or None
            for f in flags.tolist()
        ],
        dtype=object,
    )
    return pa.table(
        {
            "device_id": ev.column("device_id").take(src),
            "site": ev.column("site").take(src),
            "ts": pa.array((w.widx[last] + 1) * batch_window(w)).cast(pa.timestamp("ms")),
            "risk": w.risk[last],
            "alarm": c["alarm"][w.slot[last]],
            "mode": pa.array(_MODE_NAMES[w.mode[last]], pa.string()),
            "lead_time_h": pa.array(w.lead[last], pa.float64(), from_pandas=True),
            "sensor_fault": pa.array(fault, pa.string()),
            "temp_mean": w.agg[last, SUMS.index("temp")] / n,
            "vib_mean": w.agg[last, SUMS.index("vib")] / n,
            "load_mean": w.agg[last, SUMS.index("load")] / n,
            "model_version": pa.array(np.full(len(last), brain.version), pa.int64()),
        },
        schema=HEALTH_SCHEMA,
    )


def batch_window(w: Windows) -> int:
    return int(w.extra.get("window_ms", 3_600_000))
