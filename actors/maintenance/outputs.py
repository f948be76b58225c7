"""What a machine's closed windows send to the core: alarms, sensor faults, health rows;
and how the edge keeps score of its own alarms (failures predicted, lead times, false alarms).

>>> ALARM_SCHEMA.names[:6]
['event_id', 'kind', 'device_id', 'site', 'ts', 'mode']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from actors.maintenance.features import FAMILY, FEATURES, MAXES, SENSOR_FLAGS, SUMS
from actors.maintenance.fleet import MODES
from actors.maintenance.model import HORIZONS_H
from runtime import Batch

if TYPE_CHECKING:
    from actors.maintenance.brain import Brain

ALARM_SCHEMA = pa.schema(
    [
        ("event_id", pa.int64()),  # the reading that closed the window
        ("kind", pa.string()),  # failure_risk | sensor_fault
        ("device_id", pa.string()),
        ("site", pa.string()),
        ("ts", pa.timestamp("ms")),  # end of the window that decided
        ("mode", pa.string()),  # bearing_wear, overheating, unknown; or the sensor fault
        ("risk", pa.float64()),
        ("lead_time_h", pa.float64()),  # expected hours to the failure (null: unknown)
        ("top_signals", pa.list_(pa.string())),
        ("source", pa.string()),  # classifier | detector | rule
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
    """Score the edge's own alarms as windows ``r`` close: a failure with an alarm raised
    within the horizon before it was predicted (lead = the time between); an alarm that
    saw no failure within the horizon was false."""
    batch.count("false_alarms", int(late.sum()))
    f = w.failed[r]
    if not f.any():
        return
    aw = c["alarm_w"][sl[f]]
    lead = w.widx[r][f] - aw
    hit = (aw >= 0) & (lead >= 0) & (lead <= h) & ~c["judged"][sl[f]]
    batch.count("failures", int(f.sum()))
    batch.count("predicted", int(hit.sum()))
    hours = lead[hit] * window_ms / 3_600_000
    for b, n in enumerate(np.bincount(np.floor(hours).astype(np.int64)).tolist()):
        if n:
            batch.count(f"lead_bin_{b}", n)


def _explain(brain: Brain, w: Windows) -> None:
    """Per window: which model speaks (the larger risk), its top signals, the mode they
    point to, and the classifier's expected time to failure."""
    p24 = w.p[:, -1]
    by_clf = p24 >= w.r_if
    z = brain.clf.standardize(w.X)
    weight = np.where(by_clf[:, None], brain.clf.contributions(w.X), np.abs(z))
    top = np.argsort(-weight, axis=1, kind="stable")[:, :3]
    w.top, w.z, w.by_clf = top, z, by_clf
    w.mode = _FAMILY_CODE[top[:, 0]]
    probs = np.diff(np.column_stack([np.zeros(len(p24)), w.p]), axis=1)
    est = probs @ _MID / np.maximum(p24, 1e-9)
    w.lead = np.where(by_clf & (p24 >= 0.05), est, np.nan)


def outputs(brain: Brain, w: Windows, batch: Batch, cfg: Any) -> tuple[pa.Table, pa.Table]:
    """The ``maintenance`` rows: alarms raised, sensor faults newly flagged."""
    _explain(brain, w)
    ev, order = batch.events, batch.order
    cond = w.mx[:, MAXES.index("condition")]
    batch.count("sensor_faults_reported", int((w.raised & (cond >= _COND_SENSOR)).sum()))
    tables = []
    for kind, rows in (
        ("failure_risk", np.flatnonzero(w.raised)),
        ("sensor_fault", np.flatnonzero(w.sensor_new)),
    ):
        if len(rows) == 0:
            tables.append(ALARM_SCHEMA.empty_table())
            continue
        src = pa.array(order[w.crow[rows]])
        if kind == "failure_risk":
            top = w.top[rows]
            zt = np.take_along_axis(w.z[rows], top, axis=1)
            names = [
                f"{n} {v:+.1f}sd"
                for n, v in zip(_FEATURE_NAMES[top].ravel(), zt.ravel(), strict=True)
            ]
            signals = pa.ListArray.from_arrays(
                pa.array(np.arange(0, 3 * len(rows) + 1, 3, dtype=np.int32)),
                pa.array(names, pa.string()),
            )
            mode = _MODE_NAMES[w.mode[rows]]
            source = np.where(w.by_clf[rows], "classifier", "detector")
            risk, lead = w.risk[rows], w.lead[rows]
        else:
            bits = (w.flags[rows, None] >> np.arange(len(SENSOR_FLAGS))) & 1
            lists = [[SENSOR_FLAGS[j] for j in np.flatnonzero(b)] for b in bits]
            signals = pa.array(lists, pa.list_(pa.string()))
            mode = np.array(["+".join(x) for x in lists], dtype=object)
            source = np.full(len(rows), "rule", dtype=object)
            risk, lead = np.zeros(len(rows)), np.full(len(rows), np.nan)
        tables.append(
            pa.table(
                {
                    "event_id": ev.column("event_id").take(src),
                    "kind": pa.array([kind] * len(rows), pa.string()),
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
