"""A small metrics registry: counters, gauges and histograms with labels, in memory.

:class:`Registry` renders the Prometheus text exposition format 0.0.4 (what
``edgecore serve --metrics`` answers on ``GET /metrics``) and a JSON-able snapshot of
the same samples (what the status board carries under ``"metrics"``). With
``mirror_ray=True`` it also copies its figures into :mod:`ray.util.metrics` when the
process runs inside Ray (see :mod:`runtime.observe.raymirror`), so they reach Ray's own
Prometheus endpoint as well.

Why not ``prometheus_client``: it comes with Ray's optional dependencies only, keeps a
process-global registry (several runtimes in one test process would collide), and the
snapshot for the status board would need a second walk anyway. The format is small.

>>> reg = Registry()
>>> events = reg.counter("edgecore_events_total", "Events by outcome.", ["outcome"])
>>> events.inc(3, outcome="accepted")
>>> print(reg.render(), end="")
# HELP edgecore_events_total Events by outcome.
# TYPE edgecore_events_total counter
edgecore_events_total{outcome="accepted"} 3
>>> reg.snapshot()["families"][0]["samples"]
[{'name': 'edgecore_events_total', 'labels': {'outcome': 'accepted'}, 'value': 3.0}]
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
#: seconds: from a millisecond to a minute (checkpoints, latencies)
DEFAULT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: label sets kept per family at most: a label fed by input must not grow memory
MAX_SERIES = 10_000
OVERFLOW = "_other"


def format_value(value: float) -> str:
    """A sample value as Prometheus writes it (``+Inf``, ``NaN``; integers without ``.0``).

    >>> format_value(3.0), format_value(0.25), format_value(float("inf"))
    ('3', '0.25', '+Inf')
    """
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def escape_label(value: str) -> str:
    r"""A label value as the text format quotes it.

    >>> escape_label('a"b\\c\nd')
    'a\\"b\\\\c\\nd'
    """
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


class Family:
    """One metric name with its label names; values per label set (thread-safe)."""

    kind = "untyped"

    def __init__(self, registry: Registry, name: str, help: str, labelnames: Sequence[str]) -> None:
        if not NAME_RE.match(name):
            raise ValueError(f"metric name {name!r} is not a valid Prometheus name")
        for label in labelnames:
            if not LABEL_RE.match(label) or label.startswith("__") or label == "le":
                raise ValueError(f"metric {name}: label name {label!r} is not allowed")
        self.registry, self.name, self.help = registry, name, help
        self.labelnames = tuple(labelnames)
        self._lock = registry.lock
        self._values: dict[tuple[str, ...], Any] = {}

    def _key(self, labels: dict[str, Any]) -> tuple[str, ...]:
        if len(labels) != len(self.labelnames) or set(labels) != set(self.labelnames):
            raise ValueError(f"metric {self.name} takes labels {list(self.labelnames)}")
        key = tuple(str(labels[n]) for n in self.labelnames)
        if key not in self._values and len(self._values) >= MAX_SERIES:
            key = tuple(OVERFLOW for _ in self.labelnames)  # bounded, and still counted
        return key

    def clear(self) -> None:
        """Forget every label set (e.g. the shards of a runtime that restarted)."""
        with self._lock:
            self._values.clear()

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        """(sample name, labels, value), as the text format lists them."""
        with self._lock:
            items = sorted(self._values.items())
        return [
            (self.name, dict(zip(self.labelnames, key, strict=True)), float(v)) for key, v in items
        ]


class Counter(Family):
    """Only goes up: ``inc(n, **labels)``."""

    kind = "counter"

    def inc(self, amount: float = 1.0, **labels: Any) -> None:
        if amount < 0:
            raise ValueError(f"counter {self.name} cannot go down (inc by {amount})")
        with self._lock:
            key = self._key(labels)
            self._values[key] = self._values.get(key, 0.0) + amount

    def set_total(self, value: float, **labels: Any) -> None:
        """Mirror a cumulative figure kept elsewhere (e.g. a run's counts). It goes down
        only when that figure is rolled back (a restart from a checkpoint), which
        Prometheus reads as a counter reset."""
        with self._lock:
            self._values[self._key(labels)] = float(value)

    def value(self, **labels: Any) -> float:
        with self._lock:
            return float(self._values.get(self._key(labels), 0.0))


class Gauge(Family):
    """Goes up and down: ``set(v, **labels)``."""

    kind = "gauge"

    def set(self, value: float, **labels: Any) -> None:
        with self._lock:
            self._values[self._key(labels)] = float(value)

    def value(self, **labels: Any) -> float:
        with self._lock:
            return float(self._values.get(self._key(labels), 0.0))


class Histogram(Family):
    """Observations in cumulative buckets: ``observe(v, **labels)``."""

    kind = "histogram"

    def __init__(
        self,
        registry: Registry,
        name: str,
        help: str,
        labelnames: Sequence[str],
        buckets: Iterable[float] = DEFAULT_BUCKETS,
    ) -> None:
        super().__init__(registry, name, help, labelnames)
        bounds = sorted(float(b) for b in buckets if not math.isinf(b))
        if not bounds or len(set(bounds)) != len(bounds):
            raise ValueError(f"histogram {name}: buckets must be distinct numbers")
        self.buckets = (*bounds, math.inf)

    def observe(self, value: float, **labels: Any) -> None:
        with self._lock:
            key = self._key(labels)
            cell = self._values.get(key)
            if cell is None:
                cell = self._values[key] = [[0] * len(self.buckets), 0.0, 0]
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    cell[0][i] += 1
                    break
            cell[1] += value
            cell[2] += 1
            if self.registry.mirror is not None:
                self.registry.mirror.observed(self, key, value)

    def count(self, **labels: Any) -> int:
        with self._lock:
            cell = self._values.get(self._key(labels))
            return 0 if cell is None else int(cell[2])

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        with self._lock:
            items = sorted((k, ([*v[0]], v[1], v[2])) for k, v in self._values.items())
        out: list[tuple[str, dict[str, str], float]] = []
        for key, (counts, total, n) in items:
            labels = dict(zip(self.labelnames, key, strict=True))
            running = 0
            for bound, c in zip(self.buckets, counts, strict=True):
                running += c
                le = "+Inf" if math.isinf(bound) else format_value(bound)
                out.append((f"{self.name}_bucket", {**labels, "le": le}, float(running)))
            out.append((f"{self.name}_sum", labels, float(total)))
            out.append((f"{self.name}_count", labels, float(n)))
        return out


class Registry:
    """The metric families of one process (a run's driver, or a test)."""

    def __init__(self, mirror_ray: bool = False) -> None:
        self.lock = threading.RLock()
        self.families: dict[str, Family] = {}
        self.mirror = None
        if mirror_ray:
            from runtime.observe.raymirror import RayMirror

            self.mirror = RayMirror(self)

    def _add(self, family: Family) -> Any:
        with self.lock:
            old = self.families.get(family.name)
            if old is not None:
                if type(old) is not type(family) or old.labelnames != family.labelnames:
                    raise ValueError(f"metric {family.name} is already registered differently")
                return old
            self.families[family.name] = family
            return family

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        return self._add(Counter(self, name, help, labelnames))

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        return self._add(Gauge(self, name, help, labelnames))

    def histogram(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        buckets: Iterable[float] = DEFAULT_BUCKETS,
    ) -> Histogram:
        return self._add(Histogram(self, name, help, labelnames, buckets))

    def render(self) -> str:
        """Every family in the Prometheus text exposition format, version 0.0.4."""
        lines: list[str] = []
        for fam in self._sorted():
            lines.append(f"# HELP {fam.name} {escape_help(fam.help)}")
            lines.append(f"# TYPE {fam.name} {fam.kind}")
            for name, labels, value in fam.samples():
                if labels:
                    inner = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items())
                    lines.append(f"{name}{{{inner}}} {format_value(value)}")
                else:
                    lines.append(f"{name} {format_value(value)}")
        return "\n".join(lines) + "\n" if lines else ""

    def snapshot(self) -> dict[str, Any]:
        """The same samples as :meth:`render`, as JSON-able data (for the status board)."""
        return {
            "time": time.time(),
            "families": [
                {
                    "name": fam.name,
                    "type": fam.kind,
                    "help": fam.help,
                    "samples": [
                        {"name": n, "labels": labels, "value": v} for n, labels, v in fam.samples()
                    ],
                }
                for fam in self._sorted()
            ],
        }

    def sync_ray(self) -> None:
        """Copy what changed since the last call into :mod:`ray.util.metrics` (if mirrored
        and inside Ray); cheap enough for once a second."""
        if self.mirror is not None:
            self.mirror.sync()

    def _sorted(self) -> list[Family]:
        with self.lock:
            return [self.families[k] for k in sorted(self.families)]
