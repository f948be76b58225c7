"""An unsupervised per-device drift detector and the sensor-fault rule: no failure needed.

Each device is its own reference. Per closed window, two load- and ambient-compensated
residuals are compared with the device's own baseline and normalized by its own noise:

* **vibration**: the window's log mean vibration minus a slow EWMA regression of it on
  the window's mean load (a busy machine shakes more); ``z_vib`` is that residual against
  its robust EWMA mean and variance;
* **thermal gain**: within the window, temperature is regressed on ``(1, s, load)``
  (``s`` the place in the window): the intercept and the time trend absorb the ambient
  and its daily swing, the load coefficient is the degrees per unit load. ``z_gain`` is
  the window's evidence that this coefficient exceeds the device's baseline
  ``(Sxy - k0 Sxx) / sqrt(s2 Sxx)``: a t-statistic with the device's own residual noise
  ``s2``, so a shift change (large ``Sxx``) counts for much and a flat hour for little.

A one-sided CUSUM ``S = max(0, S + z - k)`` per signal accumulates sustained upward
deviation and catches monotone drifts (bearing wear, clogging cooling) early, while a
single odd hour decays. Baselines learn slowly (about three days) and ten times slower
while a drift is being accumulated, so a degrading machine does not become its own
normal. The signal with the larger ``S`` names the mode.

Sensor faults are judged against the device's own noise after a day of windows:
**stuck** = readings repeating, or the window's whole variance (load changes, ambient
trend and noise) below a hundredth of the usual noise variance;
**noisy** = noise far above the usual (temperature: the residual variance of the
regression above, 9x; vibration: successive differences 3x) *without* a drift in
progress, unless the low readings fell too (a noisy sensor scatters both ways; bearing
wear spikes only upwards, after the level rose). A flagged signal adds no evidence.

>>> import numpy as np
>>> from actors.maintenance.features import SUMS, MAXES
>>> st = np.zeros((1, N_DET)); agg = np.zeros((1, len(SUMS))); mx = np.zeros((1, len(MAXES)))
>>> agg[0, :4] = [6, 300.0, 15.0, 3.0]
>>> z, S, flags = detect(agg, mx, st, np.zeros(1), DetectorConfig())
>>> z.shape, S.tolist(), flags.tolist()
((1, 2), [[0.0, 0.0]], [0])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from actors.maintenance.features import MAXES, SUMS

SIGNALS = ("vibration", "thermal_gain")
SIGNAL_MODE = ("bearing_wear", "overheating")
#: sensor flags: bit 0 stuck temperature, 1 stuck vibration, 2 noisy temperature, 3 noisy vibration
SENSOR_FLAGS = ("stuck_temperature", "stuck_vibration", "noisy_temperature", "noisy_vibration")
# state columns
_R = 0  # EWMA sums (1, L, lv, L^2, L lv): 0..4
_MB, _VB = 5, 6  # vibration residual: mean, variance
_KXY, _KXX, _S2 = 7, 8, 9  # thermal slope baseline sums, within-window residual variance
_S = 10  # CUSUM per signal: 10, 11
_VN, _MR = 12, 13  # usual log vibration noise, usual min/mean vibration ratio
N_DET = 14
_IDX = {k: i for i, k in enumerate(SUMS)}


@dataclass(frozen=True)
class DetectorConfig:
    """CUSUM allowance ``k`` (in sd), decision level ``h`` (the risk is 0.5 there),
    baseline speed ``alpha`` per window, windows before scoring, before judging noise."""

    k: float = 0.5
    h: float = 12.0
    alpha: float = 1 / 72
    warm: int = 48
    judge: int = 24
    freeze: float = 4.0  # S above which the baseline learns ten times slower
    z_max: float = 6.0  # one window adds at most this much evidence


def _col(agg: np.ndarray, name: str) -> np.ndarray:
    return agg[:, _IDX[name]]


def within_window(agg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(Sxx, Sxy, rv)`` of temperature on load within each window, with ``(1, s)``
    partialled out; ``rv`` the residual variance (nan with fewer than 4 readings)."""
    n, s, ss = _col(agg, "n"), _col(agg, "s"), _col(agg, "ss")
    L, T = _col(agg, "load"), _col(agg, "temp")
    sl, st = _col(agg, "sl"), _col(agg, "st")
    det = n * ss - s * s
    ok = (n >= 4) & (det > 1e-9 * np.maximum(n, 1) ** 2)
    det = np.where(ok, det, 1.0)

    def proj(a: np.ndarray, sa: np.ndarray, b: np.ndarray, sb: np.ndarray) -> np.ndarray:
        return (ss * a * b - s * (a * sb + sa * b) + n * sa * sb) / det

    sxx = np.where(ok, _col(agg, "ll") - proj(L, sl, L, sl), 0.0)
    sxy = np.where(ok, _col(agg, "lt") - proj(L, sl, T, st), 0.0)
    syy = np.where(ok, _col(agg, "tt") - proj(T, st, T, st), 0.0)
    sxx = np.maximum(sxx, 0.0)
    fit = np.where(sxx > 1e-12, sxy * sxy / np.maximum(sxx, 1e-12), 0.0)
    rv = np.where(ok, np.maximum(syy - fit, 0.0) / np.maximum(n - 3.0, 1.0), np.nan)
    return sxx, sxy, rv


