"""A second, independently designed card-transaction stream: shapes nobody tuned on.

Same output schema as :mod:`actors.fraud.generator` (:data:`TRANSACTION_SCHEMA`), different
world, different habits, different fraud. Ids do not overlap the repo generator's:
customers ``a{n}``, own devices ``h{customer}.{k}``, a customer's new phone
``h{customer}.w{week}``, fraudster devices ``z{event id}``, merchants (stores) ``s{n}``.

Modules: :mod:`actors.fraud.alt_world` holds the world drawn once from the seed (30
cities, 14 categories with their price levels, stores, customers with chronotypes,
tastes, favourite stores, devices and travel habits; the weekly clock) and
:class:`AltConfig`; :mod:`actors.fraud.alt_patterns` the four fraud patterns (card
testing, account takeover, merchant compromise, slow fraud) and :data:`LABELS`; this
module the event stream (:class:`AltGenerator`), :func:`write_alt_transactions` and
:class:`AltGeneratorSource`, and re-exports the public names of the other two.

Time follows a weekly intensity (the sum of the chronotypes' profiles): events are
drawn at a constant rate in a warped clock mapped back through that intensity, and the
customer of an event is drawn given its hour of week (night owls at night).

Legitimate anomalies that look like fraud: travel (a far city's stores for days, label 5),
sale/holiday days (about 1 in 8, hashed from the day) with 5x-splurges on fashion,
electronics and jewelry (label 6), and a new phone for a week and a half (3% of customer
weeks, 6% for families; label 7).

Fraud is ``fraud_rate`` of events (default 1.5%), shares of fraud events by
``pattern_shares`` (see :mod:`actors.fraud.alt_patterns`).

``AltGenerator.labelled_batches`` also yields each event's pattern label (see
:data:`LABELS`); the emitted table is exactly :data:`TRANSACTION_SCHEMA`. Output depends
only on the config, ``n_events`` and ``first_event_id``: events are drawn in fixed
chunks of ``2**16`` rows with their own RNG, and everything that spans chunks (trips,
new phones, holidays, breaches) is a hash of (seed, customer or day, week), not state.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from actors.fraud.alt_patterns import (
    _CT,
    _HOLIDAY,
    _PHONE,
    _SLOW,
    _TRAVEL,
    LABELS,
    fraud_events,
    incidents,
)
from actors.fraud.alt_world import (
    _BIN,
    _CATS,
    _CITIES,
    _DAY,
    _FAV,
    _HOLIDAY_CATS,
    _HOUR,
    _MONDAY_MS,
    _MU,
    _ONLINE,
    _SD,
    _TRIP_CATS,
    _WEEK,
    ALT_CATEGORIES,
    AltConfig,
    AltWorld,
    _hash,
    _strs,
    _unit,
)
from actors.fraud.alt_world import _km as _km  # noqa: F401 (tests use it)
from actors.fraud.generator import GeneratorSource
from actors.fraud.txn_stream import TRANSACTION_SCHEMA, transactions
from runtime.errors import ConfigError

__all__ = [
    "ALT_CATEGORIES",
    "LABELS",
    "TRANSACTION_SCHEMA",
    "AltConfig",
    "AltGenerator",
    "AltGeneratorSource",
    "write_alt_transactions",
]

_CHUNK = 1 << 16


class AltGenerator(AltWorld):
    """Card transactions as Arrow record batches of :data:`TRANSACTION_SCHEMA`.

    The world (:class:`~actors.fraud.alt_world.AltWorld`) is drawn when it is made; its
    batches are the events of that world, with the fraud of :mod:`actors.fraud.alt_patterns`.

    >>> gen = AltGenerator(AltConfig(n_customers=300, seed=1))
    >>> batches = list(gen.batches(1000, batch_size=400))
    >>> [b.num_rows for b in batches], batches[0].schema == TRANSACTION_SCHEMA
    ([400, 400, 200], True)
    >>> batches[0].column("customer_id")[0].as_py()[0]
    'a'
    """

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
        inc = incidents(self, rng, ts, day, cust)
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

        # fraud overrides: what the incidents' rows buy, where and for how much
        f = fraud_events(self, rng, inc, cust, where)
        rows, k, fcity, own = inc["rows"], inc["inc"], f["city"], f["own"]
        m = len(rows)
        label[rows] = f["kind"]
        cat[rows], amount[rows], merchant[rows] = f["cat"], f["amount"], f["merchant"]
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
                _strs("z", first_id + inc["first"][k[~own]]).cast(pa.string()),
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
        batch = transactions(
            first_id,
            ts,
            (self._customer_ids, devices, self._merchant_ids, self._categories),
            (cust, dev, merchant, cat),
            np.clip(np.round(amount, 2), 0.01, 25_000.0),
            lat,
            lon,
            (label >= _CT) & (label <= _SLOW),
        )
        return batch, label, float(u[-1])


def write_alt_transactions(
    path: str | Path,
    n_events: int,
    config: AltConfig = AltConfig(),  # noqa: B008 (frozen)
    batch_size: int = 100_000,
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


class AltGeneratorSource(GeneratorSource):
    """The alt generator as a resumable source: position p continues the stream at event p.

    >>> src = AltGeneratorSource(AltConfig(n_customers=100), n_events=1000, batch_size=600)
    >>> [(b.num_rows, end) for b, end in src.batches(start=200)]
    [(600, 800), (400, 1200)]
    """

    def __init__(
        self,
        config: AltConfig = AltConfig(),  # noqa: B008 (frozen)
        n_events: int = 1_000_000,
        batch_size: int = 50_000,
    ) -> None:
        super().__init__(config, n_events, batch_size)  # type: ignore[arg-type]
        self.id = f"alt_generator:seed={config.seed}:customers={config.n_customers}"

    def _generator(self) -> AltGenerator:  # type: ignore[override]
        return AltGenerator(self.config)  # type: ignore[arg-type]
