"""Copying figures into :mod:`ray.util.metrics`, so they reach Ray's Prometheus endpoint.

Ray exports a custom metric from every process that records it, through the node's
metrics agent, on the same endpoint as Ray's own metrics (``ray metrics
launch-prometheus``, the dashboard's Grafana panels). It prefixes the name with
``ray_``: ``edgecore_events_total`` here is ``ray_edgecore_events_total`` there, with
Ray's own tags (``SessionName``, ``NodeAddress``, ...) beside ours. A Ray counter gets
``_total`` appended by the exporter, so the ``_total`` of our name is dropped before
it is handed over and the two names agree.

Recording a Ray metric costs microseconds, so nothing here runs per event:
:class:`RayMirror` pushes a registry's changes at most once per :meth:`RayMirror.sync`
(the driver calls it once a second), and :class:`RayCounters` adds up increments in a
plain dict and hands them to Ray at most once a second (per batch or request group
in the actors that use it). Outside Ray both do nothing.

>>> c = RayCounters("edgecore_shard_rows_total", "Rows applied.", ("kind",))
>>> c.add(5, kind="customers")
>>> c.flush()  # not in Ray here: nothing to send, nothing kept
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtime.observe.metrics import Family, Registry

MAX_PENDING = 10_000  # histogram observations kept between two syncs


def in_ray() -> bool:
    """Whether this process runs Ray (a Ray worker, or a Ray runtime's driver). Ray not
    imported is Ray not started: asking does not import it (0.7 s in a local run)."""
    ray = sys.modules.get("ray")
    return ray is not None and bool(ray.is_initialized())


def ray_name(name: str, kind: str) -> str:
    """The name handed to Ray (its exporter appends ``_total`` to a counter)."""
    return name[: -len("_total")] if kind == "counter" and name.endswith("_total") else name


def make_ray_metric(
    name: str, kind: str, help: str, tag_keys: tuple[str, ...], buckets: Any = None
):
    from ray.util import metrics

    rname, keys = ray_name(name, kind), tuple(tag_keys)
    if kind == "counter":
        return metrics.Counter(rname, description=help, tag_keys=keys)
    if kind == "gauge":
        return metrics.Gauge(rname, description=help, tag_keys=keys)
    return metrics.Histogram(rname, description=help, boundaries=list(buckets), tag_keys=keys)


class RayMirror:
    """A registry's families as Ray metrics, created on first sync inside Ray."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._ray: dict[str, Any] = {}
        self._sent: dict[tuple[str, tuple[str, ...]], float] = {}
        self._pending: list[tuple[Family, tuple[str, ...], float]] = []

    def observed(self, family: Family, key: tuple[str, ...], value: float) -> None:
        if len(self._pending) < MAX_PENDING:
            self._pending.append((family, key, value))

    def _metric(self, fam: Family) -> Any:
        m = self._ray.get(fam.name)
        if m is None:
            buckets = getattr(fam, "buckets", (1.0,))
            m = self._ray[fam.name] = make_ray_metric(
                fam.name,
                fam.kind,
                fam.help,
                fam.labelnames,
                [b for b in buckets if b != float("inf")],
            )
        return m

    def sync(self) -> None:
        if not in_ray():
            self._pending = []
            return
        reg = self.registry
        with reg.lock:
            families = list(reg.families.values())
            pending, self._pending = self._pending, []
            values = {f.name: dict(f._values) for f in families if f.kind != "histogram"}
        for fam in families:
            if fam.kind == "histogram":
                continue
            metric = self._metric(fam)
            for key, value in values[fam.name].items():
                tags = dict(zip(fam.labelnames, key, strict=True))
                if fam.kind == "gauge":
                    metric.set(float(value), tags=tags or None)
                    continue
                delta = float(value) - self._sent.get((fam.name, key), 0.0)
                if delta > 0:
                    metric.inc(delta, tags=tags or None)
                    self._sent[(fam.name, key)] = float(value)
        for fam, key, value in pending:
            self._metric(fam).observe(
                value, tags=dict(zip(fam.labelnames, key, strict=True)) or None
            )


class RayCounters:
    """Counter increments added up here and handed to Ray at most every ``every_s``."""

    def __init__(
        self, name: str, help: str, tag_keys: tuple[str, ...], every_s: float = 1.0
    ) -> None:
        self.name, self.help, self.tag_keys, self.every_s = name, help, tuple(tag_keys), every_s
        self._metric: Any = None
        self._acc: dict[tuple[str, ...], float] = {}
        self._flushed = time.monotonic()

    def add(self, amount: float, **tags: Any) -> None:
        key = tuple(str(tags[k]) for k in self.tag_keys)
        self._acc[key] = self._acc.get(key, 0.0) + amount
        if time.monotonic() - self._flushed >= self.every_s:
            self.flush()

    def flush(self) -> None:
        self._flushed = time.monotonic()
        acc, self._acc = self._acc, {}
        if not acc or not in_ray():
            return
        if self._metric is None:
            self._metric = make_ray_metric(self.name, "counter", self.help, self.tag_keys)
        for key, amount in acc.items():
            if amount > 0:
                self._metric.inc(amount, tags=dict(zip(self.tag_keys, key, strict=True)) or None)
