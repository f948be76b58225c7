"""The maintenance app: fleet telemetry in; failure risk per device and alarms with lead times out.

Readings are validated against :data:`READINGS` and routed to
:class:`~actors.maintenance.kind.Machine` entities in the shards of their site (its edge).
Their alarms and health rows are forwarded to :class:`CoreMachine` at the core through
each site's store-and-forward log (:mod:`actors.core_view`), which publishes them on the
core's topics: ``maintenance`` (alarms and sensor faults) is upserted into the
``maintenance`` table by ``(event_id, kind)``, ``device_health`` into ``device_health`` by
device: each device's current risk at the core.

>>> app = make_app()
>>> app.name, app.kind.name, sorted(app.sinks), app.sites
('maintenance', 'machines', ['device_health', 'maintenance'], ('eu-1', 'eu-2'))
>>> summarize({"failures": 10, "predicted": 9, "lead_bin_14": 5, "lead_bin_20": 4,
...            "device_hours": 24_000, "false_alarms": 3})["median_lead_time_h"]
14.5
"""

from __future__ import annotations

from typing import Any

import numpy as np

from actors.core_view import CoreView, view_state
from actors.maintenance.fleet import DAY_MS, FleetConfig, FleetSource
from actors.maintenance.kind import Machine, MaintenanceConfig
from runtime import App, Column, EventSchema, Paced, RunStats, Source, Stage

MAX_ID_LEN = 128
READINGS = EventSchema(
    "readings",
    [
        Column("event_id", "int64", min=0),
        Column("ts", "timestamp"),
        Column("device_id", "string", max_len=MAX_ID_LEN),
        Column("site", "string", max_len=MAX_ID_LEN),
        Column("temperature", "float64", min=-60.0, max=400.0),
        Column("vibration", "float64", min=0.0, max=500.0),
        Column("load", "float64", min=0.0, max=1.5),
        Column("failure", "bool", required=False),  # the device failed at this reading
        Column("condition", "string", required=False, max_len=32),  # ground truth, reports only
    ],
)
SITES = FleetConfig().sites
HORIZON_H = MaintenanceConfig().horizon_h


def median_from_bins(counters: dict[str, float]) -> float | None:
    """The median lead time (h) from the per-hour histogram the edges count
    (``lead_bin_<h>``), each bin taken at its middle."""
    bins = {int(k.rsplit("_", 1)[1]): v for k, v in counters.items() if k.startswith("lead_bin_")}
    if not bins:
        return None
    hours = np.array(sorted(bins))
    counts = np.array([bins[h] for h in hours])
    cum = np.cumsum(counts)
    return float(hours[np.searchsorted(cum, cum[-1] / 2.0)] + 0.5)


def _at_most(x: float | None, cap: float) -> float | None:
    return None if x is None else min(x, cap)


def summarize(counters: dict[str, float]) -> dict[str, Any]:
    """Alarms, what crossed to the core, and the edges' own score of their alarms."""
    days = counters.get("device_hours", 0) / 24.0
    failures = int(counters.get("failures", 0))
    out: dict[str, Any] = {
        "failures": failures,
        "predicted": int(counters.get("predicted", 0)),
        # a bin's middle, but never past the horizon (a lead of exactly H is bin H)
        "median_lead_time_h": _at_most(median_from_bins(counters), HORIZON_H),
        "horizon_h": HORIZON_H,
        "false_alarms_per_100_device_days": (
            round(100.0 * counters.get("false_alarms", 0) / days, 3) if days else None
        ),
        "sensor_faults_reported": int(counters.get("sensor_faults_reported", 0)),
        "alarms": int(counters.get("alarms_opened", 0)),
        "alarm_rows": int(counters.get("maintenance_rows", 0)),  # open, update and close
        "sensor_fault_episodes": int(counters.get("sensor_episodes", 0)),
        "sensor_fault_rows": int(counters.get("sensor_rows", 0)),  # open and close
        "device_days": round(days, 1),
        "raw_rows": int(counters.get("raw_rows", 0)),
        "crossed_rows": int(
            counters.get("maintenance_rows", 0)
            + counters.get("sensor_rows", 0)
            + counters.get("health_rows", 0)
        ),
        "failure_windows_learned": int(counters.get("failure_windows_learned", 0)),
    }
    crossed = out["crossed_rows"]
    out["reduction_rows"] = round(out["raw_rows"] / crossed, 1) if crossed else None
    return out


def report(stats: RunStats) -> dict[str, Any]:
    return dict(stats.app)


def demo_source(
    n_events: int,
    rate: float | None = None,
    devices: int = 1_000,
    sites: tuple[str, ...] = SITES,
    site: str | None = None,
) -> Source:
    """A synthetic fleet of up to ``devices`` devices reporting every 10 minutes: as many as
    ``n_events`` give two weeks each (at least 20), so failures, lead times in hours and
    false alarms per device-day mean something. ``site``: that site's readings only."""
    days = 14.0
    per_device = int(days * DAY_MS // FleetConfig().interval_ms)
    n = max(20, min(devices, n_events // per_device))
    cfg = FleetConfig(n_devices=n, sites=tuple(sites), days=max(days, n_events / n / 144 + 0.01))
    source = FleetSource(cfg, n_events, site=site)
    return Paced(source, rate) if rate else source


class CoreMachine(CoreView):
    """A machine as the core sees it: the alarms and health rows its edge forwarded."""

    name = "core_machines"
    topics = Machine.topics
    state = view_state(topics)
    time_columns = {"maintenance": "ts", "device_health": "ts"}


def make_app(config: MaintenanceConfig | None = None, sites: tuple[str, ...] = SITES) -> App:
    """The app with custom alarm settings, serving ``sites``."""
    return App(
        "maintenance",
        READINGS,
        Machine,
        config,
        sinks={
            "maintenance": ("maintenance", ("event_id", "kind")),
            "device_health": ("device_health", "device_id"),
        },
        summarize=summarize,
        report=report,
        demo=demo_source,
        sites=tuple(sites),
        # what crosses to the core goes through each site's store-and-forward log
        stages=(Stage(Machine.topics, CoreMachine),),
    )


maintenance_app = make_app()  # what the `edgecore.apps` entry point names
