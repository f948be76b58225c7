"""The repo generator's world and event stream: a deterministic, vectorized synthetic
card-transaction stream for the fraud application (re-exported by
:mod:`actors.fraud.generator`, which adds the file writers and the resumable source).

A fixed world (customers with home locations, typical amounts, devices and preferred
categories; merchants) is drawn once from the seed. Events are then drawn in fixed
internal chunks of ``2**16`` rows, each from its own seeded RNG, and re-sliced into the
requested batch size, so the output depends only on the config, ``n_events`` and
``first_event_id`` (not on ``batch_size``). No per-event Python code runs: customer
choice, amounts, locations, fraud injection and even id strings are numpy/pyarrow ops.

Injected fraud (``is_fraud=True``, about ``fraud_rate`` of the events) mixes three patterns:
(a) 8-30x the customer's typical amount on a never-seen device ``dx{event_id}``;
(b) a location in a city more than 1500 km from home, on a new device;
(c) a burst of 3-5 events of one customer within 60 s on one new device ``dx{first id}``.

Concept drift (``drift_at``: the event id where it starts; ``None``, the default, leaves
the stream exactly as without drift, and events before ``drift_at`` are always those of
the stream without drift):

* ``drift="new_pattern"``: a new fraud pattern that the old signals barely show, at
  ``NEW_PATTERN_RATE`` of ``fraud_rate``: 1.5-3x the customer's typical amount at one of
  five compromised merchants (:attr:`TxnGenerator.compromised_merchants`), on the
  customer's own device, at home. The old patterns become rarer: only ``OLD_KEPT`` of
  them remain (the others are the customer's normal events).
* ``drift="habits"``: legitimate habits shift: normal amounts scale by 1.8, 6% of normal
  events are travel to a far city (own device), and every customer has a new phone
  ``dn{customer}`` used for 40% of their normal events. Fraud stays as it was; a model
  trained before raises false alarms.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from runtime.errors import ConfigError
from runtime.streams.sources import rebatch

TRANSACTION_SCHEMA = pa.schema(
    [
        ("event_id", pa.int64()),
        ("ts", pa.timestamp("ms")),
        ("customer_id", pa.string()),
        ("device_id", pa.string()),
        ("merchant_id", pa.string()),
        ("category", pa.string()),
        ("amount", pa.float64()),
        ("lat", pa.float64()),
        ("lon", pa.float64()),
        ("is_fraud", pa.bool_()),
    ]
)

# fmt: off
_CITIES = np.array([  # lat, lon: 12 in Europe, 8 in North America
    (51.507, -0.128), (48.857, 2.352), (52.520, 13.405), (40.417, -3.704), (41.902, 12.496),
    (52.368, 4.904), (59.329, 18.069), (52.230, 21.012), (48.208, 16.373), (38.722, -9.139),
    (53.350, -6.260), (37.984, 23.728), (40.713, -74.006), (34.052, -118.244), (41.878, -87.630),
    (43.653, -79.383), (25.762, -80.192), (47.606, -122.332), (19.433, -99.133), (45.502, -73.567),
])
CATEGORIES = (
    "grocery", "fuel", "restaurants", "travel", "electronics", "clothing",
    "pharmacy", "entertainment", "utilities", "online_retail", "home_garden", "jewelry",
)
# fmt: on
_CHUNK = 1 << 16  # internal generation unit; fixes the RNG streams independently of batch_size
_FAR_KM = 1500.0  # pattern (b) cities are at least this far from the customer's home city
_BURST_WINDOW_MS = 60_000
DRIFTS = ("new_pattern", "habits")
NEW_PATTERN_RATE = 0.8  # new-pattern fraud events per fraud_rate, after drift_at
OLD_KEPT = 0.35  # share of the old patterns' fraud events left after drift_at


def _haversine_km(
    lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray
) -> np.ndarray:
    p1, p2, dl = np.radians(lat1), np.radians(lat2), np.radians(lon2 - lon1)
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * 6371.0 * np.arcsin(np.sqrt(a))


def _ids(prefix: str, *parts: np.ndarray, sep: str = "_") -> pa.Array:
    """``prefix`` + parts joined by ``sep``, e.g. ``_ids("d", [3], [1]) -> ["d3_1"]``, vectorized."""
    strs = [pc.cast(pa.array(p), pa.string()) for p in parts]
    joined = strs[0] if len(strs) == 1 else pc.binary_join_element_wise(*strs, sep)
    return pc.binary_join_element_wise(prefix, joined, "")


@dataclass(frozen=True)
class TxnGeneratorConfig:
    """The world and stream parameters; everything random derives from ``seed``."""

    n_customers: int = 10_000
    n_merchants: int = 2_000
    fraud_rate: float = 0.005  # share of events that are injected fraud
    zipf_exponent: float = 1.1  # per-customer activity weight 1/(rank + offset)**s, ranks shuffled
    # Zipf-Mandelbrot offset; default n_customers/100. Without it the busiest customer
    # of 100k would make 1 in 8 of all purchases - a bot, not a card holder.
    zipf_offset: float | None = None
    # mean time between consecutive events of the whole stream; default: one purchase
    # per customer every `customer_interval_ms` on average
    mean_gap_ms: float | None = None
    customer_interval_ms: float = 2 * 3600 * 1000
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    seed: int = 7
    drift_at: int | None = None  # event id where concept drift starts; None: no drift
    drift: str = "new_pattern"  # one of DRIFTS, see the module docstring

    def __post_init__(self) -> None:
        if self.drift not in DRIFTS:
            raise ConfigError(f"drift must be one of {DRIFTS}, got {self.drift!r}")
        if self.n_customers < 1 or self.n_merchants < 1:
            raise ConfigError("n_customers and n_merchants must be at least 1")
        if not 0.0 <= self.fraud_rate <= 1.0:
            raise ConfigError(f"fraud_rate must be in [0, 1], got {self.fraud_rate}")
        if self.mean_gap_ms is None:
            object.__setattr__(self, "mean_gap_ms", self.customer_interval_ms / self.n_customers)
        if self.zipf_offset is None:
            object.__setattr__(self, "zipf_offset", max(1.0, self.n_customers / 100))
        if self.zipf_exponent < 0 or self.mean_gap_ms <= 0 or self.zipf_offset < 1:
            raise ConfigError("zipf_exponent must be >= 0 and mean_gap_ms > 0")


class TxnGenerator:
    """Synthetic card transactions as Arrow record batches of :data:`TRANSACTION_SCHEMA`.

    >>> gen = TxnGenerator(TxnGeneratorConfig(n_customers=500, n_merchants=50))
    >>> batches = list(gen.batches(1000, batch_size=400))
    >>> [b.num_rows for b in batches], batches[0].schema == TRANSACTION_SCHEMA
    ([400, 400, 200], True)
    >>> batches[0].column("event_id")[0].as_py(), batches[-1].column("event_id")[-1].as_py()
    (0, 999)
    """

    def __init__(self, config: TxnGeneratorConfig = TxnGeneratorConfig()) -> None:
        self.config = cfg = config
        rng = np.random.default_rng([cfg.seed, 0])
        n = cfg.n_customers
        start = cfg.start if cfg.start.tzinfo else cfg.start.replace(tzinfo=UTC)
        self._start_ms = round(start.timestamp() * 1000)
        # activity: Zipf weights over shuffled ranks -> cumulative distribution for searchsorted
        weights = (rng.permutation(n) + cfg.zipf_offset) ** -cfg.zipf_exponent
        self._cdf = np.cumsum(weights) / weights.sum()
        # home, typical amount
        self._home_city = rng.integers(0, len(_CITIES), n)
        self._home_lat = _CITIES[self._home_city, 0] + rng.normal(0, 0.05, n)
        self._home_lon = _CITIES[self._home_city, 1] + rng.normal(0, 0.05, n)
        self._typical = rng.lognormal(np.log(40.0), 0.9, n)
        # 1-3 own devices d{c}_{k}, flattened with per-customer offsets
        self._n_dev = rng.integers(1, 4, n)
        self._dev_off = np.cumsum(self._n_dev) - self._n_dev
        owner = np.repeat(np.arange(n), self._n_dev)
        self._device_ids = _ids("d", owner, np.arange(len(owner)) - self._dev_off[owner])
        # 2-4 preferred categories: first columns of a random permutation per customer
        self._n_pref = rng.integers(2, 5, n)
        self._pref = np.argsort(rng.random((n, len(CATEGORIES))), axis=1)[:, :4]
        c_lat, c_lon = _CITIES[:, 0], _CITIES[:, 1]
        dist = _haversine_km(c_lat[:, None], c_lon[:, None], c_lat[None, :], c_lon[None, :])
        self._far = dist > _FAR_KM
        self._customer_ids = _ids("c", np.arange(n))
        self._merchant_ids = _ids("m", np.arange(cfg.n_merchants))
        self._categories = pa.array(CATEGORIES, pa.string())
        # drift: a world of its own, drawn from its own RNG so the stream before it is unchanged
        drng = np.random.default_rng([cfg.seed, 3])
        self._compromised = drng.choice(cfg.n_merchants, min(5, cfg.n_merchants), replace=False)

    @property
    def compromised_merchants(self) -> list[str]:
        """Merchant ids of the ``"new_pattern"`` drift's fraud."""
        return self._merchant_ids.take(pa.array(self._compromised)).to_pylist()

    def batches(
        self, n_events: int, batch_size: int = 50_000, first_event_id: int = 0
    ) -> Iterator[pa.RecordBatch]:
        """Yield ``n_events`` events in batches of ``batch_size`` (the last may be shorter).

        ``event_id`` runs consecutively from ``first_event_id``; ``ts`` starts near
        ``config.start`` and never decreases, also across batches.
        """
        if n_events < 0 or batch_size < 1:
            raise ConfigError("n_events must be >= 0 and batch_size >= 1")

        def chunks() -> Iterator[pa.RecordBatch]:
            # a stream continued from first_event_id goes on later in time, with fresh draws
            carry = first_event_id * self.config.mean_gap_ms
            for idx, lo in enumerate(range(0, n_events, _CHUNK)):
                rng = np.random.default_rng([self.config.seed, 1, idx, first_event_id])
                n = min(_CHUNK, n_events - lo)
                chunk, carry = self._chunk(rng, n, carry, first_event_id + lo)
                yield chunk

        yield from rebatch(chunks(), batch_size)

    def _chunk(
        self, rng: np.random.Generator, n: int, carry: float, first_id: int
    ) -> tuple[pa.RecordBatch, float]:
        cfg = self.config
        t = carry + np.cumsum(rng.exponential(cfg.mean_gap_ms, n))
        ts = self._start_ms + t.astype(np.int64)
        cust = np.minimum(
            np.searchsorted(self._cdf, rng.random(n), side="right"), len(self._cdf) - 1
        )
        # fraud incidents: a/b are 1 event, c (burst) 3-5 -> 2 events per incident on average
        pos = rng.choice(n, rng.binomial(n, cfg.fraud_rate / 2), replace=False)
        kind = rng.integers(0, 3, len(pos))
        burst_pos, burst_src = self._bursts(rng, ts, pos[kind == 2])
        cust[burst_pos] = cust[burst_src]
        taken = np.zeros(n, bool)
        taken[burst_pos] = True
        single_ok = (kind < 2) & ~taken[pos]
        a, b = pos[single_ok & (kind == 0)], pos[single_ok & (kind == 1)]
        # normal behaviour of the (final) customer of every event
        dev = self._dev_off[cust] + (rng.random(n) * self._n_dev[cust]).astype(np.int64)
        cat = self._pref[cust, (rng.random(n) * self._n_pref[cust]).astype(np.int64)]
        merchant = rng.integers(0, cfg.n_merchants, n)
        amount = self._typical[cust] * rng.lognormal(0.0, 0.5, n)
        lat = self._home_lat[cust] + rng.normal(0, 0.01, n)
        lon = self._home_lon[cust] + rng.normal(0, 0.01, n)
        drifting = cfg.drift_at is not None and first_id + n > cfg.drift_at
        if drifting:
            normal = {"dev": dev.copy(), "cat": cat.copy(), "amount": amount.copy()}
            normal |= {"lat": lat.copy(), "lon": lon.copy(), "merchant": merchant.copy()}
        # (a) big amount, any category; (b) far city, somewhat raised amount
        amount[a] = self._typical[cust[a]] * rng.uniform(8.0, 30.0, len(a))
        cat[a] = rng.integers(0, len(CATEGORIES), len(a))
        city = (rng.random((len(b), len(_CITIES))) * self._far[self._home_city[cust[b]]]).argmax(1)
        lat[b] = _CITIES[city, 0] + rng.normal(0, 0.05, len(b))
        lon[b] = _CITIES[city, 1] + rng.normal(0, 0.05, len(b))
        amount[b] *= rng.uniform(1.0, 3.0, len(b))
        # all fraud events use a new device, named after the (first) event of the incident
        fraud_pos = np.concatenate([a, b, burst_pos])
        fraud_src = np.concatenate([a, b, burst_src])
        dev[fraud_pos] = len(self._device_ids) + np.arange(len(fraud_pos))
        devices = pa.concat_arrays([self._device_ids, _ids("dx", first_id + fraud_src)])
        is_fraud = np.zeros(n, bool)
        is_fraud[fraud_pos] = True
        if drifting:
            out = {"dev": dev, "cat": cat, "amount": amount, "lat": lat, "lon": lon}
            out |= {"merchant": merchant, "is_fraud": is_fraud}
            new_devices = self._drift(first_id, cust, normal, out, len(devices))
            devices = pa.concat_arrays([devices, new_devices])
        ids = (self._customer_ids, devices, self._merchant_ids, self._categories)
        picks = (cust, dev, merchant, cat)
        amount = np.maximum(np.round(amount, 2), 0.01)
        return transactions(first_id, ts, ids, picks, amount, lat, lon, is_fraud), float(t[-1])

    def _drift(
        self,
        first_id: int,
        cust: np.ndarray,
        normal: dict[str, np.ndarray],
        out: dict[str, np.ndarray],
        n_dev: int,
    ) -> pa.Array:
        """Drift the events from ``drift_at`` on: change ``out`` in place, return new devices.

        ``normal`` holds the events' normal behaviour (before fraud injection), ``out`` the
        columns as emitted (and ``is_fraud``). Draws come from an RNG of their own, seeded
        by the chunk's first event id, so nothing before ``drift_at`` changes.
        """
        cfg, n = self.config, len(cust)
        assert cfg.drift_at is not None
        rng = np.random.default_rng([cfg.seed, 2, first_id])
        after = np.arange(first_id, first_id + n) >= cfg.drift_at
        is_fraud = out["is_fraud"]
        if cfg.drift == "new_pattern":
            # the old patterns become rarer: dropped events are the customer's normal ones
            # (decided per event: a burst may lose some of its events)
            old = np.flatnonzero(after & is_fraud)
            dropped = old[rng.random(len(old)) >= OLD_KEPT]
            for key, values in normal.items():
                out[key][dropped] = values[dropped]
            is_fraud[dropped] = False
            # the new pattern: moderate amounts at a compromised merchant, own device, home
            cand = np.flatnonzero(after & ~is_fraud)
            k = min(len(cand), rng.binomial(int(after.sum()), cfg.fraud_rate * NEW_PATTERN_RATE))
            new = rng.choice(cand, k, replace=False)
            out["merchant"][new] = self._compromised[rng.integers(0, len(self._compromised), k)]
            out["amount"][new] = self._typical[cust[new]] * rng.uniform(1.5, 3.0, k)
            is_fraud[new] = True
            return pa.array([], pa.string())
        legit = np.flatnonzero(after & ~is_fraud)
        out["amount"][legit] *= 1.8
        trip = legit[rng.random(len(legit)) < 0.06]
        far = self._far[self._home_city[cust[trip]]]
        city = (rng.random((len(trip), len(_CITIES))) * far).argmax(1)
        out["lat"][trip] = _CITIES[city, 0] + rng.normal(0, 0.05, len(trip))
        out["lon"][trip] = _CITIES[city, 1] + rng.normal(0, 0.05, len(trip))
        phone = legit[rng.random(len(legit)) < 0.4]
        out["dev"][phone] = n_dev + np.arange(len(phone))
        return _ids("dn", cust[phone])

    @staticmethod
    def _bursts(
        rng: np.random.Generator, ts: np.ndarray, starts: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Positions of burst events and the start position of each one's burst.

        Follow-up events take the first slots at or after start + cumulative 2-12 s steps;
        bursts that leave the chunk, exceed 60 s or collide with another burst are dropped.
        """
        n, nb, steps = len(ts), len(starts), np.arange(5)
        size = rng.integers(3, 6, nb)
        offsets = np.cumsum(rng.uniform(2_000, 12_000, (nb, 4)), axis=1)
        p = np.column_stack([starts, np.searchsorted(ts, ts[starts, None] + offsets)])
        p = np.maximum.accumulate(p - steps, axis=1) + steps  # strictly increasing slots
        last = p[np.arange(nb), size - 1]
        pc_ = np.minimum(p, n - 1)
        ok = (last < n) & (ts[np.minimum(last, n - 1)] - ts[starts] <= _BURST_WINDOW_MS)
        member = (steps < size[:, None]) & ok[:, None]
        counts = np.bincount(pc_[member], minlength=n)
        ok &= ~(member & (counts[pc_] > 1)).any(axis=1)
        member &= ok[:, None]
        return pc_[member], np.broadcast_to(starts[:, None], p.shape)[member]


def transactions(
    first_id: int,
    ts: np.ndarray,
    names: tuple[pa.Array, pa.Array, pa.Array, pa.Array],
    picks: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    amount: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
    is_fraud: np.ndarray,
) -> pa.RecordBatch:
    """A batch in :data:`TRANSACTION_SCHEMA`: consecutive event ids from ``first_id``, the
    customer, device, merchant and category names picked by index, places to 6 decimals."""
    arrays = [
        pa.array(np.arange(first_id, first_id + len(ts), dtype=np.int64)),
        pa.array(ts, pa.timestamp("ms")),
        *(pool.take(pa.array(idx)) for pool, idx in zip(names, picks, strict=True)),
        pa.array(amount),
        pa.array(np.round(lat, 6)),
        pa.array(np.round(lon, 6)),
        pa.array(is_fraud),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=TRANSACTION_SCHEMA)
