"""The console's arithmetic: rates, latency percentiles and the placement map, from what a
running runtime puts on its status board. Pure functions of plain data (no Ray), so each
is checked on its own.

>>> w = RateWindow()
>>> w.add(10.0, 100); w.add(12.0, 300)
>>> w.rate()
100.0
>>> histogram_quantile(0.5, [(0.01, 0), (0.1, 10), (1.0, 20), (float("inf"), 20)])
0.1
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

#: the counter family the metrics exporter names events by (``edgecore_events_total``)
EVENTS_FAMILY = "edgecore_events_total"


def jsonable(value: Any) -> Any:
    """``value`` with what JSON cannot say made sayable: NaN and infinities become None
    (a browser's JSON.parse refuses them), timestamps and other objects their text.

    >>> jsonable({"a": float("nan"), "b": [1, float("inf")], "c": (2, "x")})
    {'a': None, 'b': [1, None], 'c': [2, 'x']}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return jsonable(value.tolist())
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


class RateWindow:
    """Events/s over the last ``window_s`` seconds, from samples of a growing total.

    A total that goes down (a restart resets counters) starts the window over rather
    than showing a negative rate.

    >>> w = RateWindow(window_s=5)
    >>> w.rate() is None
    True
    >>> for t, n in [(0, 0), (1, 50), (2, 100), (8, 100)]:
    ...     w.add(t, n)
    >>> w.rate()  # nothing in the last 6 s: the service is idle, not unknown
    0.0
    >>> w.add(9, 10)  # counters reset
    >>> w.rate() is None
    True
    """

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self.samples: deque[tuple[float, float]] = deque()

    def add(self, t: float, total: float) -> None:
        if self.samples and t <= self.samples[-1][0]:
            return  # the same board read twice
        if self.samples and total < self.samples[-1][1]:
            self.samples.clear()
        self.samples.append((t, total))
        # keep one sample at or before the window's start, to measure across all of it
        while len(self.samples) > 2 and self.samples[1][0] <= t - self.window_s:
            self.samples.popleft()

    def rate(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, n0), (t1, n1) = self.samples[0], self.samples[-1]
        return (n1 - n0) / (t1 - t0)


def families(board: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The board's metric families by name ({} before the runtime exports any)."""
    metrics = board.get("metrics") or {}
    return {f["name"]: f for f in metrics.get("families", []) if "name" in f}


def total_events(board: dict[str, Any]) -> float | None:
    """Events taken in so far: the events counter's ``input`` samples summed over apps
    when the runtime exports metrics, else the apps' ``input``.

    >>> total_events({"apps": {"fraud": {"input": 7}, "devices": {"input": 3}}})
    10.0
    >>> fam = {"name": EVENTS_FAMILY, "samples": [{"value": 4.0}, {"value": 2.0}]}
    >>> total_events({"metrics": {"families": [fam]}, "apps": {"fraud": {"input": 1}}})
    6.0
    >>> by_outcome = [{"labels": {"app": "fraud", "outcome": o}, "value": v}
    ...               for o, v in [("input", 9.0), ("accepted", 8.0), ("duplicate", 1.0)]]
    >>> total_events({"metrics": {"families": [{"name": EVENTS_FAMILY, "samples": by_outcome}]}})
    9.0
    >>> total_events({}) is None
    True
    """
    fam = families(board).get(EVENTS_FAMILY)
    if fam is not None:
        samples = fam.get("samples", [])
        # outcomes split the input (input = accepted + dead_lettered + ...): count it once
        if any(s.get("labels", {}).get("outcome") == "input" for s in samples):
            samples = [s for s in samples if s.get("labels", {}).get("outcome") == "input"]
        return float(sum(s.get("value", 0.0) for s in samples))
    inputs = [a.get("input") for a in (board.get("apps") or {}).values()]
    inputs = [float(n) for n in inputs if isinstance(n, int | float)]
    return float(sum(inputs)) if inputs else None


#: the stage of the ingest latency histogram shown, first found: to an alert, else applied
LATENCY_STAGES = ("alerts", "maintenance", "offers", "predictions", "applied")


def latency_buckets(board: dict[str, Any]) -> list[tuple[str, dict[float, float]]]:
    """The latency histograms on the board, each as its name and cumulative count per
    upper bound (summed over other labels); [] when the runtime measures none. A histogram
    by ``stage`` (``edgecore_ingest_latency_seconds``) gives one entry per stage, in the
    order of :data:`LATENCY_STAGES` (ingest to an alert first, to applied last).

    >>> fam = {"name": "edgecore_ingest_latency_seconds", "type": "histogram", "samples": [
    ...     {"name": "edgecore_ingest_latency_seconds_bucket", "labels": {"stage": st, "le": le},
    ...      "value": v} for st, le, v in [("applied", "0.01", 5.0), ("applied", "+Inf", 6.0),
    ...                                    ("alerts", "0.01", 1.0), ("alerts", "+Inf", 2.0)]]}
    >>> [name for name, _ in latency_buckets({"metrics": {"families": [fam]}})]
    ['edgecore_ingest_latency_seconds{stage="alerts"}', 'edgecore_ingest_latency_seconds{stage="applied"}']
    >>> latency_buckets({"metrics": {"families": [fam]}})[0][1]
    {0.01: 1.0, inf: 2.0}
    """
    out: list[tuple[str, dict[float, float]]] = []
    for name, fam in sorted(families(board).items()):
        if fam.get("type") != "histogram" or "latency" not in name:
            continue
        samples = fam.get("samples", [])
        stages = {s.get("labels", {}).get("stage") for s in samples} - {None}
        ranked = sorted(stages, key=lambda st: (st not in LATENCY_STAGES, _rank(st), st))
        for stage in ranked or [None]:
            picked = [s for s in samples if s.get("labels", {}).get("stage") == stage]
            buckets = _buckets(picked if stage is not None else samples)
            if buckets:
                out.append((f'{name}{{stage="{stage}"}}' if stage else name, buckets))
    return out


def _rank(stage: str) -> int:
    return LATENCY_STAGES.index(stage) if stage in LATENCY_STAGES else len(LATENCY_STAGES)


def _buckets(samples: list[dict[str, Any]]) -> dict[float, float]:
    buckets: dict[float, float] = {}
    for s in samples:
        if not s.get("name", "").endswith("_bucket"):
            continue
        le = s.get("labels", {}).get("le")
        try:
            bound = float(le)  # "+Inf" parses as inf
        except (TypeError, ValueError):
            continue
        buckets[bound] = buckets.get(bound, 0.0) + float(s.get("value", 0.0))
    return buckets


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of a cumulative histogram (sorted ``(upper bound, count)``),
    interpolated within its bucket as Prometheus does; None with no observations.
    An answer in the ``+Inf`` bucket is the highest finite bound (all that is known).

    >>> b = [(0.005, 0), (0.01, 50), (0.05, 90), (float("inf"), 100)]
    >>> histogram_quantile(0.5, b), histogram_quantile(0.9, b), histogram_quantile(0.99, b)
    (0.01, 0.05, 0.05)
    >>> histogram_quantile(0.5, [(1.0, 0), (float("inf"), 0)]) is None
    True
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


def window_percentiles(
    now: dict[float, float], before: dict[float, float] | None
) -> dict[str, float] | None:
    """p50/p95/p99 (seconds) of what was observed between two cumulative snapshots (all
    of ``now`` when there is no earlier one); None when nothing was observed between.

    >>> window_percentiles({0.1: 10, float("inf"): 10}, {0.1: 10, float("inf"): 10}) is None
    True
    >>> now = {0.1: 10.0, 1.0: 20.0, float("inf"): 20.0}
    >>> window_percentiles(now, {0.1: 10.0, 1.0: 10.0, float("inf"): 10.0})
    {'p50': 0.55, 'p95': 0.955, 'p99': 0.991, 'count': 10.0}
    """
    delta = sorted((b, c - (before or {}).get(b, 0.0)) for b, c in now.items())
    if not delta or delta[-1][1] <= 0:
        return None
    out: dict[str, float] = {
        name: round(v, 6)
        for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
        if (v := histogram_quantile(q, delta)) is not None
    }
    return {**out, "count": float(delta[-1][1])}


def placement_map(status: dict[str, Any]) -> list[dict[str, Any]]:
    """Nodes grouped by role and site, each with its actors and their queue depths.

    >>> groups = placement_map({
    ...     "nodes": [{"node_id": "n1", "role": "core", "site": "hq", "alive": True}],
    ...     "placement": [{"actor": "shard:customers:0", "kind": "shard", "node_id": "n1"}],
    ...     "stages": [{"actor": "shard:customers:0", "queue_depth": 3, "rows_per_s": 9.0}],
    ... })
    >>> [(g["role"], g["site"], [a["actor"] for n in g["nodes"] for a in n["actors"]]) for g in groups]
    [('core', 'hq', ['shard:customers:0'])]
    >>> groups[0]["nodes"][0]["actors"][0]["queue_depth"]
    3
    """
    stages = {s.get("actor"): s for s in status.get("stages", [])}
    by_node: dict[str, list[dict[str, Any]]] = {}
    for p in status.get("placement", []):
        stage = stages.get(p.get("actor"), {})
        by_node.setdefault(p.get("node_id", ""), []).append(
            {
                "actor": p.get("actor"),
                "kind": p.get("kind"),
                "queue_depth": stage.get("queue_depth"),
                "rows_per_s": stage.get("rows_per_s"),
            }
        )
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    known = {n.get("node_id") for n in status.get("nodes", [])}
    nodes = list(status.get("nodes", []))
    nodes += [  # actors on a node Ray no longer lists (it died): shown, not dropped
        {"node_id": nid, "role": "?", "site": "?", "alive": False}
        for nid in by_node
        if nid not in known
    ]
    for n in nodes:
        role, site = n.get("role") or "?", n.get("site") or "?"
        group = groups.setdefault((role, site), {"role": role, "site": site, "nodes": []})
        actors = sorted(by_node.get(n.get("node_id", ""), []), key=lambda a: a["actor"] or "")
        group["nodes"].append(
            {
                "node_id": n.get("node_id"),
                "address": n.get("address"),
                "alive": bool(n.get("alive")),
                "actors": actors,
            }
        )
    order = {"core": 0, "hybrid": 1, "edge": 2}
    return sorted(groups.values(), key=lambda g: (order.get(g["role"], 3), g["role"], g["site"]))
