"""The fraud features of one event against its customer's profile, vectorized over a batch.

:func:`features` scales what :class:`~actors.fraud.customer.Customer` computes into the
model's feature matrix; :func:`devices_one_by_one` and :func:`haversine_km` are the two
helpers its ``apply`` needs for device novelty and distance.

>>> import numpy as np
>>> round(float(haversine_km(np.array([0.0]), np.array([0.0]), np.array([0.0]), np.array([1.0]))[0]), 1)
111.2
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from runtime.state.keys import hash_keys

NO_TS = -(2**62)  # "no timestamp yet" in the recent-timestamps ring
RECENT = 4  # timestamps kept per customer for the burst rule
DEVICES = 8  # device ids remembered per customer
EARTH_KM = 6371.0
YOUNG_DEVICE_MS = 3_600_000  # a device first used within the hour is still "young"


def category_bits(categories: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """One bit of a 63-bit mask per category (by a stable hash): a profile remembers the
    categories a customer bought in as one int64."""
    h = hash_keys(categories).astype(np.uint64) % np.uint64(63)
    return (np.int64(1) << h.astype(np.int64)).astype(np.int64)


def repeats(grp: np.ndarray, key: np.ndarray, rank: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Which of ``rows`` have an earlier row of the same group with the same ``key``."""
    if not len(rows):
        return np.zeros(0, dtype=bool)
    order = np.lexsort((rank[rows], key[rows], grp[rows]))
    po = rows[order]
    rep = np.zeros(len(po), dtype=bool)
    rep[1:] = (grp[po[1:]] == grp[po[:-1]]) & (key[po[1:]] == key[po[:-1]])
    out = np.zeros(len(rows), dtype=bool)
    out[order] = rep
    return out


def novelty(
    t: np.ndarray,
    dev: np.ndarray,
    bits: np.ndarray,
    new_device: np.ndarray,
    n_prev: np.ndarray,
    grp: np.ndarray,
    rank: np.ndarray,
    group_first: np.ndarray,
    stored: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Per event (rows grouped by customer, arrival order within): (young device, category
    never bought in), against the profile's ``stored`` (last new device, when it came, the
    category mask) and the customer's earlier events of the batch.

    A young device is the one that was new to the profile most recently, within the hour
    (an incident's follow-ups on the device it brought); a new category counts once the
    customer has some history.
    """
    last_new_device, last_new_ts, categories = stored
    j = latest_before(new_device, group_first)
    last_dev = np.where(j >= 0, dev[np.maximum(j, 0)], last_new_device)
    last_ts = np.where(j >= 0, t[np.maximum(j, 0)], last_new_ts)
    young = (
        (n_prev > 0)
        & ~new_device
        & (dev == last_dev)
        & (last_ts != NO_TS)
        & (t - last_ts <= YOUNG_DEVICE_MS)
    )
    cat_new = (categories & bits) == 0
    cand = np.flatnonzero(cat_new)
    cat_new[cand[repeats(grp, bits, rank, cand)]] = False
    return young, cat_new & (n_prev >= 3)


def latest_before(flag: np.ndarray, group_first: np.ndarray) -> np.ndarray:
    """For each row (rows grouped, arrival order within), the latest earlier row of its
    group with ``flag`` set, or -1.

    >>> latest_before(np.array([True, False, True, False]), np.array([0, 0, 2, 2])).tolist()
    [-1, 0, -1, 2]
    """
    idx = np.maximum.accumulate(np.where(flag, np.arange(len(flag)), -1))
    prev = np.r_[-1, idx[:-1]] if len(idx) else idx
    return np.where(prev >= group_first, prev, -1)


def features(
    amt: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    burst: np.ndarray,
    dist: np.ndarray,
    new_device: np.ndarray,
    since: np.ndarray,
    n_prev: np.ndarray,
    rules: dict[str, np.ndarray],
    category_new: np.ndarray,
    young_device: np.ndarray,
    merchant_risk: np.ndarray,
) -> np.ndarray:
    """The model's feature matrix (see :data:`actors.fraud.model.FEATURES`), each roughly
    unit scale: the event against its customer's profile, the rule signals, and a few
    interactions of them."""
    has = n_prev >= 3
    z = np.where(has, (amt - mean) / np.maximum(std, 1.0 + 0.1 * mean), 0.0)
    ratio = np.where(has, np.log1p(amt / (mean + 1.0)), 0.0)
    distance = np.log1p(dist) / 8.0
    nd = new_device.astype(np.float64)
    b = burst / RECENT
    return np.column_stack(
        [
            np.log1p(amt) / 5.0,
            ratio,
            np.clip(z, -5.0, 10.0) / 5.0,
            b,
            distance,
            nd,
            np.log1p(np.minimum(since, 1e6)) / 14.0,
            has.astype(np.float64),
            rules["high_amount"].astype(np.float64),
            rules["burst"].astype(np.float64),
            rules["far_location"].astype(np.float64),
            rules["new_device_high_amount"].astype(np.float64),
            nd * ratio,
            nd * distance,
            b * nd,
            category_new.astype(np.float64),
            young_device.astype(np.float64),
            category_new * ratio,
            merchant_risk,  # actors.fraud.merchants: the merchant's labelled fraud rate
        ]
    )


def devices_one_by_one(
    devices: np.ndarray,
    unseen: np.ndarray,
    grp: np.ndarray,
    gstart: np.ndarray,
    gsize: np.ndarray,
    s: np.ndarray,
    dev: np.ndarray,
) -> np.ndarray:
    """Redo device novelty event by event where the vectorized check could be wrong.

    The vectorized check compares against the device list as it was before the
    batch. That is exact unless the batch pushes so many new devices that one
    falls off the end of the list and comes back later in the same batch: only
    customers with more than ``DEVICES`` devices in all. Those few are replayed
    one event at a time, and their lists are updated here. Returns their groups.
    """
    pushes = np.bincount(grp[unseen], minlength=len(gstart))
    filled = (devices[s[gstart]] != 0).sum(axis=1)
    risky = np.flatnonzero(filled + pushes > DEVICES)
    for g in risky.tolist():
        slot = int(s[gstart[g]])
        ring = devices[slot].tolist()
        for i in range(int(gstart[g]), int(gstart[g] + gsize[g])):
            d = int(dev[i])
            unseen[i] = d not in ring
            if unseen[i]:
                ring = [d, *ring[:-1]]
        devices[slot] = ring
    return risky


def haversine_km(
    lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray
) -> np.ndarray:
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(lon2 - lon1)
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))
