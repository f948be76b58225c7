"""Deterministic, vectorized synthetic device telemetry for predictive maintenance.

A fixed fleet is drawn once from the seed: each device belongs to one site
(ids like ``d-eu-1-00042``), has its own operating point (temperature,
vibration, pressure) and a fixed phase inside the reporting interval. Every
``readings_interval_ms`` each device sends one reading; the stream interleaves
the fleet in time order (tick by tick, devices ordered by phase), so the event
at stream index ``i`` is device ``i % n`` of tick ``i // n``.

A share of devices (``failing_share``) fails once, at a time drawn uniformly in
the first ``horizon_ms`` of the stream. Over its last ``degrade_ms`` before that,
its temperature and vibration drift up (quadratically, so most of it comes
late); in the last ``warning_ms`` it also throws vibration spikes (and fewer
temperature jumps) that grow more frequent as the failure nears, as wearing
bearings do. ``failure`` is True on readings taken within ``warning_ms`` (one
hour) before the failure. After it the device is repaired and healthy again.
Healthy devices are stationary with Gaussian sensor noise.

All per-reading randomness is a counter-based hash of ``(seed, event_id)``: an
event is a pure function of the config and its id. So the stream does not
depend on ``batch_size``, a source resumed at position p yields exactly the
events it would have yielded, and one site's stream (``site=``) holds exactly
that site's events of the whole stream, with the same ids.

>>> gen = TelemetryGenerator(TelemetryConfig(n_devices=4, sites=("eu-1", "eu-2")))
>>> t = pa.Table.from_batches(list(gen.batches(8, batch_size=5)))
>>> t.num_rows, t.schema == TELEMETRY_SCHEMA, t.column("event_id").to_pylist()
(8, True, [0, 1, 2, 3, 4, 5, 6, 7])
>>> sorted(set(t.column("device_id").to_pylist()))
['d-eu-1-00000', 'd-eu-1-00001', 'd-eu-2-00000', 'd-eu-2-00001']
>>> eu2 = pa.Table.from_batches(list(gen.stream(0, 4, site="eu-2")))
>>> eu2.column("event_id").to_pylist() == [i for i, s in enumerate(t["site"].to_pylist()) if s == "eu-2"]
True
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from runtime.errors import ConfigError

TELEMETRY_SCHEMA = pa.schema(
    [
        ("event_id", pa.int64()),
        ("ts", pa.timestamp("ms")),
        ("device_id", pa.string()),
        ("site", pa.string()),
        ("temperature", pa.float64()),
        ("vibration", pa.float64()),
        ("pressure", pa.float64()),
        ("failure", pa.bool_()),
    ]
)
HOUR_MS = 3_600_000
_MAX_ROWS = 1 << 18  # rows generated at once: bounds the temporaries for huge batch sizes
# independent random streams per event (salts of the counter hash)
_TEMP, _VIB, _PRESS, _SPIKE, _SPIKE_SIZE, _JUMP, _JUMP_SIZE = range(7)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class TelemetryConfig:
    """The fleet and the stream; everything random derives from ``seed``."""

    n_devices: int = 2_000
    sites: tuple[str, ...] = ("eu-1", "eu-2")
    readings_interval_ms: int = 10_000
    failing_share: float = 0.02
    seed: int = 3
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    #: failures fall uniformly in the first horizon of the stream (2M events of 2,000
    #: devices at 10 s span ~2.8 h)
    horizon_ms: int = 3 * HOUR_MS
    #: temperature and vibration drift up over this long before a failure
    degrade_ms: int = 2 * HOUR_MS
    #: spikes, and the ``failure`` label, cover this long before a failure
    warning_ms: int = HOUR_MS
    temp_noise: float = 0.5  # degrees C, sensor noise sd
    vib_noise: float = 0.05  # sd relative to the device's vibration level
    pressure_noise: float = 2.0  # kPa
    temp_rise: float = 12.0  # degrees C of drift at failure
    vib_rise: float = 1.5  # vibration x (1 + vib_rise) at failure
    spike_rate: float = 0.3  # chance of a vibration spike per reading right before failure

    def __post_init__(self) -> None:
        if self.n_devices < 1:
            raise ConfigError(f"n_devices must be at least 1, got {self.n_devices}")
        if not self.sites or len(set(self.sites)) != len(self.sites):
            raise ConfigError(f"sites must be distinct and at least one, got {self.sites}")
        if self.readings_interval_ms < 1:
            raise ConfigError("readings_interval_ms must be at least 1")
        if not 0.0 <= self.failing_share <= 1.0:
            raise ConfigError(f"failing_share must be in [0, 1], got {self.failing_share}")
        if min(self.horizon_ms, self.degrade_ms, self.warning_ms) <= 0:
            raise ConfigError("horizon_ms, degrade_ms and warning_ms must be positive")


def _hash(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijective, well-mixed uint64 -> uint64 map, vectorized."""
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class TelemetryGenerator:
    """Synthetic readings as Arrow record batches of :data:`TELEMETRY_SCHEMA`."""

    def __init__(self, config: TelemetryConfig = TelemetryConfig()) -> None:
        self.config = cfg = config
        n = cfg.n_devices
        rng = np.random.default_rng([cfg.seed, 0])
        start = cfg.start if cfg.start.tzinfo else cfg.start.replace(tzinfo=UTC)
        self._start_ms = round(start.timestamp() * 1000)
        self._phase = rng.integers(0, cfg.readings_interval_ms, n)
        self._temp = rng.uniform(35.0, 75.0, n)
        self._vib = rng.lognormal(np.log(2.5), 0.3, n)  # mm/s RMS
        self._press = rng.uniform(150.0, 450.0, n)  # kPa
        k = round(n * cfg.failing_share)
        self._fails_at = np.full(n, np.iinfo(np.int64).max // 4)  # ms after start
        self._fails_at[rng.permutation(n)[:k]] = rng.integers(0, cfg.horizon_ms, k)
        # devices go round-robin over the sites; numbered within their site
        n_sites = len(cfg.sites)
        self._site_idx = np.arange(n) % n_sites
        self._sites = pa.array(cfg.sites, pa.string())
        local = pc.utf8_lpad(pc.cast(pa.array(np.arange(n) // n_sites), pa.string()), 5, "0")
        self._device_ids = pc.binary_join_element_wise(
            "d-", self._sites.take(pa.array(self._site_idx)), "-", local, ""
        )
        # within a tick devices report in phase order: slot -> device
        self._by_phase = np.argsort(self._phase, kind="stable")
        self._salts = _hash(
            np.arange(16, dtype=np.uint64) + np.uint64(cfg.seed) * np.uint64(1 << 20)
        )

    # -- the fleet ---------------------------------------------------------------------------
    def devices(self) -> pa.Table:
        """One row per device: id, site, and when it fails (null if it never does)."""
        failing = self._fails_at < self.config.horizon_ms
        fails = np.where(failing, self._start_ms + self._fails_at, 0)
        return pa.table(
            {
                "device_id": self._device_ids,
                "site": self._sites.take(pa.array(self._site_idx)),
                "fails_at": pa.array(fails, pa.int64(), mask=~failing).cast(pa.timestamp("ms")),
            }
        )

    def _roster(self, site: str | None) -> np.ndarray:
        """The slots (positions within a tick) whose events make up the stream."""
        if site is None:
            return np.arange(self.config.n_devices)
        if site not in self.config.sites:
            raise ConfigError(f"unknown site {site!r}; the fleet's sites are {self.config.sites}")
        s = self.config.sites.index(site)
        return np.flatnonzero(self._site_idx[self._by_phase] == s)

    # -- the stream ----------------------------------------------------------------------------
    def batches(
        self, n_events: int, batch_size: int = 50_000, first_event_id: int = 0
    ) -> Iterator[pa.RecordBatch]:
        """Yield ``n_events`` events of the whole fleet from ``first_event_id`` on, in batches
        of ``batch_size`` (the last may be shorter). Ids run consecutively; ``ts`` never
        decreases."""
        yield from self.stream(first_event_id, n_events, batch_size)

    def stream(
        self, start: int, n_events: int, batch_size: int = 50_000, site: str | None = None
    ) -> Iterator[pa.RecordBatch]:
        """Events ``start`` .. ``start + n_events - 1`` of the fleet's stream, or of one
        site's stream (``site=``; its events keep their fleet-wide ids)."""
        if n_events < 0 or batch_size < 1 or start < 0:
            raise ConfigError("n_events and start must be >= 0 and batch_size >= 1")
        roster = self._roster(site)
        end = start + n_events
        for lo in range(start, end, batch_size):
            hi = min(lo + batch_size, end)
            parts = [
                self._events(roster, a, min(a + _MAX_ROWS, hi)) for a in range(lo, hi, _MAX_ROWS)
            ]
            if len(parts) == 1:
                yield parts[0]
            else:
                yield pa.Table.from_batches(parts).combine_chunks().to_batches()[0]

    def _uniform(self, ids: np.ndarray, stream: int) -> np.ndarray:
        """Uniform [0, 1) draws, one per event id, independent across ``stream``s."""
        return (_hash(ids ^ self._salts[stream]) >> np.uint64(11)) * (1.0 / (1 << 53))

    def _normal(self, ids: np.ndarray, stream: int) -> np.ndarray:
        """Standard normal draws by Box-Muller from two hashed uniforms."""
        u1 = self._uniform(ids, stream)
        u2 = self._uniform(ids, stream + 8)
        return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)

    def _events(self, roster: np.ndarray, lo: int, hi: int) -> pa.RecordBatch:
        cfg = self.config
        j = np.arange(lo, hi, dtype=np.int64)
        m = len(roster)
        tick, k = j // m, j % m
        slot = roster[k]
        event_id = tick * cfg.n_devices + slot
        dev = self._by_phase[slot]
        t_rel = tick * cfg.readings_interval_ms + self._phase[dev]
        ids = event_id.astype(np.uint64)

        # degradation: tau = time left to the failure (<= 0: failed and repaired)
        tau = self._fails_at[dev] - t_rel
        drift = np.where(tau > 0, np.clip(1.0 - tau / cfg.degrade_ms, 0.0, 1.0), 0.0) ** 2
        warn = (tau > 0) & (tau <= cfg.warning_ms)
        closeness = np.where(warn, 1.0 - tau / cfg.warning_ms, 0.0)  # 0 -> 1 up to the failure
        vib_level = self._vib[dev] * (1.0 + cfg.vib_rise * drift)
        temp = self._temp[dev] + cfg.temp_rise * drift + cfg.temp_noise * self._normal(ids, _TEMP)
        vib = vib_level * (1.0 + cfg.vib_noise * self._normal(ids, _VIB))
        spike = self._uniform(ids, _SPIKE) < cfg.spike_rate * closeness
        vib += np.where(spike, vib_level * (1.5 + 3.0 * self._uniform(ids, _SPIKE_SIZE)), 0.0)
        jump = self._uniform(ids, _JUMP) < cfg.spike_rate / 3 * closeness
        temp += np.where(jump, 3.0 + 5.0 * self._uniform(ids, _JUMP_SIZE), 0.0)
        press = self._press[dev] * (1.0 - 0.05 * drift) + cfg.pressure_noise * self._normal(
            ids, _PRESS
        )
        site = self._site_idx[dev]
        arrays = [
            pa.array(event_id),
            pa.array(self._start_ms + t_rel, pa.int64()).cast(pa.timestamp("ms")),
            self._device_ids.take(pa.array(dev)),
            self._sites.take(pa.array(site)),
            pa.array(np.round(temp, 2)),
            pa.array(np.round(np.maximum(vib, 0.0), 3)),
            pa.array(np.round(np.maximum(press, 0.0), 1)),
            pa.array(warn),
        ]
        return pa.RecordBatch.from_arrays(arrays, schema=TELEMETRY_SCHEMA)


class TelemetrySource:
    """The generator as a resumable source; position = rows of this stream consumed.

    With ``site=`` it yields only that site's readings: the stream an edge node of that
    site sees. Each site's stream is a separate source with its own ``id``.

    >>> cfg = TelemetryConfig(n_devices=10)
    >>> src = TelemetrySource(cfg, n_events=1000, batch_size=600)
    >>> [(b.num_rows, end) for b, end in src.batches(start=200)]
    [(600, 800), (200, 1000)]
    >>> eu1 = TelemetrySource(cfg, n_events=100, batch_size=60, site="eu-1")
    >>> eu1.id, [end for _, end in eu1.batches()]
    ('telemetry:seed=3:devices=10:site=eu-1', [60, 100])
    """

    def __init__(
        self,
        config: TelemetryConfig = TelemetryConfig(),
        n_events: int = 1_000_000,
        batch_size: int = 50_000,
        site: str | None = None,
    ) -> None:
        self.config = config
        self.n_events = n_events
        self.batch_size = batch_size
        self.site = site
        if site is not None and site not in config.sites:
            raise ConfigError(f"unknown site {site!r}; the fleet's sites are {config.sites}")
        self.id = f"telemetry:seed={config.seed}:devices={config.n_devices}" + (
            f":site={site}" if site is not None else ""
        )

    def batches(self, start: int = 0) -> Iterator[tuple[pa.Table, int]]:
        gen = TelemetryGenerator(self.config)
        pos = start
        n = max(0, self.n_events - start)
        for rb in gen.stream(start, n, self.batch_size, site=self.site):
            pos += rb.num_rows
            yield pa.Table.from_batches([rb]), pos
