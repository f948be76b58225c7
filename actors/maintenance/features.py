"""Rolling trend features per device: readings -> hourly windows -> slopes, EWMA levels, ratios.

Two vectorized stages, both exact per device in arrival order (so the same whatever the
batch boundaries):

1. :func:`close_windows` folds readings into event-time windows of ``window_ms``; a window
   closes when the device's first reading of a later window arrives. Sums are added
   reading by reading (``np.add.at``), the rounding of a per-reading loop.
2. :func:`window_features` steps every device through its k-th closed window at once and
   updates EWMA levels at three speeds (6 h, 24 h, 7 d for hourly windows) and EWMA
   regressions of temperature on load, then compares them: fast against slow is a level
   shift, fast against medium a slope, noise now against noise usual a variance ratio.

A sensor the detector (:mod:`actors.maintenance.detector`) flags as stuck or noisy has
its EWMAs frozen and its features read 0 until it recovers: a bad sensor is a sensor to
check, not a failing machine, and it must not poison the device's baseline.

>>> import numpy as np
>>> ew = np.zeros((1, N_EWMA)); n = np.zeros(1)
>>> agg = np.zeros((1, len(SUMS))); agg[0, :6] = [6, 300.0, 15.0, 3.0, 2.4, 0.6]
>>> mx = np.array([[2.6, 0.5, 0.1, 0, 0, -2.4]])
>>> X = window_features(agg, mx, ew, n, np.zeros(1, np.int64))
>>> X.shape, n.tolist()
((1, 11), [1.0])
"""

from __future__ import annotations

import numpy as np

from actors.devices.kind import _segmented_cummax

FEATURES = (
    "vib_level",  # log vibration, 6 h EWMA minus 7 d EWMA
    "vib_trend",  # 24 h minus 7 d
    "vib_slope",  # 6 h minus 24 h: still rising
    "vib_noise",  # log successive-difference noise, 6 h minus 7 d
    "vib_spikes",  # log(max / mean) within the window, 6 h minus 7 d
    "temp_residual",  # temperature minus the 7 d temperature-on-load fit, 6 h EWMA (C)
    "thermal_gain",  # log of the 24 h over the 7 d temperature-per-load slope
    "temp_level",  # 6 h minus 7 d temperature (C): ambient does this too
    "temp_noise",  # like vib_noise
    "load_level",  # 6 h minus 7 d load
    "readings",  # log readings per window against the usual (gaps, bursts)
)
N_FEATURES = len(FEATURES)
#: the failure mode each signal speaks for (sensor noise is no mode)
FAMILY = {
    "vib_level": "bearing_wear",
    "vib_trend": "bearing_wear",
    "vib_slope": "bearing_wear",
    "vib_noise": "bearing_wear",
    "vib_spikes": "bearing_wear",
    "temp_residual": "overheating",
    "thermal_gain": "overheating",
    "temp_level": "overheating",
    "temp_noise": "overheating",
    "load_level": "unknown",
    "readings": "unknown",
}
_TEMP_FEATURES = [
    FEATURES.index(f) for f in ("temp_residual", "thermal_gain", "temp_level", "temp_noise")
]
_VIB_FEATURES = [
    FEATURES.index(f) for f in ("vib_level", "vib_trend", "vib_slope", "vib_noise", "vib_spikes")
]

#: per-reading sums folded into a window, in this order; ``s`` is the reading's place in
#: its window (-0.5 .. 0.5), for the within-window regression of temperature on (1, s, load)
SUMS = (
    "n", "temp", "vib", "load", "dtemp", "dvib", "rep_temp", "rep_vib",
    "s", "ss", "sl", "st", "ll", "lt", "tt",
)  # fmt: skip
#: per-reading maxima (``vib_neg``: minus the smallest vibration)
MAXES = ("vib_max", "dtemp_max", "dvib_max", "failure", "condition", "vib_neg")
# EWMA state columns
_LV = 0  # log vib fast, medium, slow: 0, 1, 2
_VN = 3  # vib noise fast, slow
_SP = 5  # spikes fast, slow
_TL = 7  # temperature fast, slow
_TN = 9  # temp noise fast, slow
_LD = 11  # load fast, slow
_RD = 13  # readings per window slow
_RES = 14  # residual fast
_REG = 15  # regression sums (1, L, T, LL, LT) medium: 15..19, slow: 20..24
N_EWMA = 25
_ALPHA = np.array([1 / 6, 1 / 24, 1 / 168])  # per hourly window: 6 h, 24 h, 7 d
_EPS_VAR = 0.004  # load variance floor in the thermal slope (continuous duty: ~none)


