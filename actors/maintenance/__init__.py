"""Predictive maintenance at the edge: per-device failure risk from rolling trend features.

Each device's readings are condensed where they are made (its site's edge) into hourly
windows and trend features, scored by an online classifier learned from observed failures
and an isolation forest fitted at the core on healthy windows; only alarms (with failure
mode, lead-time estimate and top signals), risk changes and summaries cross to the core.
Modules: ``fleet`` (a synthetic degrading fleet), ``features``, ``model`` and ``brain``
(the models and their sync), ``kind`` (the ``Machine`` entity kind), ``outputs`` and
``app``.
"""

from actors.maintenance.app import maintenance_app, make_app

__all__ = ["maintenance_app", "make_app"]
