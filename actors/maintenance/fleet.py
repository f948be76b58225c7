"""A synthetic fleet that degrades along several failure modes, for predictive maintenance.

Each device reports temperature, vibration and load every ``interval_ms`` for ``days``.
Healthy devices run daily load cycles (shifts, quieter weekends) under a site's ambient
temperature that swings by day, by season and in multi-day heat waves: none of that is a
failure and none of it should alarm. Some devices degrade, then fail at a recorded time:

* ``bearing_wear``: vibration grows (a power of the time into the degradation), with
  spikes in the last quarter; a little friction heat;
* ``overheating``: the temperature rise per unit load grows (cooling clogs), so the
  device runs hotter *under load* while idle readings stay normal.

Others get a **sensor fault** for a few hours to two days (a stuck or a noisy temperature
or vibration sensor) and then recover: faults are *not* failures. The reading at the
failure carries ``failure=True``; ``condition`` labels every reading with the ground
truth (``healthy``, a failure mode while degrading, ``sensor_stuck``/``sensor_noisy``)
for evaluation only: the app never learns or scores from it.

Every random draw per reading is a counter-based hash of ``(seed, event_id)``, so an
event is a pure function of the config and its id: the stream does not depend on batch
sizes, and a site's stream (``site=``) holds exactly that site's events of the fleet's.
:meth:`FleetConfig.heldout` is a differently-shaped fleet (5-minute readings, other
degradation lengths, gains, noise, load profiles and seasons) to evaluate on.

>>> gen = FleetGenerator(FleetConfig(n_devices=4, days=2, seed=1))
>>> t = pa.Table.from_batches(list(gen.stream(0, 10, batch_size=4)))
>>> t.num_rows, t.schema == FLEET_SCHEMA, t["event_id"].to_pylist()[:3]
(10, True, [0, 1, 2])
>>> gen.n_events == 4 * 2 * 144
True
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from actors.devices.telemetry import _hash
from runtime.errors import ConfigError

FLEET_SCHEMA = pa.schema(
    [
        ("event_id", pa.int64()),
        ("ts", pa.timestamp("ms")),
        ("device_id", pa.string()),
        ("site", pa.string()),
        ("temperature", pa.float64()),
        ("vibration", pa.float64()),
        ("load", pa.float64()),
        ("failure", pa.bool_()),
        ("condition", pa.string()),
    ]
)
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
MODES = ("bearing_wear", "overheating")
CONDITIONS = ("healthy", *MODES, "sensor_stuck", "sensor_noisy")
_CHUNK = 1 << 17  # rows drawn at once: bounds temporaries whatever the batch size
# salts of the per-reading random streams
_T, _V, _L, _SPIKE, _SPIKE_SIZE, _FAULT = range(6)


@dataclass(frozen=True)
class FleetConfig:
    """The fleet and its stream; every random choice derives from ``seed``."""

    n_devices: int = 1_000
    days: float = 21.0
    sites: tuple[str, ...] = ("eu-1", "eu-2")
    interval_ms: int = 10 * 60_000
    seed: int = 7
    start: datetime = datetime(2026, 3, 1, tzinfo=UTC)
    id_prefix: str = "m"
    #: event ids run from here: two fleets in one data folder must not share ids (the
    #: runtime drops an id it already applied as a duplicate)
    first_event_id: int = 0
    failing_share: float = 0.10  # devices that degrade and fail, split over the modes
    fault_share: float = 0.06  # devices with a sensor fault (they do not fail)
    warmup_days: float = 3.0  # no failure before this: devices need a baseline first
    degrade_h: tuple[float, float] = (30.0, 96.0)  # degradation length, uniform
    bearing_gain: tuple[float, float] = (1.2, 2.5)  # vibration x (1 + gain) at failure
    overheat_gain: tuple[float, float] = (0.35, 0.8)  # thermal gain x (1 + gain) at failure
    power: tuple[float, float] = (1.5, 2.5)  # shape of the degradation curve
    fault_h: tuple[float, float] = (6.0, 48.0)  # sensor fault length
    fault_noise: tuple[float, float] = (5.0, 10.0)  # noisy sensor: noise x this
    temp_noise: float = 0.4  # C
    vib_noise: float = 0.05  # relative
    ambient_daily: float = 4.0  # C, amplitude of the day/night swing
    ambient_season: float = 6.0  # C, amplitude of the seasonal swing
    season_days: float = 40.0
    heatwave: float = 5.0  # C, a multi-day heat wave per site
    continuous_share: float = 0.2  # devices on continuous duty (no shifts)

    def __post_init__(self) -> None:
        if self.n_devices < 1 or self.days <= 0 or self.interval_ms < 1000:
            raise ConfigError("n_devices >= 1, days > 0 and interval_ms >= 1000 are required")
        if not self.sites or len(set(self.sites)) != len(self.sites):
            raise ConfigError(f"sites must be distinct and at least one, got {self.sites}")
        if (
            self.failing_share < 0
            or self.fault_share < 0
            or self.failing_share + self.fault_share > 1
        ):
            raise ConfigError("failing_share and fault_share must be >= 0 and sum to <= 1")
        if self.warmup_days < 0:
            raise ConfigError("warmup_days must be >= 0")

    @classmethod
    def heldout(cls, seed: int = 101, **kw: object) -> FleetConfig:
        """A differently-shaped fleet to evaluate on (never tuned on): 5-minute readings,
        shorter and longer degradations, weaker and stronger gains, noisier sensors, more
        continuous duty, a larger seasonal swing, other sites and ids, a later start."""
        base = cls(
            n_devices=600,
            days=14.0,
            sites=("us-1", "us-2", "us-3"),
            interval_ms=5 * 60_000,
            seed=seed,
            start=datetime(2026, 7, 1, tzinfo=UTC),
            id_prefix="h",
            first_event_id=1 << 40,
            failing_share=0.12,
            fault_share=0.08,
            degrade_h=(24.0, 120.0),
            bearing_gain=(0.9, 3.0),
            overheat_gain=(0.3, 1.0),
            power=(1.2, 3.0),
            fault_h=(4.0, 60.0),
            fault_noise=(4.0, 12.0),
            temp_noise=0.6,
            vib_noise=0.07,
            ambient_daily=6.0,
            ambient_season=9.0,
            season_days=25.0,
            heatwave=7.0,
            continuous_share=0.4,
        )
        return replace(base, **kw)  # type: ignore[arg-type]


class FleetGenerator:
    """Readings as record batches of :data:`FLEET_SCHEMA`, in time order (tick by tick)."""

    def __init__(self, config: FleetConfig = FleetConfig()) -> None:
        self.config = cfg = config
        n = cfg.n_devices
        rng = np.random.default_rng([cfg.seed, 11])
        self._start_ms = round(cfg.start.timestamp() * 1000)
        self.ticks = int(cfg.days * DAY_MS // cfg.interval_ms)
        self.n_events = self.ticks * n
        self._phase = rng.integers(0, cfg.interval_ms, n)
        self._by_phase = np.argsort(self._phase, kind="stable")
        n_sites = len(cfg.sites)
        self._site_idx = np.arange(n) % n_sites
        self._sites = pa.array(cfg.sites, pa.string())
        local = pc.utf8_lpad(pc.cast(pa.array(np.arange(n) // n_sites), pa.string()), 5, "0")
        self._ids = pc.binary_join_element_wise(
            f"{cfg.id_prefix}-", self._sites.take(pa.array(self._site_idx)), "-", local, ""
        )
        # per device: operating point and duty
        self._gain = rng.uniform(25.0, 45.0, n)  # C above ambient at full load
        self._vib = rng.lognormal(np.log(2.5), 0.3, n)
        self._base_load = rng.uniform(0.15, 0.35, n)
        self._peak_load = rng.uniform(0.6, 0.95, n)
        self._shift_start = rng.uniform(5.0, 9.0, n)  # hour of day
        self._shift_len = rng.uniform(8.0, 16.0, n)
        self._continuous = rng.uniform(size=n) < cfg.continuous_share
        # per site: ambient
        self._amb = rng.uniform(12.0, 24.0, n_sites)
        self._season_phase = rng.uniform(0, 2 * np.pi, n_sites)
        self._wave_at = rng.uniform(1.0, max(cfg.days - 3.0, 1.5), n_sites) * DAY_MS
        # failures and faults: disjoint sets of devices
        perm = rng.permutation(n)
        k_fail, k_fault = round(n * cfg.failing_share), round(n * cfg.fault_share)
        never = np.iinfo(np.int64).max // 4
        span = cfg.days * DAY_MS
        warm = min(cfg.warmup_days, cfg.days / 2) * DAY_MS  # a short stream: its first half
        self._fails_at = np.full(n, never, np.int64)
        self._mode = np.full(n, -1)
        self._degrade = np.full(n, 1.0)
        self._amp = np.zeros(n)
        self._pow = np.ones(n)
        f = perm[:k_fail]
        self._fails_at[f] = rng.uniform(warm, span, k_fail).astype(np.int64)
        self._mode[f] = np.arange(k_fail) % len(MODES)
        self._degrade[f] = rng.uniform(*cfg.degrade_h, k_fail) * HOUR_MS
        bearing = self._mode == 0
        self._amp[f] = np.where(
            bearing[f],
            rng.uniform(*cfg.bearing_gain, k_fail),
            rng.uniform(*cfg.overheat_gain, k_fail),
        )
        self._pow[f] = rng.uniform(*cfg.power, k_fail)
        q = perm[k_fail : k_fail + k_fault]
        self._fault_kind = np.full(n, -1)  # 0 stuck temp, 1 stuck vib, 2 noisy temp, 3 noisy vib
        self._fault_kind[q] = rng.integers(0, 4, k_fault)
        self._fault_len = np.zeros(n, np.int64)
        self._fault_len[q] = (rng.uniform(*cfg.fault_h, k_fault) * HOUR_MS).astype(np.int64)
        self._fault_at = np.full(n, never, np.int64)
        self._fault_at[q] = rng.uniform(
            warm,
            max(span - self._fault_len[q].max(initial=0), warm + 1),
            k_fault,
        ).astype(np.int64)
        self._fault_noise = rng.uniform(*cfg.fault_noise, n)
        # a stuck sensor repeats its last good reading, noise-free
        t0 = self._fault_at
        self._stuck_temp = self._temp_model(np.arange(n), np.where(t0 < never, t0, 0))
        self._stuck_vib = self._vib[np.arange(n)] * (
            0.5 + 0.5 * self._load_model(np.arange(n), np.where(t0 < never, t0, 0))
        )
        self._salts = _hash(
            np.arange(16, dtype=np.uint64) + np.uint64(cfg.seed) * np.uint64(1 << 20)
        )

    # -- the physics, noise-free -------------------------------------------------------------
    def _ambient(self, dev: np.ndarray, t: np.ndarray) -> np.ndarray:
        cfg, s = self.config, self._site_idx[dev]
        days = t / DAY_MS
        hod = (t % DAY_MS) / HOUR_MS
        wave = np.exp(-0.5 * ((t - self._wave_at[s]) / (0.8 * DAY_MS)) ** 2)
        return (
            self._amb[s]
            + cfg.ambient_season
            * np.sin(2 * np.pi * days / cfg.season_days + self._season_phase[s])
            + cfg.ambient_daily * np.sin(2 * np.pi * (hod - 9.0) / 24.0)
            + cfg.heatwave * wave
        )

    def _load_model(self, dev: np.ndarray, t: np.ndarray) -> np.ndarray:
        hod = (t % DAY_MS) / HOUR_MS
        weekday = ((t // DAY_MS) % 7) < 5
        into = (hod - self._shift_start[dev]) % 24.0
        on = (into < self._shift_len[dev]) & (weekday | (into < 4.0))
        base, peak = self._base_load[dev], self._peak_load[dev]
        return np.where(self._continuous[dev], 0.5 * (base + peak), np.where(on, peak, base))

    def _temp_model(self, dev: np.ndarray, t: np.ndarray) -> np.ndarray:
        return self._ambient(dev, t) + self._gain[dev] * self._load_model(dev, t)

    # -- the fleet -----------------------------------------------------------------------------
    def devices(self) -> pa.Table:
        """Ground truth per device: its failure (mode, time, degradation start) and its sensor
        fault (kind, start, end), null where it has none."""
        fails = self._mode >= 0
        faulty = self._fault_kind >= 0
        ts = lambda ms, mask: pa.array(self._start_ms + ms, pa.int64(), mask=~mask).cast(  # noqa: E731
            pa.timestamp("ms")
        )
        names = np.array(
            ["stuck_temperature", "stuck_vibration", "noisy_temperature", "noisy_vibration"]
        )
        return pa.table(
            {
                "device_id": self._ids,
                "site": self._sites.take(pa.array(self._site_idx)),
                "mode": pa.array(np.array(MODES)[np.maximum(self._mode, 0)], mask=~fails),
                "fails_at": ts(self._fails_at, fails),
                "degrades_from": ts(self._fails_at - self._degrade.astype(np.int64), fails),
                "fault": pa.array(names[np.maximum(self._fault_kind, 0)], mask=~faulty),
                "fault_start": ts(self._fault_at, faulty),
                "fault_end": ts(self._fault_at + self._fault_len, faulty),
            }
        )

    def _roster(self, site: str | None) -> np.ndarray:
        if site is None:
            return np.arange(self.config.n_devices)
        if site not in self.config.sites:
            raise ConfigError(f"unknown site {site!r}; the fleet's sites are {self.config.sites}")
        return np.flatnonzero(self._site_idx[self._by_phase] == self.config.sites.index(site))

    def site_events(self, site: str | None = None) -> int:
        """How many events the whole stream of ``site`` (None: the fleet) holds."""
        return self.ticks * len(self._roster(site))

    def stream(
        self, start: int, n_events: int, batch_size: int = 50_000, site: str | None = None
    ) -> Iterator[pa.RecordBatch]:
        """Events ``start`` .. ``start + n_events - 1`` of the fleet's (or a site's) stream."""
        if n_events < 0 or batch_size < 1 or start < 0:
            raise ConfigError("n_events and start must be >= 0 and batch_size >= 1")
        roster = self._roster(site)
        end = min(start + n_events, self.ticks * len(roster))
        for lo in range(start, end, batch_size):
            hi = min(lo + batch_size, end)
            parts = [self._events(roster, a, min(a + _CHUNK, hi)) for a in range(lo, hi, _CHUNK)]
            yield (
                parts[0]
                if len(parts) == 1
                else pa.Table.from_batches(parts).combine_chunks().to_batches()[0]
            )

    def _uniform(self, ids: np.ndarray, salt: int) -> np.ndarray:
        return (_hash(ids ^ self._salts[salt]) >> np.uint64(11)) * (1.0 / (1 << 53))

    def _normal(self, ids: np.ndarray, salt: int) -> np.ndarray:
        u1, u2 = self._uniform(ids, salt), self._uniform(ids, salt + 8)
        return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)

    def _events(self, roster: np.ndarray, lo: int, hi: int) -> pa.RecordBatch:
        cfg = self.config
        j = np.arange(lo, hi, dtype=np.int64)
        m = len(roster)
        tick, slot = j // m, roster[j % m]
        event_id = cfg.first_event_id + tick * cfg.n_devices + slot
        dev = self._by_phase[slot]
        t = tick * cfg.interval_ms + self._phase[dev]
        ids = (event_id - cfg.first_event_id).astype(np.uint64)

        load = np.clip(self._load_model(dev, t) + 0.04 * self._normal(ids, _L), 0.0, 1.0)
        tau = self._fails_at[dev] - t  # time left to the failure
        into = np.clip(1.0 - tau / self._degrade[dev], 0.0, 1.0) * (tau > 0)
        d = into ** self._pow[dev]
        mode = self._mode[dev]
        bearing, hot = d * (mode == 0), d * (mode == 1)
        gain = self._gain[dev] * (1.0 + self._amp[dev] * hot)
        temp = self._ambient(dev, t) + gain * load + 3.0 * bearing
        temp = temp + cfg.temp_noise * self._normal(ids, _T)
        level = self._vib[dev] * (0.5 + 0.5 * load) * (1.0 + self._amp[dev] * bearing)
        vib = level * (1.0 + cfg.vib_noise * self._normal(ids, _V))
        late = np.clip((into - 0.75) / 0.25, 0.0, 1.0) * (mode == 0)
        spike = self._uniform(ids, _SPIKE) < 0.3 * late
        vib = vib + np.where(spike, level * (1.0 + 2.0 * self._uniform(ids, _SPIKE_SIZE)), 0.0)
        # sensor faults: readings wrong, the device fine
        fk = self._fault_kind[dev]
        in_fault = (t >= self._fault_at[dev]) & (t < self._fault_at[dev] + self._fault_len[dev])
        extra = self._normal(ids, _FAULT) * self._fault_noise[dev]
        temp = np.where(in_fault & (fk == 0), self._stuck_temp[dev], temp)
        vib = np.where(in_fault & (fk == 1), self._stuck_vib[dev], vib)
        temp = np.where(in_fault & (fk == 2), temp + extra * cfg.temp_noise, temp)
        vib = np.where(in_fault & (fk == 3), vib + extra * cfg.vib_noise * level, vib)
        # the failure: the first reading at or after the recorded time
        fail = (tau <= 0) & (tau > -cfg.interval_ms)
        cond = np.where(
            in_fault,
            np.where(fk < 2, 3, 4),
            np.where((tau > 0) & (tau <= self._degrade[dev]) & (mode >= 0), mode + 1, 0),
        )
        arrays = [
            pa.array(event_id),
            pa.array(self._start_ms + t, pa.int64()).cast(pa.timestamp("ms")),
            self._ids.take(pa.array(dev)),
            self._sites.take(pa.array(self._site_idx[dev])),
            pa.array(np.round(temp, 2)),
            pa.array(np.round(np.maximum(vib, 0.0), 3)),
            pa.array(np.round(load, 3)),
            pa.array(fail),
            pa.array(np.array(CONDITIONS, dtype=object)[cond], pa.string()),
        ]
        return pa.RecordBatch.from_arrays(arrays, schema=FLEET_SCHEMA)


class FleetSource:
    """The generator as a resumable source (position = rows of this stream consumed);
    ``site=`` yields that site's readings only, as its edge sees them.

    >>> src = FleetSource(FleetConfig(n_devices=10, days=1), n_events=1000, batch_size=600)
    >>> [(b.num_rows, end) for b, end in src.batches(start=200)]
    [(600, 800), (200, 1000)]
    """

    def __init__(
        self,
        config: FleetConfig = FleetConfig(),
        n_events: int | None = None,
        batch_size: int = 50_000,
        site: str | None = None,
    ) -> None:
        self.config, self.batch_size, self.site = config, batch_size, site
        gen = FleetGenerator(config)
        total = gen.site_events(site)
        self.n_events = total if n_events is None else min(n_events, total)
        self.id = f"fleet:{config.id_prefix}:seed={config.seed}:devices={config.n_devices}" + (
            f":site={site}" if site is not None else ""
        )

    def batches(self, start: int = 0) -> Iterator[tuple[pa.Table, int]]:
        gen = FleetGenerator(self.config)
        pos = start
        for rb in gen.stream(start, max(0, self.n_events - start), self.batch_size, self.site):
            pos += rb.num_rows
            yield pa.Table.from_batches([rb]), pos
