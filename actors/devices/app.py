"""The devices app: fleet telemetry in; device state, window summaries and maintenance alerts out.

The readings are validated against :data:`TELEMETRY` and routed to
:class:`~actors.devices.kind.Device` entities in the shards of their site (at its edge).
Their window summaries and alerts are forwarded to :class:`CoreDevice`
at the core through each site's store-and-forward log (:mod:`actors.core_view`), which
publishes them on the core's ``device_summaries`` topic, persisted to ``device_health``,
and ``maintenance``, persisted to ``maintenance`` (upserted by ``event_id``).

>>> devices_app.kind.name, sorted(devices_app.sinks), devices_app.sites
('devices', ['device_summaries', 'maintenance'], ('eu-1', 'eu-2'))
"""

from __future__ import annotations

from typing import Any

from actors.core_view import CoreView, view_state
from actors.devices.kind import Device, DeviceConfig
from actors.devices.telemetry import TelemetryConfig, TelemetrySource
from runtime import App, Column, EventSchema, Paced, RunStats, Source, Stage

MAX_ID_LEN = 128

TELEMETRY = EventSchema(
    "telemetry",
    [
        Column("event_id", "int64", min=0),
        Column("ts", "timestamp"),
        Column("device_id", "string", max_len=MAX_ID_LEN),
        Column("site", "string", max_len=MAX_ID_LEN),
        Column("temperature", "float64", min=-50.0, max=200.0),
        Column("vibration", "float64", min=0.0, max=100.0),
        Column("pressure", "float64", min=0.0, max=1000.0),
        Column("failure", "bool", required=False),
    ],
)

SITES = TelemetryConfig().sites  # the sites of the default synthetic fleet


def summarize(counters: dict[str, float]) -> dict[str, Any]:
    """What crossed edge -> core (summaries, maintenance alerts) against shipping raw readings."""
    raw_rows = int(counters.get("raw_rows", 0))
    raw_bytes = int(counters.get("raw_bytes", 0))
    summaries = int(counters.get("summary_rows", 0))
    alerts = int(counters.get("maintenance_rows", 0))
    crossed_rows = summaries + alerts
    crossed_bytes = int(counters.get("summary_bytes", 0) + counters.get("maintenance_bytes", 0))
    out: dict[str, Any] = {
        "raw_rows": raw_rows,
        "raw_bytes": raw_bytes,
        "summary_rows": summaries,
        "maintenance_rows": alerts,
        "crossed_rows": crossed_rows,
        "crossed_bytes": crossed_bytes,
        "reduction_rows": round(raw_rows / crossed_rows, 2) if crossed_rows else None,
        "reduction_bytes": round(raw_bytes / crossed_bytes, 2) if crossed_bytes else None,
        # readings still in open windows: summarised when their device's next window begins
        "open_rows": raw_rows - int(counters.get("summarized_rows", 0)),
    }
    if counters.get("labelled_rows"):
        out["labelled_rows"] = int(counters["labelled_rows"])
        # share of alerts raised in the hour before a failure
        out["alert_precision"] = (
            round(counters.get("anomalies_labelled", 0) / alerts, 4) if alerts else None
        )
    return out


def report(stats: RunStats) -> dict[str, Any]:
    """What `edgecore` prints about a run: the maintenance alerts and what crossed edge ->
    core against shipping the raw readings."""
    a = stats.app
    return {
        "maintenance_alerts": a.get("maintenance_rows", 0),
        "edge_to_core": {
            "rows": a.get("crossed_rows", 0),
            "bytes": a.get("crossed_bytes", 0),
            "raw_rows": a.get("raw_rows", 0),
            "raw_bytes": a.get("raw_bytes", 0),
        },
        "reduction_rows": a.get("reduction_rows"),
        "reduction_bytes": a.get("reduction_bytes"),
        **{k: a[k] for k in ("labelled_rows", "alert_precision") if k in a},
    }


def demo_source(
    n_events: int,
    rate: float | None = None,
    devices: int = 2_000,
    sites: tuple[str, ...] = SITES,
    site: str | None = None,
) -> Source:
    """Synthetic fleet telemetry, paced to ``rate`` events/s if given; with ``site`` only
    that site's readings (what its edge sees). A second demo in the same data folder
    continues the stream."""
    source = TelemetrySource(TelemetryConfig(n_devices=devices, sites=sites), n_events, site=site)
    return Paced(source, rate) if rate else source


class CoreDevice(CoreView):
    """A device as the core sees it: the summaries and alerts its edge forwarded."""

    name = "core_devices"
    topics = Device.topics
    state = view_state(topics)
    time_columns = {"device_summaries": "window_end", "maintenance": "ts"}


def device_app(config: DeviceConfig | None = None, sites: tuple[str, ...] = SITES) -> App:
    """The device app: telemetry in, device state, window summaries and maintenance alerts out."""
    return App(
        "devices",
        TELEMETRY,
        Device,
        config,
        sinks={
            "device_summaries": ("device_health", None),
            "maintenance": ("maintenance", "event_id"),
        },
        summarize=summarize,
        report=report,
        demo=demo_source,  # takes sites= for site-partitioned apps
        sites=tuple(sites),
        # what crosses to the core goes through each site's store-and-forward log
        stages=(Stage(Device.topics, CoreDevice),),
    )


devices_app = device_app()  # what the `edgecore.apps` entry point names
