"""The alt generator's world: cities, categories, stores, customers, and its clock.

Part of :mod:`actors.fraud.generator_alt` (which holds the event stream, the writer and
the source; its fraud patterns are in :mod:`actors.fraud.alt_patterns`). Drawn once from
the seed by :class:`AltWorld`:

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
drawn at a constant rate in a warped clock (:meth:`AltWorld._warp`) mapped back through
that intensity. Also here: the stateless hashes (:func:`_hash`, :func:`_unit`) that make
everything spanning chunks (trips, new phones, holidays, breaches) chunk-independent,
and :class:`AltConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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
_TRIP_CATS = np.array([_C["dining"], _C["airline_hotel"], _C["transport"], _C["cafe"]])
_HOLIDAY_CATS = np.array([_C["fashion"], _C["electronics"], _C["jewelry"]])

_MIN, _HOUR, _DAY = 60_000, 3_600_000, 86_400_000
_WEEK = 7 * _DAY
_MONDAY_MS = 4 * _DAY  # 1970-01-05, a Monday: weeks and weekdays count from it
_BIN = 15 * _MIN  # resolution of the weekly intensity
_FAV = 6  # favourite stores per customer


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


class AltWorld:
    """The world of :class:`~actors.fraud.generator_alt.AltGenerator`, drawn from ``config.seed``."""

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
