"""A second, independently designed card-transaction stream: shapes nobody tuned on.

Same output schema as :mod:`actors.fraud.generator` (:data:`TRANSACTION_SCHEMA`), different
world, different habits, different fraud. Ids do not overlap the repo generator's:
customers ``a{n}``, own devices ``h{customer}.{k}``, a customer's new phone
``h{customer}.w{week}``, fraudster devices ``z{event id}``, merchants (stores) ``s{n}``.

The world (drawn once from the seed):

* 30 cities on five continents; every customer lives in one (weighted by city size).
* 14 categories with their own price levels (a cafe ~8, jewelry ~350, log-sd 0.4-1.1);
  five are online (no place: the event has the card holder's place), nine are local.
* merchants: at least one per (local category, city) and per online category, the rest
  spread by category popularity x city size; lognormal popularity (sd 1.4) within a
  (category, city) group, so a few stores get most of the trade. A local purchase has
  the store's place.
* customers: lognormal activity weights (sd 1.1, no Zipf), one of three chronotypes
  (day / evening / night) with their own hourly and weekday profiles, a Dirichlet(0.4)
  category taste, a lognormal spending multiplier (x5 for ``high_spender_share``), six
  favourite stores near home used for a customer-specific share of purchases; 1-2
  devices, 3-7 for families (``family_share``); travellers (``traveller_share``) go on a
  2-7 day trip in 35% of weeks, others in 4%.

Time follows a weekly intensity (the sum of the chronotypes' profiles): events are
drawn at a constant rate in a warped clock mapped back through that intensity, and the
customer of an event is drawn given its hour of week (night owls at night).

Legitimate anomalies that look like fraud: travel (a far city's stores for days, label 5),
sale/holiday days (about 1 in 8, hashed from the day) with 5x-splurges on fashion,
electronics and jewelry (label 6), and a new phone for a week and a half (3% of customer
weeks, 6% for families; label 7).

Fraud (``fraud_rate`` of events, default 1.5%), shares of fraud events by ``pattern_shares``:

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

``AltGenerator.labelled_batches`` also yields each event's pattern label (see
:data:`LABELS`); the emitted table is exactly :data:`TRANSACTION_SCHEMA`. Output depends
only on the config, ``n_events`` and ``first_event_id``: events are drawn in fixed
chunks of ``2**16`` rows with their own RNG, and everything that spans chunks (trips,
new phones, holidays, breaches) is a hash of (seed, customer or day, week), not state.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from actors.fraud.generator import TRANSACTION_SCHEMA
from runtime.errors import ConfigError

# fmt: off
_CITIES = np.array([  # lat, lon: a world of its own, not the repo generator's 20 cities
    (35.690, 139.692), (37.566, 126.978), (31.230, 121.474), (22.320, 114.169), (1.352, 103.820),
    (13.756, 100.502), (19.076, 72.878), (28.614, 77.209), (25.205, 55.271), (41.009, 28.978),
    (-33.869, 151.209), (-37.814, 144.963), (-36.848, 174.763), (-23.551, -46.633),
    (-34.604, -58.382), (-12.046, -77.043), (4.711, -74.072), (-33.925, 18.424), (6.524, 3.379),
    (30.044, 31.236), (-1.292, 36.822), (55.756, 37.617), (50.450, 30.523), (60.170, 24.938),
    (45.464, 9.190), (50.075, 14.438), (29.760, -95.370), (39.739, -104.990), (49.283, -123.121),
    (32.715, -117.161),
])
#: name, median price, log-sd, online, popularity
_CATS = [
    ("supermarket", 35.0, 0.6, False, 0.20), ("transport", 12.0, 0.7, False, 0.09),
    ("cafe", 8.0, 0.5, False, 0.11), ("dining", 45.0, 0.6, False, 0.08),
    ("pharmacy", 22.0, 0.7, False, 0.05), ("fashion", 70.0, 0.8, False, 0.07),
    ("home_improvement", 90.0, 1.0, False, 0.04), ("electronics", 220.0, 1.0, False, 0.04),
    ("jewelry", 350.0, 1.1, False, 0.01), ("gift_cards", 60.0, 0.7, True, 0.02),
    ("digital_media", 12.0, 0.6, True, 0.08), ("marketplace", 45.0, 0.9, True, 0.12),
    ("airline_hotel", 320.0, 0.8, True, 0.03), ("subscriptions", 15.0, 0.4, True, 0.06),
]
# fmt: on
ALT_CATEGORIES = tuple(c[0] for c in _CATS)
_C = {name: i for i, name in enumerate(ALT_CATEGORIES)}
_MU = np.log([c[1] for c in _CATS])
_SD = np.array([c[2] for c in _CATS])
_ONLINE = np.array([c[3] for c in _CATS])
_POP = np.array([c[4] for c in _CATS]) / sum(c[4] for c in _CATS)
_CASH_OUT = np.array([_C["electronics"], _C["jewelry"], _C["gift_cards"]])
_TEST_CATS = np.array([_C["digital_media"], _C["subscriptions"], _C["marketplace"]])
_RING_CATS = np.array([_C["marketplace"], _C["electronics"], _C["gift_cards"]])
_TRIP_CATS = np.array([_C["dining"], _C["airline_hotel"], _C["transport"], _C["cafe"]])
_HOLIDAY_CATS = np.array([_C["fashion"], _C["electronics"], _C["jewelry"]])

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

_CHUNK = 1 << 16
_MIN, _HOUR, _DAY = 60_000, 3_600_000, 86_400_000
_WEEK = 7 * _DAY
_MONDAY_MS = 4 * _DAY  # 1970-01-05, a Monday: weeks and weekdays count from it
_BIN = 15 * _MIN  # resolution of the weekly intensity
_FAV = 6  # favourite stores per customer
_K = 7  # most events in one fraud incident (card testing: 6 tiny + 1 large)


def _hash(*keys: int | np.ndarray) -> np.ndarray:
    """splitmix64 of a tuple of integer keys (broadcast): stateless, chunk-independent."""
    with np.errstate(over="ignore"):
        h = np.uint64(0x243F6A8885A308D3)
        for k in keys:
            z = h ^ np.asarray(k).astype(np.int64).astype(np.uint64)
            z = z + np.uint64(0x9E3779B97F4A7C15)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            h = z ^ (z >> np.uint64(31))
    return np.asarray(h)


def _unit(*keys: int | np.ndarray) -> np.ndarray:
    """A uniform [0, 1) float per key tuple."""
    return (_hash(*keys) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _strs(prefix: str, *parts: np.ndarray | pa.Array, seps: tuple[str, ...] = ()) -> pa.Array:
    """``prefix`` + str(parts[0]) + seps[0] + str(parts[1]) ..., vectorized."""
    items: list[pa.Array | str] = [prefix]
    for i, p in enumerate(parts):
        items.append(pc.cast(pa.array(p), pa.string()))
        if i < len(seps):
            items.append(seps[i])
    return pc.binary_join_element_wise(*items, "")


def _km(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    p1, p2 = np.radians(lat1), np.radians(lat2)
    a = (
        np.sin((p2 - p1) / 2) ** 2
        + np.cos(p1) * np.cos(p2) * np.sin(np.radians(lon2 - lon1) / 2) ** 2
    )
    return 12742.0 * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


class _Picker:
    """Weighted choice of an item within its group: ``pick(group, u)`` for u in [0, 1)."""

    def __init__(self, group: np.ndarray, weight: np.ndarray, n_groups: int) -> None:
        self.order = np.argsort(group, kind="stable")
        self.cum = np.cumsum(weight[self.order])
        self.start = np.searchsorted(group[self.order], np.arange(n_groups + 1))
        self.base = np.concatenate([[0.0], self.cum])[self.start]

    def count(self, g: np.ndarray) -> np.ndarray:
        return self.start[g + 1] - self.start[g]

    def pick(self, g: np.ndarray, u: np.ndarray) -> np.ndarray:
        lo, hi = self.start[g], self.start[g + 1]
        target = self.base[g] + u * (self.base[g + 1] - self.base[g])
        i = np.clip(np.searchsorted(self.cum, target, side="right"), lo, np.maximum(hi - 1, lo))
        return self.order[np.minimum(i, len(self.order) - 1)]


def _hourly(centers: list[tuple[float, float, float]], floor: float) -> np.ndarray:
    h = np.arange(24) + 0.5
    out = np.full(24, floor)
    for c, width, height in centers:
        d = np.minimum(np.abs(h - c), 24 - np.abs(h - c))
        out += height * np.exp(-0.5 * (d / width) ** 2)
    return out


# chronotypes: share of customers, hourly profile, weekday factor Mon..Sun
_TYPE_SHARE = np.array([0.55, 0.35, 0.10])
_PROFILE = np.stack(
    [
        _hourly([(12.5, 2.0, 1.0), (18.0, 1.8, 0.9), (8.5, 1.2, 0.4)], 0.03),
        _hourly([(20.5, 2.2, 1.0), (13.0, 1.8, 0.5)], 0.06),
        _hourly([(1.0, 2.5, 1.0), (22.5, 1.5, 0.6)], 0.25),
    ]
)
_WEEKDAY = np.array(
    [
        [1.0, 1.0, 1.0, 1.0, 1.1, 1.3, 0.8],
        [0.9, 0.9, 1.0, 1.0, 1.3, 1.5, 1.1],
        [0.8] * 4 + [1.6] * 2 + [1.0],
    ]
)


@dataclass(frozen=True)
class AltConfig:
    """World and stream parameters of :class:`AltGenerator`; everything random derives from ``seed``."""

    seed: int = 2027
    n_customers: int = 10_000
    n_merchants: int = 5_000
    fraud_rate: float = 0.015
    #: mean time between two purchases of one customer; sets the stream's event rate
    customer_interval_ms: float = 3 * 3600 * 1000
    start: datetime = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
    traveller_share: float = 0.12
    family_share: float = 0.15
    high_spender_share: float = 0.06
    #: shares of fraud events: card testing, account takeover, merchant compromise, slow fraud
    pattern_shares: tuple[float, float, float, float] = (0.30, 0.25, 0.25, 0.20)

    def __post_init__(self) -> None:
        needed = int((~_ONLINE).sum()) * len(_CITIES) + int(_ONLINE.sum())
        if self.n_customers < 1:
            raise ConfigError("n_customers must be at least 1")
        if self.n_merchants < needed:
            raise ConfigError(f"n_merchants must be at least {needed} (one per category and city)")
        if not 0.0 <= self.fraud_rate <= 0.5:
            raise ConfigError(f"fraud_rate must be in [0, 0.5], got {self.fraud_rate}")
        if self.customer_interval_ms <= 0 or min(self.pattern_shares) < 0:
            raise ConfigError("customer_interval_ms must be > 0 and pattern_shares >= 0")

    @property
    def mean_gap_ms(self) -> float:
        return self.customer_interval_ms / self.n_customers


class AltGenerator:
    """Card transactions as Arrow record batches of :data:`TRANSACTION_SCHEMA`.

    >>> gen = AltGenerator(AltConfig(n_customers=300, seed=1))
    >>> batches = list(gen.batches(1000, batch_size=400))
    >>> [b.num_rows for b in batches], batches[0].schema == TRANSACTION_SCHEMA
    ([400, 400, 200], True)
    >>> batches[0].column("customer_id")[0].as_py()[0]
    'a'
    """

    def __init__(self, config: AltConfig = AltConfig()) -> None:
        self.config = cfg = config
        rng = np.random.default_rng([cfg.seed, 0xA17, 0])
        n, nc, ncat = cfg.n_customers, len(_CITIES), len(_CATS)
        start = cfg.start if cfg.start.tzinfo else cfg.start.replace(tzinfo=UTC)
        self._start_ms = round(start.timestamp() * 1000)
        city_w = rng.lognormal(0.0, 0.6, nc)
        city_w /= city_w.sum()
        # merchants: one per (local category, city) and per online category, the rest by
        # popularity; group g = category * (cities + 1) + (city, or cities when online)
        self._ng = ncat * (nc + 1)
        local_g = [c * (nc + 1) + k for c in range(ncat) if not _ONLINE[c] for k in range(nc)]
        online_g = [c * (nc + 1) + nc for c in range(ncat) if _ONLINE[c]]
        gw = np.zeros(self._ng)
        for c in range(ncat):
            if _ONLINE[c]:
                gw[c * (nc + 1) + nc] = _POP[c] * 0.3
            else:
                gw[c * (nc + 1) : c * (nc + 1) + nc] = _POP[c] * city_w
        extra = rng.choice(
            self._ng, cfg.n_merchants - len(local_g) - len(online_g), p=gw / gw.sum()
        )
        m_group = np.concatenate([local_g, online_g, extra]).astype(np.int64)
        self._m_cat = m_group // (nc + 1)
        m_city = m_group % (nc + 1)
        self._m_online = m_city == nc
        m_city = np.where(self._m_online, 0, m_city)
        self._m_lat = _CITIES[m_city, 0] + rng.normal(0, 0.06, cfg.n_merchants)
        self._m_lon = _CITIES[m_city, 1] + rng.normal(0, 0.06, cfg.n_merchants)
        self._stores = _Picker(m_group, rng.lognormal(0.0, 1.4, cfg.n_merchants), self._ng)
        # customers
        self._home = rng.choice(nc, n, p=city_w)
        self._home_lat = _CITIES[self._home, 0] + rng.normal(0, 0.04, n)
        self._home_lon = _CITIES[self._home, 1] + rng.normal(0, 0.04, n)
        ctype = rng.choice(3, n, p=_TYPE_SHARE)
        activity = rng.lognormal(0.0, 1.1, n)
        self._people = _Picker(ctype, activity, 3)
        mass = np.bincount(ctype, activity, minlength=3)
        # weekly intensity on 15-min bins from Monday 00:00 UTC; p(chronotype | bin)
        b = np.arange(_WEEK // _BIN)
        hour, dow = (b * _BIN // _HOUR) % 24, b * _BIN // _DAY
        per_type = mass[:, None] * _PROFILE[:, hour] * _WEEKDAY[:, dow]
        intensity = per_type.sum(0)
        self._type_cdf = np.cumsum(per_type / intensity, axis=0).T  # (bins, 3)
        self._grid_t = np.arange(len(b) + 1, dtype=np.float64) * _BIN
        self._grid_u = np.concatenate([[0.0], np.cumsum(intensity / intensity.mean() * _BIN)])
        self._u0 = self._warp(np.array([float(self._start_ms - _MONDAY_MS)]))[0]
        # spending and taste
        self._mult = rng.lognormal(0.0, 0.45, n) * np.where(
            rng.random(n) < cfg.high_spender_share, 5.0, 1.0
        )
        taste = rng.dirichlet(np.full(ncat, 0.4), n) * _POP
        taste /= taste.sum(1, keepdims=True)
        self._taste_cdf = np.cumsum(taste, 1)
        self._rare = np.argsort(taste, 1)[:, :4]  # the four categories a customer uses least
        self._typical = self._mult * np.exp((taste * _MU).sum(1))
        fav_cat = (self._taste_cdf[:, None, :] < rng.random((n, _FAV, 1))).sum(2).clip(0, ncat - 1)
        fav_g = fav_cat * (nc + 1) + np.where(_ONLINE[fav_cat], nc, self._home[:, None])
        self._fav = self._stores.pick(fav_g, rng.random((n, _FAV)))
        self._p_fav = rng.beta(5.0, 3.0, n)
        # who has which store among their favourites (breach victims), and breach weights
        flat = self._fav.ravel()
        self._fans = _Picker(flat, np.ones(len(flat)), cfg.n_merchants)
        fans = np.bincount(flat, minlength=cfg.n_merchants).astype(np.float64)
        self._breach_cdf = np.cumsum(fans) / fans.sum()
        # devices and travel
        family = rng.random(n) < cfg.family_share
        self._n_dev = np.where(family, rng.integers(3, 8, n), rng.integers(1, 3, n))
        self._dev_off = np.cumsum(self._n_dev) - self._n_dev
        owner = np.repeat(np.arange(n), self._n_dev)
        self._devices = _strs("h", owner, np.arange(len(owner)) - self._dev_off[owner], seps=("."))
        self._p_phone = np.where(family, 0.06, 0.03)
        self._p_trip = np.where(rng.random(n) < cfg.traveller_share, 0.35, 0.04)
        self._customer_ids = _strs("a", np.arange(n))
        self._merchant_ids = _strs("s", np.arange(cfg.n_merchants))
        self._categories = pa.array(ALT_CATEGORIES, pa.string())

    # time: a constant-rate warped clock u <-> ms since Monday epoch through the weekly intensity
    def _warp(self, t: np.ndarray) -> np.ndarray:
        w = np.floor(t / _WEEK)
        return w * _WEEK + np.interp(t - w * _WEEK, self._grid_t, self._grid_u)

    def _unwarp(self, u: np.ndarray) -> np.ndarray:
        w = np.floor(u / _WEEK)
        return w * _WEEK + np.interp(u - w * _WEEK, self._grid_u, self._grid_t)

    def batches(
        self, n_events: int, batch_size: int = 50_000, first_event_id: int = 0
    ) -> Iterator[pa.RecordBatch]:
        """Yield ``n_events`` events in batches of ``batch_size`` (the last may be shorter)."""
        for batch, _ in self.labelled_batches(n_events, batch_size, first_event_id):
            yield batch

    def labelled_batches(
        self, n_events: int, batch_size: int = 50_000, first_event_id: int = 0
    ) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
        """Like :meth:`batches`, with each event's pattern label (int8, see :data:`LABELS`)."""
        if n_events < 0 or batch_size < 1:
            raise ConfigError("n_events must be >= 0 and batch_size >= 1")
        pending: list[pa.RecordBatch] = []
        labels: list[np.ndarray] = []
        rows, carry = 0, first_event_id * self.config.mean_gap_ms
        for idx, lo in enumerate(range(0, n_events, _CHUNK)):
            rng = np.random.default_rng([self.config.seed, 0xA17, 1, idx, first_event_id])
            chunk, lab, carry = self._chunk(
                rng, min(_CHUNK, n_events - lo), carry, first_event_id + lo
            )
            pending.append(chunk)
            labels.append(lab)
            rows += chunk.num_rows
            if rows < batch_size and lo + _CHUNK < n_events:
                continue
            merged = pa.Table.from_batches(pending).combine_chunks().to_batches()[0]
            lab_all = np.concatenate(labels)
            full = rows - rows % batch_size if lo + _CHUNK < n_events else rows
            for off in range(0, full, batch_size):
                yield merged.slice(off, batch_size), lab_all[off : off + batch_size]
            pending, labels = [merged.slice(full)], [lab_all[full:]]
            rows -= full

    def _chunk(
        self, rng: np.random.Generator, n: int, carry: float, first_id: int
    ) -> tuple[pa.RecordBatch, np.ndarray, float]:
        cfg, nc, seed = self.config, len(_CITIES), self.config.seed
        u = carry + np.cumsum(rng.exponential(cfg.mean_gap_ms, n))
        t_rel = self._unwarp(self._u0 + u)  # ms since the Monday epoch
        ts = (_MONDAY_MS + t_rel).astype(np.int64)
        t_rel = ts - _MONDAY_MS
        bins = (t_rel % _WEEK) // _BIN
        ctype = (self._type_cdf[bins] < rng.random((n, 1))).sum(1).clip(0, 2)
        cust = self._people.pick(ctype, rng.random(n))
        day, week = t_rel // _DAY, t_rel // _WEEK
        label = np.zeros(n, np.int8)

        # fraud incidents: positions first, so victims' events are drawn as theirs
        inc = self._incidents(rng, ts, day, cust)
        cust[inc["rows"]] = inc["victim"][inc["inc"]]

        # trips (started this week or last) and new phones (this week or last): hashes
        where, travelling = self._home[cust].copy(), np.zeros(n, bool)
        phone = np.full(n, -1, np.int64)
        for w in (week, week - 1):
            h = _hash(seed, 1, cust, w)
            begin = w * _WEEK + (h % np.uint64(7 * 24)).astype(np.int64) * _HOUR
            length = (2 + (h >> np.uint64(16)) % np.uint64(6)).astype(np.int64) * _DAY
            on = (_unit(seed, 2, cust, w) < self._p_trip[cust]) & (begin <= t_rel)
            on &= t_rel < begin + length
            dest = (
                self._home[cust] + 1 + ((h >> np.uint64(32)) % np.uint64(nc - 1)).astype(np.int64)
            ) % nc
            where = np.where(on & ~travelling, dest, where)
            travelling |= on
            got = begin <= t_rel
            got &= (_unit(seed, 3, cust, w) < self._p_phone[cust]) & (t_rel < begin + 10 * _DAY)
            phone = np.where(got & (phone < 0), w, phone)
        holiday = _unit(seed, 4, day) < 0.125

        # normal behaviour: a favourite store near home, or a category by taste at a store
        # of the current city (online: any); holidays and trips tilt the category
        cat = (self._taste_cdf[cust] < rng.random((n, 1))).sum(1).clip(0, len(_CATS) - 1)
        r = rng.random(n)
        trip_cat = travelling & (r < 0.35)
        cat[trip_cat] = _TRIP_CATS[rng.integers(0, len(_TRIP_CATS), int(trip_cat.sum()))]
        hol_cat = holiday & ~travelling & (r < 0.12)
        cat[hol_cat] = _HOLIDAY_CATS[rng.integers(0, 3, int(hol_cat.sum()))]
        group = cat * (nc + 1) + np.where(_ONLINE[cat], nc, where)
        merchant = self._stores.pick(group, rng.random(n))
        use_fav = ~travelling & ~hol_cat & (rng.random(n) < self._p_fav[cust])
        merchant[use_fav] = self._fav[cust[use_fav], rng.integers(0, _FAV, int(use_fav.sum()))]
        cat[use_fav] = self._m_cat[merchant[use_fav]]
        splurge = rng.random(n) < np.where(holiday, 0.12, 0.03)
        amount = self._mult[cust] * np.exp(_MU[cat] + _SD[cat] * rng.standard_normal(n))
        amount *= np.where(splurge, rng.lognormal(1.6, 0.4, n), 1.0)
        dev = self._dev_off[cust] + (self._n_dev[cust] * rng.random(n) ** 2).astype(np.int64)
        new_phone = (phone >= 0) & (rng.random(n) < 0.7)
        label[new_phone] = _PHONE
        label[holiday & splurge] = _HOLIDAY
        label[travelling] = _TRAVEL

        # fraud overrides
        rows, k, first, size = inc["rows"], inc["inc"], inc["first"], inc["size"]
        kind, step = inc["kind"][k], inc["step"]
        m = len(rows)
        label[rows] = kind
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
        famt[ato] = self._mult[cust[rows[ato]]] * np.exp(
            _MU[fcat[ato]] + rng.normal(0.5, 0.4, int(ato.sum()))
        )
        mc = kind == _MC
        fcat[mc] = _RING_CATS[rng.integers(0, 3, int(mc.sum()))]
        famt[mc] = rng.lognormal(np.log(180.0), 0.6, int(mc.sum()))
        slow = kind == _SLOW
        fcat[slow] = self._rare[cust[rows[slow]], rng.integers(0, 4, int(slow.sum()))]
        famt[slow] = self._typical[cust[rows[slow]]] * rng.lognormal(0.0, 0.3, int(slow.sum()))
        cat[rows], amount[rows] = fcat, famt
        fgroup = fcat * (nc + 1) + np.where(_ONLINE[fcat], nc, fcity)
        merchant[rows] = self._stores.pick(fgroup, rng.random(m))
        # slow fraud stays on an own device 75% of the time; all else is a fraudster's
        own = slow & (rng.random(m) < 0.75)
        fraudster = rows[~own]
        new_phone[rows] = False
        # device column: own devices, new phones h{c}.w{week}, fraudster devices z{id}
        phones = np.flatnonzero(new_phone)
        n_own = len(self._devices)
        dev[phones] = n_own + np.arange(len(phones))
        dev[fraudster] = n_own + len(phones) + np.arange(len(fraudster))
        devices = pa.concat_arrays(
            [
                self._devices,
                _strs("h", cust[phones], phone[phones], seps=(".w",)).cast(pa.string()),
                _strs("z", first_id + first[k[~own]]).cast(pa.string()),
            ]
        )
        # places: a local store's place, else the card holder's (home, trip city, or fraud's)
        lat = np.where(where == self._home[cust], self._home_lat[cust], _CITIES[where, 0])
        lon = np.where(where == self._home[cust], self._home_lon[cust], _CITIES[where, 1])
        lat, lon = lat + rng.normal(0, 0.02, n), lon + rng.normal(0, 0.02, n)
        lat[rows] = _CITIES[fcity, 0] + rng.normal(0, 0.05, m)
        lon[rows] = _CITIES[fcity, 1] + rng.normal(0, 0.05, m)
        local = ~self._m_online[merchant]
        lat[local], lon[local] = self._m_lat[merchant[local]], self._m_lon[merchant[local]]
        arrays = [
            pa.array(np.arange(first_id, first_id + n, dtype=np.int64)),
            pa.array(ts, pa.timestamp("ms")),
            self._customer_ids.take(pa.array(cust)),
            devices.take(pa.array(dev)),
            self._merchant_ids.take(pa.array(merchant)),
            self._categories.take(pa.array(cat)),
            pa.array(np.clip(np.round(amount, 2), 0.01, 25_000.0)),
            pa.array(np.round(lat, 6)),
            pa.array(np.round(lon, 6)),
            pa.array((label >= _CT) & (label <= _SLOW)),
        ]
        batch = pa.RecordBatch.from_arrays(arrays, schema=TRANSACTION_SCHEMA)
        return batch, label, float(u[-1])

    def _incidents(
        self, rng: np.random.Generator, ts: np.ndarray, day: np.ndarray, cust: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Fraud incidents of a chunk: their kind, victim, place, and the rows they take.

        Follow-up events take the first rows at or after the planned times; incidents that
        leave the chunk, have no breach to exploit or collide with another are dropped.
        """
        cfg, n, nc = self.config, len(ts), len(_CITIES)
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
        breach_merchant, breach_city = self._breaches(rng, day[p[mc, 0]])
        fans = self._fans.count(breach_merchant)
        fan = self._fans.start[breach_merchant] + (rng.random(len(fans)) * fans).astype(np.int64)
        victim[mc] = self._fans.order[np.minimum(fan, len(self._fans.order) - 1)] // _FAV
        ok[mc] &= fans > 0
        moved = (kind == _ATO) | ((kind == _CT) & (rng.random(nb) < 0.6))
        city = np.where(moved, (self._home[victim] + rng.integers(1, nc, nb)) % nc, -1)
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

    def _breaches(self, rng: np.random.Generator, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For incidents on days ``d``: a store breached 1-5 days before, its fraud ring's city."""
        seed, nc = self.config.seed, len(_CITIES)
        back = rng.integers(1, 6, len(d))
        j = (rng.random(len(d)) * 2).astype(np.int64)
        bday = d - back
        j = np.where(_unit(seed, 5, bday) < 0.5, j, 0)  # 1-2 breaches a day
        merchant = np.searchsorted(self._breach_cdf, _unit(seed, 6, bday, j), side="right")
        merchant = np.minimum(merchant, len(self._breach_cdf) - 1)
        city = (_hash(seed, 7, bday, j) % np.uint64(nc)).astype(np.int64)
        return merchant, city


def write_alt_transactions(
    path: str | Path, n_events: int, config: AltConfig = AltConfig(), batch_size: int = 100_000
) -> Path:
    """Write ``n_events`` transactions of :class:`AltGenerator` to a Parquet file at ``path``.

    The file replays with ``edgecore replay PATH`` like the repo generator's.
    """
    path = Path(path)
    if path.suffix.lower() != ".parquet":
        raise ConfigError(f"unsupported suffix {path.suffix!r} for {path}: use .parquet")
    with pq.ParquetWriter(path, TRANSACTION_SCHEMA) as pw:
        for batch in AltGenerator(config).batches(n_events, batch_size):
            pw.write_batch(batch)
    return path


class AltGeneratorSource:
    """The alt generator as a resumable source: position p continues the stream at event p.

    >>> src = AltGeneratorSource(AltConfig(n_customers=100), n_events=1000, batch_size=600)
    >>> [(b.num_rows, end) for b, end in src.batches(start=200)]
    [(600, 800), (400, 1200)]
    """

    #: as :class:`actors.fraud.generator.GeneratorSource`: ``n_events`` counts from the
    #: resume position
    contract_exempt: ClassVar[dict[str, str]] = {
        "check_resume": "n_events counts from the resume position, so the stream resumed "
        "at p is longer than the tail"
    }

    def __init__(
        self, config: AltConfig = AltConfig(), n_events: int = 1_000_000, batch_size: int = 50_000
    ) -> None:
        self.config = config
        self.n_events = n_events
        self.batch_size = batch_size
        self.id = f"alt_generator:seed={config.seed}:customers={config.n_customers}"

    def batches(self, start: int = 0) -> Iterator[tuple[pa.Table, int]]:
        pos = start
        gen = AltGenerator(self.config)
        for rb in gen.batches(self.n_events, self.batch_size, first_event_id=start):
            pos += rb.num_rows
            yield pa.Table.from_batches([rb]), pos
