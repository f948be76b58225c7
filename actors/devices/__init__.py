"""Predictive maintenance at the edge: device telemetry in, only what matters out to the core.

Each reading is scored against its device's running baseline where the device's site
is (its edge); anomalies go to the ``maintenance`` topic, and per-device window
summaries to ``device_summaries``, so raw readings never cross to the core. Modules:
``kind`` (the ``Device`` entity kind), ``telemetry`` (a synthetic fleet's stream) and
``app`` (the app, its input schema and its demo source).
"""

from actors.devices.app import devices_app

__all__ = ["devices_app"]