def close_windows(
    t: np.ndarray,
    sums: np.ndarray,
    maxes: np.ndarray,
    grp: np.ndarray,
    rank: np.ndarray,
    gstart: np.ndarray,
    gsize: np.ndarray,
    open_w: np.ndarray,
    open_sums: np.ndarray,
    open_max: np.ndarray,
    window_ms: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fold readings (rows grouped by device, arrival order kept) into windows.

    ``open_*`` are each group's open window (``open_w`` -1: none); they are updated in
    place to the newest window. Returns the closed windows sorted by (group, window):
    ``(group, window index, sums, maxes, closing row)``, the closing row being the
    reading that ended the window.
    """
    n = len(t)
    opened = open_w >= 0
    w = t // window_ms
    w = np.where(opened[grp], np.maximum(w, open_w[grp]), w)  # late readings: open window
    w = _segmented_cummax(w, grp, gstart, gsize)
    first = (rank == 0) | np.append(True, w[1:] != w[:-1])
    segs = np.flatnonzero(first)
    sgrp, sw = grp[segs], w[segs]
    last_seg = np.append(sgrp[1:] != sgrp[:-1], True)
    cont = (rank[segs] == 0) & opened[sgrp] & (sw == open_w[sgrp])
    seg_of = np.cumsum(first) - 1
    acc = np.zeros((len(segs), sums.shape[1]))
    acc[cont] = open_sums[sgrp[cont]]
    for j in range(sums.shape[1]):  # row by row onto the open window: exact
        col = acc[:, j].copy()
        np.add.at(col, seg_of, sums[:, j])
        acc[:, j] = col
    mx = np.maximum.reduceat(maxes, segs, axis=0) if n else np.zeros((0, maxes.shape[1]))
    mx[cont] = np.maximum(mx[cont], open_max[sgrp[cont]])
    alone = np.flatnonzero(opened & (sw[rank[segs] == 0] > open_w))  # closed before any segment
    done = ~last_seg
    next_row = np.append(segs[1:], n)
    gid = np.concatenate([alone, sgrp[done]])
    out = np.lexsort((np.concatenate([open_w[alone], sw[done]]), gid))
    closed = (
        gid[out],
        np.concatenate([open_w[alone], sw[done]])[out],
        np.concatenate([open_sums[alone], acc[done]])[out],
        np.concatenate([open_max[alone], mx[done]])[out],
        np.concatenate([gstart[alone], next_row[done]])[out],
    )
    keep = np.flatnonzero(last_seg)
    kg = sgrp[keep]
    open_w[kg] = sw[keep]
    open_sums[kg] = acc[keep]
    open_max[kg] = mx[keep]
    return closed


def _ew(old: np.ndarray, new: np.ndarray, a: float | np.ndarray, fresh: np.ndarray) -> np.ndarray:
    return np.where(fresh, new, old + a * (new - old))


def window_features(
    agg: np.ndarray, mx: np.ndarray, ewma: np.ndarray, count: np.ndarray, flags: np.ndarray
) -> np.ndarray:
    """Features of one closed window per row (one device each) from its sums ``agg`` and
    maxima ``mx``, against the device's EWMA state ``ewma`` (updated in place) and its
    count of windows ``count`` (incremented); ``flags`` are the detector's sensor flags
    (bits 0/2 temperature, 1/3 vibration). Returns ``X``."""
    a_f, a_m, a_s = _ALPHA
    n = np.maximum(agg[:, 0], 1.0)
    temp, vib, load = agg[:, 1] / n, agg[:, 2] / n, agg[:, 3] / n
    lv = np.log(np.maximum(vib, 1e-3))
    # successive-difference noise without the largest step (a load change, one spike)
    dn = np.maximum(agg[:, 0] - 1.0, 1.0)
    tn = np.log(np.maximum(agg[:, 4] - mx[:, 1], 0.0) / dn + 1e-3)
    vn = np.log(np.maximum(agg[:, 5] - mx[:, 2], 0.0) / dn / np.maximum(vib, 1e-3) + 1e-4)
    sp = np.log(np.maximum(mx[:, 0], 1e-3) / np.maximum(vib, 1e-3))
    fresh = count == 0
    bad_t = (flags & 0b0101) != 0
    bad_v = (flags & 0b1010) != 0

    e = ewma
    ok_v, ok_t = ~bad_v, ~bad_t
    for k, a in enumerate(_ALPHA):
        e[:, _LV + k] = np.where(ok_v | fresh, _ew(e[:, _LV + k], lv, a, fresh), e[:, _LV + k])
    for base, x in ((_VN, vn), (_SP, sp)):
        e[:, base] = np.where(ok_v | fresh, _ew(e[:, base], x, a_f, fresh), e[:, base])
        e[:, base + 1] = np.where(ok_v | fresh, _ew(e[:, base + 1], x, a_s, fresh), e[:, base + 1])
    for base, x in ((_TL, temp), (_TN, tn)):
        e[:, base] = np.where(ok_t | fresh, _ew(e[:, base], x, a_f, fresh), e[:, base])
        e[:, base + 1] = np.where(ok_t | fresh, _ew(e[:, base + 1], x, a_s, fresh), e[:, base + 1])
    e[:, _LD] = _ew(e[:, _LD], load, a_f, fresh)
    e[:, _LD + 1] = _ew(e[:, _LD + 1], load, a_s, fresh)
    e[:, _RD] = _ew(e[:, _RD], agg[:, 0], a_s, fresh)
    # temperature on load: EWMA sums of (1, L, T, L^2, L T) at the medium and slow speeds
    obs = np.column_stack([np.ones_like(load), load, temp, load * load, load * temp])
    slopes = []
    for base, a in ((_REG, a_m), (_REG + 5, a_s)):
        blk = e[:, base : base + 5]
        upd = _ew(blk, obs, a, fresh[:, None])
        e[:, base : base + 5] = np.where(ok_t[:, None] | fresh[:, None], upd, blk)
        w = np.maximum(e[:, base], 1e-9)
        mL, mT = e[:, base + 1] / w, e[:, base + 2] / w
        var = e[:, base + 3] / w - mL * mL
        cov = e[:, base + 4] / w - mL * mT
        slopes.append((cov / (np.maximum(var, 0.0) + _EPS_VAR), mL, mT))
    (k_m, _, _), (k_s, mL_s, mT_s) = slopes
    resid = temp - (mT_s + k_s * (load - mL_s))
    e[:, _RES] = np.where(ok_t | fresh, _ew(e[:, _RES], resid, a_f, fresh), e[:, _RES])
    count += 1

    X = np.column_stack(
        [
            e[:, _LV] - e[:, _LV + 2],
            e[:, _LV + 1] - e[:, _LV + 2],
            e[:, _LV] - e[:, _LV + 1],
            e[:, _VN] - e[:, _VN + 1],
            e[:, _SP] - e[:, _SP + 1],
            e[:, _RES],
            np.log(np.maximum(k_m, 1.0) / np.maximum(k_s, 1.0)),
            e[:, _TL] - e[:, _TL + 1],
            e[:, _TN] - e[:, _TN + 1],
            e[:, _LD] - e[:, _LD + 1],
            np.log(np.maximum(agg[:, 0], 1.0) / np.maximum(e[:, _RD], 1.0)),
        ]
    )
    X[np.ix_(bad_t, _TEMP_FEATURES)] = 0.0  # an untrusted sensor says nothing
    X[np.ix_(bad_v, _VIB_FEATURES)] = 0.0
    return X


def reading_inputs(
    t: np.ndarray,
    window_ms: int,
    temp: np.ndarray,
    vib: np.ndarray,
    load: np.ndarray,
    failure: np.ndarray,
    condition: np.ndarray,
    rank: np.ndarray,
    prev_temp: np.ndarray,
    prev_vib: np.ndarray,
    has_prev: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Per reading (grouped order): the columns of :data:`SUMS` and :data:`MAXES`.
    ``t``: event times (ms); ``prev_*``/``has_prev``: each row's device's reading before
    the batch."""
    n = len(temp)
    idx = np.arange(n)
    pt = np.where(rank > 0, temp[np.maximum(idx - 1, 0)], prev_temp)
    pv = np.where(rank > 0, vib[np.maximum(idx - 1, 0)], prev_vib)
    hp = (rank > 0) | has_prev
    dt = np.where(hp, np.abs(temp - pt), 0.0)
    dv = np.where(hp, np.abs(vib - pv), 0.0)
    pos = (t % window_ms) / window_ms - 0.5
    sums = np.column_stack(
        [
            np.ones(n),
            temp,
            vib,
            load,
            dt,
            dv,
            (hp & (dt == 0)).astype(float),
            (hp & (dv == 0)).astype(float),
            pos,
            pos * pos,
            pos * load,
            pos * temp,
            load * load,
            load * temp,
            temp * temp,
        ]
    )
    maxes = np.column_stack([vib, dt, dv, failure.astype(float), condition.astype(float), -vib])
    return sums, maxes
