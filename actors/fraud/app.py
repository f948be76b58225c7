"""Card-fraud detection: transactions in, customer profiles and alerts out.

The app validates each transaction (bad rows go to ``dead_letters`` with a reason),
drops redelivered ``event_id``s, routes the rest to :class:`~actors.fraud.customer.Customer`
shards, and persists the ``alerts`` topic to the ``alerts`` table (an idempotent
upsert by ``event_id``, so a replay after a crash leaves one alert per event).

>>> fraud_app.kind.name, sorted(fraud_app.sinks)
('customers', ['alerts', 'drift'])
"""

from __future__ import annotations

import dataclasses
from typing import Any

from actors.fraud.customer import Customer, FraudConfig
from actors.fraud.generator import GeneratorSource, TxnGeneratorConfig
from actors.fraud.threshold import auc_of
from runtime import App, Column, EventSchema, Paced, Source
from runtime.dataflow.builder import Pipeline

MAX_ID_LEN = 128
MAX_AMOUNT = 1_000_000.0  # above this an amount is taken as a data error, not a purchase

TRANSACTIONS = EventSchema(
    "transactions",
    [
        Column("event_id", "int64", min=0),
        Column("ts", "timestamp"),
        Column("customer_id", "string", max_len=MAX_ID_LEN),
        Column("device_id", "string", max_len=MAX_ID_LEN),
        Column("merchant_id", "string", max_len=MAX_ID_LEN),
        Column("category", "string", max_len=64),
        Column("amount", "float64", min=0.0, max=MAX_AMOUNT),
        Column("lat", "float64", min=-90.0, max=90.0),
        Column("lon", "float64", min=-180.0, max=180.0),
        Column("is_fraud", "bool", required=False),
    ],
)


def summarize(counters: dict[str, float]) -> dict[str, Any]:
    """Alert counts and, when the stream carried labels, precision and recall."""
    tp = counters.get("true_positives", 0)
    fp = counters.get("false_positives", 0)
    fn = counters.get("false_negatives", 0)
    out: dict[str, Any] = {"alerts": int(counters.get("alerts", 0))}
    if counters.get("drift_events"):
        out["drift_events"] = int(counters["drift_events"])
    if counters.get("labelled"):
        out["labelled"] = int(counters["labelled"])
        out["precision"] = round(tp / (tp + fp), 4) if tp + fp else None
        out["recall"] = round(tp / (tp + fn), 4) if tp + fn else None
        auc = auc_of(counters)
        if auc is not None:  # prequential, over what the model scored
            out["auc"] = round(auc, 4)
        if counters.get("label_delay_ms_sum"):
            out["label_delay_s"] = round(
                counters["label_delay_ms_sum"] / counters["labelled"] / 1000, 1
            )
    labels = {  # labels that came apart from their events (feedback) and what became of them
        k: int(counters[c])
        for k, c in (
            ("received", "feedback_accepted"),
            ("dead_lettered", "feedback_dead_lettered"),
            ("duplicate", "labels_duplicate"),
            ("unmatched", "labels_unmatched"),
            ("expired", "labels_expired"),
            ("waiting_for_event", "labels_waiting_for_event"),
            ("held_back", "labels_held"),  # --label-delay: not due yet when the run ended
        )
        if counters.get(c)
    }
    if labels:
        out["labels"] = labels
    return out


def fraud_pipeline(source: Source | None = None, config: FraudConfig | None = None) -> Pipeline:
    """The fraud pipeline in the pipeline API: validate, key by customer, score in the
    customer's profile, persist alerts (and per-event scores when asked for)."""
    flow = (
        Pipeline("fraud")
        .validate(TRANSACTIONS)
        .key_by("customer_id")
        .to_entity("profile", Customer, config)
        .sink("alerts", "alerts", key="event_id")
        .sink("drift", "drift")
        .summarize(summarize)
    )
    if config is not None and config.predictions:
        flow.sink("predictions", "predictions", key="event_id")
    return flow.source(source) if source is not None else flow


def make_app(config: FraudConfig | None = None) -> App:
    """The fraud app with custom scoring settings."""

    def with_predictions() -> App:
        return make_app(dataclasses.replace(config or FraudConfig(), predictions=True))

    def with_label_delay(delay_ms: int) -> App:
        return make_app(dataclasses.replace(config or FraudConfig(), label_delay_ms=delay_ms))

    return dataclasses.replace(
        fraud_pipeline(config=config).build(),
        demo=demo_source,
        with_predictions=with_predictions,
        with_label_delay=with_label_delay,
    )


def demo_source(n_events: int, rate: float | None = None, customers: int = 50_000) -> Source:
    """Synthetic card transactions, paced to ``rate`` events/s if given; a second demo in
    the same data folder continues the stream."""
    source = GeneratorSource(TxnGeneratorConfig(n_customers=customers), n_events)
    return Paced(source, rate) if rate else source


fraud_app = make_app()
