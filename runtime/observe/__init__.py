"""Observability: a metrics registry (Prometheus text format and a JSON snapshot), the
metrics of a run, a ``/metrics`` HTTP endpoint, and mirroring into Ray's metrics."""

from runtime.observe.metrics import Counter, Gauge, Histogram, Registry

__all__ = ["Counter", "Gauge", "Histogram", "Registry"]
