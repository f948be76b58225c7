"""The alt generator's fraud patterns and event labels (see :data:`LABELS`).

Part of :mod:`actors.fraud.generator_alt`; they act on an :class:`~actors.fraud.alt_world.AltWorld`.
Fraud is ``fraud_rate`` of events (default 1.5%); shares of fraud events by ``pattern_shares``:

1. card testing (30%): 3-6 tiny amounts (0.50-3.00) at online stores the card never used,
   20 s - 3 min apart, then one large purchase (electronics, jewelry or gift cards, ~900)
   1-10 min later; fraudster device ``z{first event id}``, a proxy place (60% another city).
2. account takeover (25%): a new device, another city, 2-4 purchases of electronics,
   jewelry or gift cards 1-6 min apart at ~1.6x the customer's price level for them.
3. merchant compromise (25%): every day 1-2 popular stores are breached (hashed from the
   day); 1-5 days later customers who have the store among their favourites get 1-3
   card-not-present purchases (~180, marketplace/electronics/gift cards) from the
   breach's fraud-ring city on a fraudster device.
4. slow fraud (20%, hard cases): one purchase at about the customer's usual amount, in a
   category the customer rarely uses, at a store they never used near where they are,
   75% on one of their own devices.

:func:`incidents` places a chunk's incidents on its rows (and picks their victims),
:func:`fraud_events` draws what those rows buy, where and for how much.
"""

from __future__ import annotations

import numpy as np

from actors.fraud.alt_world import _C, _CITIES, _FAV, _MIN, _MU, _ONLINE, AltWorld, _hash, _unit

_CASH_OUT = np.array([_C["electronics"], _C["jewelry"], _C["gift_cards"]])
_TEST_CATS = np.array([_C["digital_media"], _C["subscriptions"], _C["marketplace"]])
_RING_CATS = np.array([_C["marketplace"], _C["electronics"], _C["gift_cards"]])

#: pattern label of an event, from :meth:`AltGenerator.labelled_batches`; 1-4 are fraud
LABELS = {
    0: "normal",
    1: "card_testing",
    2: "account_takeover",
    3: "merchant_compromise",
    4: "slow_fraud",
    5: "travel",
    6: "holiday_splurge",
    7: "new_phone",
}
_CT, _ATO, _MC, _SLOW, _TRAVEL, _HOLIDAY, _PHONE = 1, 2, 3, 4, 5, 6, 7
_K = 7  # most events in one fraud incident (card testing: 6 tiny + 1 large)


def incidents(
    world: AltWorld, rng: np.random.Generator, ts: np.ndarray, day: np.ndarray, cust: np.ndarray
) -> dict[str, np.ndarray]:
    """Fraud incidents of a chunk: their kind, victim, place, and the rows they take.

    Follow-up events take the first rows at or after the planned times; incidents that
    leave the chunk, have no breach to exploit or collide with another are dropped.
    """
    cfg, n, nc = world.config, len(ts), len(_CITIES)
    shares = np.asarray(cfg.pattern_shares, float) / max(sum(cfg.pattern_shares), 1e-12)
    mean_size = np.array([5.5, 3.0, 2.0, 1.0])
    n_inc = rng.poisson(n * cfg.fraud_rate * 1.1 * shares / mean_size)
    kind = np.repeat(np.arange(1, 5), n_inc)
    nb = len(kind)
    starts = rng.integers(0, n, nb)
    size = np.select(
        [kind == _CT, kind == _ATO, kind == _MC],
        [rng.integers(4, 8, nb), rng.integers(2, 5, nb), rng.integers(1, 4, nb)],
        1,
    )
    gaps = np.select(
        [kind[:, None] == _CT, kind[:, None] == _ATO],
        [rng.uniform(20_000, 180_000, (nb, _K - 1)), rng.uniform(_MIN, 6 * _MIN, (nb, _K - 1))],
        rng.uniform(2 * _MIN, 40 * _MIN, (nb, _K - 1)),
    )
    # card testing: the large purchase comes 1-10 min after the last tiny one
    big = (kind == _CT)[:, None] & (np.arange(1, _K) == (size - 1)[:, None])
    gaps = np.where(big, rng.uniform(_MIN, 10 * _MIN, (nb, _K - 1)), gaps)
    steps = np.arange(_K)
    p = np.column_stack([starts, np.searchsorted(ts, ts[starts, None] + np.cumsum(gaps, 1))])
    p = np.maximum.accumulate(p - steps, axis=1) + steps  # strictly increasing rows
    member = steps < size[:, None]
    ok = (np.where(member, p, 0) < n).all(1)
    # victim: the customer of the start row, or for a compromise a fan of a store
    # breached 1-5 days before; place: card testing via a proxy (60% another city),
    # takeover from another city, compromise from the breach's fraud ring; -1: where
    # the card holder is
    p = np.minimum(p, n - 1)
    victim = cust[p[:, 0]]
    mc = kind == _MC
    breach_merchant, breach_city = _breaches(world, rng, day[p[mc, 0]])
    fans = world._fans.count(breach_merchant)
    fan = world._fans.start[breach_merchant] + (rng.random(len(fans)) * fans).astype(np.int64)
    victim[mc] = world._fans.order[np.minimum(fan, len(world._fans.order) - 1)] // _FAV
    ok[mc] &= fans > 0
    moved = (kind == _ATO) | ((kind == _CT) & (rng.random(nb) < 0.6))
    city = np.where(moved, (world._home[victim] + rng.integers(1, nc, nb)) % nc, -1)
    city[mc] = breach_city
    counts = np.bincount(p[member & ok[:, None]], minlength=n)
    ok &= ~(member & (counts[p] > 1)).any(1)
    member &= ok[:, None]
    incident, step = np.nonzero(member)
    return {
        "rows": p[member],
        "inc": incident,
        "step": step,
        "size": size,
        "kind": kind.astype(np.int8),
        "first": p[:, 0],
        "victim": victim,
        "city": city,
    }


