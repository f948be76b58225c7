"""The metrics of one run, fed by the driver: what ``/metrics`` and the status board show.

The driver (:func:`runtime.dataflow.driver.drive`) sees every tick's counts from every
feeder and every shard call's stats; :class:`RunMetrics` turns them into the families
below, so ``edgecore_events_total`` reconciles exactly with the run's counts
(``input == accepted + dead_lettered + duplicate + filtered``). Shard-level figures
that only the shards know (entities active, busy seconds) are asked for at each
checkpoint, when the shards are drained anyway.

========================================  =========  ==========================================
metric                                    type       labels: what
========================================  =========  ==========================================
edgecore_events_total                     counter    app, outcome (input, accepted,
                                                     dead_lettered, duplicate, filtered)
edgecore_events_replayed_total            counter    app: applied again from a gate's log
edgecore_dead_letters_total               counter    app, step (validate, route, ingest, map,
                                                     ...), field (the column named, or "-")
edgecore_shard_rows_total                 counter    kind, shard: rows sent to each shard
edgecore_shard_queue_depth                gauge      kind, shard: batches in flight (its queue)
edgecore_inflight_batches                 gauge      kind: batches in flight over all shards
edgecore_edge_buffer_bytes                gauge      site: bytes its edge links hold for the core
edgecore_edge_link_up                     gauge      site: 1 if all its links reach the core
edgecore_shard_batches_total              counter    kind, shard: batches applied (at checkpoints)
edgecore_shard_busy_seconds_total         counter    kind, shard: time spent applying batches
edgecore_entities_active                  gauge      kind, shard: entities in memory
edgecore_entities_loaded_total            counter    kind, shard: activated from LanceDB
edgecore_entities_passivated_total        counter    kind, shard: moved out of memory
edgecore_ingest_latency_seconds           histogram  app, stage: taken in -> applied
                                                     ("applied"), -> published (the topic:
                                                     "alerts", "offers", ...)
edgecore_checkpoints_total                counter    app
edgecore_checkpoint_duration_seconds      histogram  app: cut + write + commit
edgecore_checkpoint_rows                  gauge      app: rows the last checkpoint wrote
edgecore_checkpoint_bytes                 gauge      app: Arrow bytes the last checkpoint wrote
edgecore_restarts_total                   counter    app: restarts from a checkpoint
edgecore_watermark_lag_seconds            gauge      app: wall clock minus event-time watermark
edgecore_events_per_second                gauge      app: input events/s over the run
edgecore_app_total                        counter    app, name: the kind's own counters
                                                     (e.g. alerts, drift)
edgecore_model_version                    gauge      model: the committed model's version
edgecore_model_metric                     gauge      model, metric: its live metrics (auc, ...)
========================================  =========  ==========================================

The live ingest gates and the shards also record to Ray directly
(``edgecore_http_requests_total{app,site,code}``, ``edgecore_shard_applied_rows_total``
``{kind,shard}``): those appear on Ray's
endpoint only (prefixed ``ray_``), see :mod:`runtime.observe.raymirror`.

>>> from runtime.dataflow.app import RunStats
>>> m = RunMetrics("fraud")
>>> m.run(RunStats(input=5, accepted=3, dead_lettered=1, duplicates=1))
>>> m.events.value(app="fraud", outcome="input"), m.events.value(app="fraud", outcome="duplicate")
(5.0, 1.0)
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter as Tally
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from runtime.observe.metrics import Registry

if TYPE_CHECKING:
    from runtime.coordinator.checkpoint import PreparedCheckpoint
    from runtime.coordinator.runtime import Runtime

#: RunStats field -> the outcome label (Prometheus values are singular nouns)
OUTCOMES = {
    "input": "input",
    "accepted": "accepted",
    "dead_lettered": "dead_lettered",
    "duplicates": "duplicate",
    "filtered": "filtered",
}
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
CHECKPOINT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_FIELD = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*):")
_SHARD_COUNTERS = {
    "batches": "batches",
    "busy_s": "busy",
    "loaded": "loaded",
    "passivated": "passivated",
}


class RunMetrics:
    """One run's registry and the families the driver updates (see the module table)."""

    def __init__(
        self, app: str, registry: Registry | None = None, fields: list[str] | None = None
    ) -> None:
        self.app = app
        self.registry = reg = registry or Registry(mirror_ray=True)
        #: columns a dead letter's reason may name (the label stays bounded by the schema)
        self.fields = set(fields or [])
        self.events = reg.counter(
            "edgecore_events_total", "Events taken in, by outcome.", ["app", "outcome"]
        )
        for outcome in OUTCOMES.values():  # every outcome is listed from the start, as 0
            self.events.inc(0, app=app, outcome=outcome)
        self.replayed = reg.counter(
            "edgecore_events_replayed_total", "Events applied again from a gate's log.", ["app"]
        )
        self.dead = reg.counter(
            "edgecore_dead_letters_total",
            "Dead letters by the step that refused them and the field it named.",
            ["app", "step", "field"],
        )
        self.shard_rows = reg.counter(
            "edgecore_shard_rows_total", "Rows sent to each shard.", ["kind", "shard"]
        )
        self.queue = reg.gauge(
            "edgecore_shard_queue_depth", "Batches in flight to each shard.", ["kind", "shard"]
        )
        self.inflight = reg.gauge(
            "edgecore_inflight_batches", "Batches in flight over a kind's shards.", ["kind"]
        )
        self.edge_buffer = reg.gauge(
            "edgecore_edge_buffer_bytes", "Bytes a site's edge holds for the core.", ["site"]
        )
        self.edge_up = reg.gauge(
            "edgecore_edge_link_up", "1 if every link of a site reaches the core.", ["site"]
        )
        self.shard = {
            "batches": reg.counter(
                "edgecore_shard_batches_total", "Batches each shard applied.", ["kind", "shard"]
            ),
            "busy": reg.counter(
                "edgecore_shard_busy_seconds_total",
                "Seconds each shard spent applying batches.",
                ["kind", "shard"],
            ),
            "loaded": reg.counter(
                "edgecore_entities_loaded_total",
                "Entities activated from their stored profile.",
                ["kind", "shard"],
            ),
            "passivated": reg.counter(
                "edgecore_entities_passivated_total",
                "Entities moved out of memory.",
                ["kind", "shard"],
            ),
        }
        self.active = reg.gauge(
            "edgecore_entities_active", "Entities in memory.", ["kind", "shard"]
        )
        self.checkpoints = reg.counter(
            "edgecore_checkpoints_total", "Checkpoints committed.", ["app"]
        )
        self.checkpoint_s = reg.histogram(
            "edgecore_checkpoint_duration_seconds",
            "Time to cut, write and commit a checkpoint.",
            ["app"],
            CHECKPOINT_BUCKETS,
        )
        self.checkpoint_rows = reg.gauge(
            "edgecore_checkpoint_rows", "Rows the last checkpoint wrote.", ["app"]
        )
        self.checkpoint_bytes = reg.gauge(
            "edgecore_checkpoint_bytes", "Arrow bytes the last checkpoint wrote.", ["app"]
        )
        self.restarts = reg.counter(
            "edgecore_restarts_total", "Restarts from the last checkpoint.", ["app"]
        )
        self.restarts.inc(0, app=app)
        self.checkpoints.inc(0, app=app)
        self.lag = reg.gauge(
            "edgecore_watermark_lag_seconds",
            "Wall-clock time minus the event-time watermark.",
            ["app"],
        )
        self.rate = reg.gauge(
            "edgecore_events_per_second", "Input events per second over the run.", ["app"]
        )
        self.app_total = reg.counter(
            "edgecore_app_total", "The app's own counters (e.g. alerts).", ["app", "name"]
        )
        self.model_version = reg.gauge(
            "edgecore_model_version", "The committed model's version.", ["model"]
        )
        self.model_metric = reg.gauge(
            "edgecore_model_metric", "The committed model's live metrics.", ["model", "metric"]
        )
        self.latency = reg.histogram(
            "edgecore_ingest_latency_seconds",
            "Seconds from when events were taken in (a live gate's acknowledgement, else "
            "their first send to a shard) to applied, and to each topic's rows published.",
            ["app", "stage"],
            buckets=LATENCY_BUCKETS,
        )
        self._seen: dict[tuple[str, ...], float] = {}  # cumulative figures already counted

    # -- every tick -------------------------------------------------------------------------
    def run(self, stats: Any) -> None:
        """The run's counts (a :class:`~runtime.dataflow.app.RunStats`), all at once: a
        scrape never sees them half updated, so they always reconcile."""
        with self.registry.lock:
            for key, outcome in OUTCOMES.items():
                self.events.set_total(getattr(stats, key), app=self.app, outcome=outcome)
            self.replayed.set_total(stats.replayed, app=self.app)

    def latencies(self, shard_stats: list[dict[str, float]]) -> None:
        """The ingest latency each shard call reported (``_lat:<stage>`` seconds for
        ``_lat_rows:<stage>`` rows; see Shard._latency), one observation per row."""
        for st in shard_stats:
            for key, value in st.items():
                if key.startswith("_lat:"):
                    stage = key[5:]
                    rows = int(st.get(f"_lat_rows:{stage}", 1))
                    if rows > 0:
                        self.latency.observe(value, rows, app=self.app, stage=stage)

    def summary(self, stats: Any) -> None:
        """What :func:`~runtime.dataflow.driver.finish` worked out: rate, the kind's counters."""
        self.rate.set(stats.events_per_s, app=self.app)
        for name, value in stats.counters.items():
            if isinstance(value, (int, float)) and math.isfinite(value) and value >= 0:
                self.app_total.set_total(float(value), app=self.app, name=str(name))

    def dead_letters(self, rows: pa.Table) -> None:
        """Dead-letter rows (DEAD_LETTER_SCHEMA), counted by step and named field."""
        if not rows.num_rows:
            return
        steps = pc.value_counts(rows.column("step")).to_pylist()
        if len(steps) == 1 and not self.fields:
            step = _step(steps[0]["values"])
            self.dead.inc(rows.num_rows, app=self.app, step=step, field="-")
            return
        tally: Tally[tuple[str, str]] = Tally()
        for step, reason in zip(
            rows.column("step").to_pylist(), rows.column("reason").to_pylist(), strict=True
        ):
            m = _FIELD.match(reason or "")
            name = m.group(1) if m and m.group(1) in self.fields else "-"
            tally[(_step(step), name)] += 1
        for (step, name), n in tally.items():
            self.dead.inc(n, app=self.app, step=step, field=name)

    def _cumulative(self, family: Any, key: tuple[str, ...], total: float, **labels: Any) -> None:
        """A figure that only grows (until its actor restarts): count what is new."""
        before = self._seen.get(key, 0.0)
        delta = total - before if total >= before else total  # restarted: counts from 0
        self._seen[key] = total
        if delta > 0:
            family.inc(delta, **labels)

    def stages(self, stages: list[dict[str, Any]]) -> None:
        """The board's per-shard rows (``Runtime.status()["stages"]``)."""
        depth: dict[str, float] = {}
        for s in stages:
            kind, shard = _kind_shard(s["actor"])
            self._cumulative(
                self.shard_rows, ("rows", s["actor"]), s["rows"], kind=kind, shard=shard
            )
            self.queue.set(s["queue_depth"], kind=kind, shard=shard)
            depth[kind] = depth.get(kind, 0) + s["queue_depth"]
        for kind, n in depth.items():
            self.inflight.set(n, kind=kind)

    def app_counters(self, counters: dict[str, Any]) -> None:
        for name, value in counters.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self._cumulative(
                    self.app_total, ("app", name), float(value), app=self.app, name=name
                )

    def models(self, models: dict[str, dict[str, Any]]) -> None:
        for kind, card in models.items():
            if isinstance(card.get("version"), (int, float)):
                self.model_version.set(card["version"], model=kind)
            for name, value in (card.get("metrics") or {}).items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.model_metric.set(value, model=kind, metric=name)

    def links(self, links: list[dict[str, Any]]) -> None:
        """Each site's edge links (runtime.edge): bytes held for the core, up or not."""
        for site in {lk["site"] for lk in links}:
            mine = [lk for lk in links if lk["site"] == site]
            self.edge_buffer.set(sum(lk["buffered_bytes"] for lk in mine), site=site)
            self.edge_up.set(float(all(lk["up"] for lk in mine)), site=site)

    def watermark(self, marks_ms: list[int]) -> None:
        real = [m for m in marks_ms if m > 0]
        if real:
            self.lag.set(max(0.0, time.time() - min(real) / 1000), app=self.app)

    # -- every checkpoint --------------------------------------------------------------------
    def checkpoint(self, seconds: float, rows: int, nbytes: int) -> None:
        self.checkpoints.inc(1, app=self.app)
        self.checkpoint_s.observe(seconds, app=self.app)
        self.checkpoint_rows.set(rows, app=self.app)
        self.checkpoint_bytes.set(nbytes, app=self.app)

    def checkpointed(self, rt: Runtime, prepared: PreparedCheckpoint, seconds: float) -> None:
        """A checkpoint of ``rt`` was committed: its cost, and the shards' own counters
        (entities, busy time), asked for now that the shards were drained anyway. The shards
        answer first and both land under the registry's lock: a scrape that sees the
        checkpoint counted also sees the shards' figures it brought."""
        written = [t for _, _, t in prepared.states] + prepared.dead
        per_shard = rt.shard_stats()
        shards = [
            (s.name, st)
            for kind, all_stats in per_shard.items()
            for s, st in zip(rt.shards_of(kind), all_stats, strict=True)
        ]
        with self.registry.lock:
            self.checkpoint(
                seconds, sum(t.num_rows for t in written), sum(t.nbytes for t in written)
            )
            self.shard_stats(shards)

    def shard_stats(self, per_shard: list[tuple[str, dict[str, float]]]) -> None:
        """(shard actor name, :meth:`Shard.stats`) of every shard."""
        for actor, st in per_shard:
            kind, shard = _kind_shard(actor)
            for key, fam in _SHARD_COUNTERS.items():
                if key in st:
                    self._cumulative(
                        self.shard[fam], (key, actor), float(st[key]), kind=kind, shard=shard
                    )
            if "active" in st:
                self.active.set(st["active"], kind=kind, shard=shard)

    def restarted(self) -> None:
        self.restarts.inc(1, app=self.app)


def _step(step: str | None) -> str:
    """``validate:transactions`` -> ``validate``: the label names the kind of step only."""
    head = (step or "unknown").split(":", 1)[0]
    return head if re.fullmatch(r"[a-z_]{1,32}", head) else "other"


def _kind_shard(actor: str) -> tuple[str, str]:
    """A shard actor's name -> (kind, shard label): ``shard:customers:eu:3`` ->
    ``("customers", "eu:3")``."""
    from runtime.cluster.names import parse_shard

    try:
        parsed = parse_shard(actor)
    except ValueError:
        return "unknown", actor
    where = f"{parsed.site}:{parsed.index}" if parsed.site else str(parsed.index)
    return parsed.kind, where