def detect(
    agg: np.ndarray, mx: np.ndarray, st: np.ndarray, count: np.ndarray, cfg: DetectorConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One closed window per row (one device each): its sums ``agg`` and maxima ``mx``
    against the device's detector state ``st`` (updated in place), ``count`` its windows
    since the last repair. Returns ``(z, S, sensor flags)``; z and S per :data:`SIGNALS`."""
    n = np.maximum(_col(agg, "n"), 1.0)
    fresh, warm, judged = count == 0, count >= cfg.warm, count >= cfg.judge
    load = _col(agg, "load") / n
    vib = np.maximum(_col(agg, "vib") / n, 1e-3)
    lv = np.log(vib)
    dn = np.maximum(n - 1.0, 1.0)
    vn = np.log(
        np.maximum(_col(agg, "dvib") - mx[:, MAXES.index("dvib_max")], 0.0) / dn / vib + 1e-4
    )
    mr = np.clip(-mx[:, MAXES.index("vib_neg")] / vib, 0.0, 1.0)
    sxx, sxy, rv = within_window(agg)
    has_rv = np.isfinite(rv)
    rv = np.where(has_rv, rv, 0.0)
    s2 = np.maximum(st[:, _S2], 1e-3)
    S_prev = st[:, _S : _S + 2].copy()

    # -- sensor faults, against the device's own noise ----------------------------------
    rep_t = _col(agg, "rep_temp") >= 0.5 * _col(agg, "n")
    rep_v = _col(agg, "rep_vib") >= 0.5 * _col(agg, "n")
    n_t = _col(agg, "n")
    raw = (_col(agg, "tt") - _col(agg, "temp") ** 2 / n) / np.maximum(n_t - 1.0, 1.0)
    stuck_t = rep_t | (judged & (n_t >= 4) & (raw < 0.01 * s2))
    stuck_v = rep_v | (judged & (vn < st[:, _VN] - np.log(10.0)))
    noisy_t = judged & has_rv & (rv > 9.0 * s2) & ~stuck_t
    scattered = mr < 0.5 * st[:, _MR]
    noisy_v = (
        judged
        & (vn - st[:, _VN] > np.log(3.0))
        & ((S_prev[:, 0] < cfg.h / 2) | scattered)
        & ~stuck_v
    )
    bad_t, bad_v = stuck_t | noisy_t, stuck_v | noisy_v
    flags = (
        stuck_t.astype(np.int64)
        | (stuck_v.astype(np.int64) << 1)
        | (noisy_t.astype(np.int64) << 2)
        | (noisy_v.astype(np.int64) << 3)
    )

    # -- the residuals and their evidence -----------------------------------------------
    obs = np.column_stack([np.ones_like(load), load, lv, load * load, load * lv])
    st[fresh, _R : _R + 5] = obs[fresh]
    w = np.maximum(st[:, _R], 1e-9)
    mL, mY = st[:, _R + 1] / w, st[:, _R + 2] / w
    var = np.maximum(st[:, _R + 3] / w - mL * mL, 0.0)
    b = (st[:, _R + 4] / w - mL * mY) / (var + 0.004)
    x = lv - (mY + b * (load - mL))
    z_v = (x - st[:, _MB]) / np.sqrt(np.maximum(st[:, _VB], 1e-4))
    k0 = st[:, _KXY] / np.maximum(st[:, _KXX], 1e-12)
    z_g = (sxy - k0 * sxx) / np.sqrt(s2 * np.maximum(sxx, 1e-12))
    z_v = np.where(bad_v | fresh, 0.0, z_v)
    z_g = np.where(bad_t | fresh | (sxx <= 1e-12) | (st[:, _KXX] <= 1e-12), 0.0, z_g)
    z = np.column_stack([z_v, z_g])
    S = np.where(warm[:, None], np.maximum(0.0, S_prev + np.clip(z, -4.0, cfg.z_max) - cfg.k), 0.0)
    st[:, _S : _S + 2] = S

    # -- the baselines learn: fast at first, slowly after, barely while drifting --------
    a = np.where(count < cfg.judge, 1.0 / (count + 1.0), cfg.alpha)
    slow = np.where(S_prev >= cfg.freeze, 0.1, 1.0)
    a_v = np.where(bad_v, 0.0, a * slow[:, 0])
    a_t = np.where(bad_t, 0.0, a * slow[:, 1])
    st[:, _R : _R + 5] += a_v[:, None] * (obs - st[:, _R : _R + 5])
    d = x - st[:, _MB]
    st[:, _MB] += a_v * d
    st[:, _VB] = np.where(fresh, 0.02**2, st[:, _VB] + a_v * (d * d - st[:, _VB]))
    st[:, _VN] += np.where(fresh, 1.0, a_v) * (vn - st[:, _VN])
    st[:, _MR] += np.where(fresh, 1.0, a_v) * (mr - st[:, _MR])
    a_k = np.where(sxx > 1e-12, a_t, 0.0)
    st[:, _KXY] += np.where(fresh, 1.0, a_k) * (sxy - st[:, _KXY])
    st[:, _KXX] += np.where(fresh, 1.0, a_k) * (sxx - st[:, _KXX])
    a_s = np.where(has_rv, np.where(fresh | (st[:, _S2] <= 0), 1.0, a_t), 0.0)
    st[:, _S2] += a_s * (rv - st[:, _S2])
    return z, S, flags


def risk(S: np.ndarray, cfg: DetectorConfig) -> np.ndarray:
    """The detector's risk in [0, 1): 0.5 where the larger CUSUM reaches ``h``."""
    top = S.max(axis=1) if len(S) else np.zeros(0)
    return top / (top + cfg.h)