def _breaches(
    world: AltWorld, rng: np.random.Generator, d: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For incidents on days ``d``: a store breached 1-5 days before, its fraud ring's city."""
    seed, nc = world.config.seed, len(_CITIES)
    back = rng.integers(1, 6, len(d))
    j = (rng.random(len(d)) * 2).astype(np.int64)
    bday = d - back
    j = np.where(_unit(seed, 5, bday) < 0.5, j, 0)  # 1-2 breaches a day
    merchant = np.searchsorted(world._breach_cdf, _unit(seed, 6, bday, j), side="right")
    merchant = np.minimum(merchant, len(world._breach_cdf) - 1)
    city = (_hash(seed, 7, bday, j) % np.uint64(nc)).astype(np.int64)
    return merchant, city


def fraud_events(
    world: AltWorld,
    rng: np.random.Generator,
    inc: dict[str, np.ndarray],
    cust: np.ndarray,
    where: np.ndarray,
) -> dict[str, np.ndarray]:
    """What the rows of :func:`incidents` (``inc``) are: their label (``kind``), ``cat``,
    ``amount``, ``city``, ``merchant``, and ``own`` (slow fraud on one of the card holder's
    own devices; every other fraud event is on a fraudster's).
    """
    nc = len(_CITIES)
    rows, k, size = inc["rows"], inc["inc"], inc["size"]
    kind, step = inc["kind"][k], inc["step"]
    m = len(rows)
    fcat = np.empty(m, np.int64)
    famt = np.empty(m)
    fcity = np.where(inc["city"][k] >= 0, inc["city"][k], where[rows])
    last = step == size[k] - 1
    ct_tiny, ct_big = (kind == _CT) & ~last, (kind == _CT) & last
    fcat[ct_tiny] = _TEST_CATS[rng.integers(0, 3, int(ct_tiny.sum()))]
    famt[ct_tiny] = rng.uniform(0.5, 3.0, int(ct_tiny.sum()))
    fcat[ct_big] = _CASH_OUT[rng.integers(0, 3, int(ct_big.sum()))]
    famt[ct_big] = rng.lognormal(np.log(900.0), 0.5, int(ct_big.sum()))
    ato = kind == _ATO
    fcat[ato] = _CASH_OUT[rng.integers(0, 3, int(ato.sum()))]
    famt[ato] = world._mult[cust[rows[ato]]] * np.exp(
        _MU[fcat[ato]] + rng.normal(0.5, 0.4, int(ato.sum()))
    )
    mc = kind == _MC
    fcat[mc] = _RING_CATS[rng.integers(0, 3, int(mc.sum()))]
    famt[mc] = rng.lognormal(np.log(180.0), 0.6, int(mc.sum()))
    slow = kind == _SLOW
    fcat[slow] = world._rare[cust[rows[slow]], rng.integers(0, 4, int(slow.sum()))]
    famt[slow] = world._typical[cust[rows[slow]]] * rng.lognormal(0.0, 0.3, int(slow.sum()))
    fgroup = fcat * (nc + 1) + np.where(_ONLINE[fcat], nc, fcity)
    merchant = world._stores.pick(fgroup, rng.random(m))
    # slow fraud stays on an own device 75% of the time; all else is a fraudster's
    own = slow & (rng.random(m) < 0.75)
    return {
        "kind": kind,
        "cat": fcat,
        "amount": famt,
        "city": fcity,
        "merchant": merchant,
        "own": own,
    }
