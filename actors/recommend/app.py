"""The recommend app: shopping events in; tastes, carts and offers out.

Events (views, cart adds, purchases) are validated against :data:`SHOPPING` and routed
to :class:`~actors.recommend.shopper.Customer` entities; every cart add publishes that
customer's offers to the ``offers`` topic, persisted to the ``offers`` table (by
``event_id``). The catalog is the ``catalog`` table of the data folder: the installed
app writes the synthetic catalog there if the folder has none
(:func:`recommend_app` with ``catalog=None`` requires one, e.g. written by
:func:`~actors.recommend.products.write_catalog_table`).

>>> recommend_app().kind.name, sorted(recommend_app().sinks)
('shoppers', ['offers'])
"""

from __future__ import annotations

from typing import Any

from actors.recommend.catalog import CommerceConfig, catalog_table
from actors.recommend.evaluate import (
    cooccurrence_baseline,
    hit_rate,
    learn,
    popularity_baseline,
    targets,
)
from actors.recommend.generator import CommerceSource, events_table, split
from actors.recommend.products import Products, write_catalog_table
from actors.recommend.shopper import EVENT_TYPES, Customer, RecommendConfig
from runtime import App, Column, EventSchema, Paced, RunStats, Runtime, Source
from runtime.ingest.queries import Param, Query
from runtime.state.store import Store

MAX_ID_LEN = 128
SHOPPING = EventSchema(
    "shopping",
    [
        Column("event_id", "int64", min=0),
        Column("ts", "timestamp"),
        Column("customer_id", "string", max_len=MAX_ID_LEN),
        Column("session_id", "string", max_len=MAX_ID_LEN),
        Column("event_type", "string", choices=EVENT_TYPES),
        Column("product_id", "string", max_len=MAX_ID_LEN),
        Column("category", "string", required=False, max_len=MAX_ID_LEN),
        Column("price", "float64", required=False, min=0.0, max=1e7),
        Column("quantity", "int64", required=False, min=1, max=10_000),
    ],
)
#: the demo's world: its catalog, and the customers the demo's --customers sets
WORLD = CommerceConfig()
HOLDOUT = 0.1  # the demo's evaluation: the next tenth of the stream, never ingested


def summarize(counters: dict[str, float]) -> dict[str, Any]:
    return {
        "offers": int(counters.get("offers_rows", 0)),
        "unknown_products": int(counters.get("unknown_products", 0)),
    }


def report(stats: RunStats) -> dict[str, Any]:
    return {k: stats.app[k] for k in ("offers", "unknown_products") if k in stats.app}


def demo_source(n_events: int, rate: float | None = None, customers: int = 20_000) -> Source:
    """The synthetic shopping stream of ``customers`` over the demo's catalog."""
    cfg = CommerceConfig(**{**_fields(WORLD), "n_customers": customers})
    source = CommerceSource(cfg, n_events)
    return Paced(source, rate) if rate else source


def demo_report(rt: Runtime, source: Any, k: int = 10) -> dict[str, Any]:
    """Hit-rate@k of the live offers against the popularity and co-occurrence baselines, on
    the next tenth of the demo's stream (see :mod:`actors.recommend.evaluate`)."""
    src = getattr(source, "source", source)  # Paced wraps the generator's source
    if not isinstance(src, CommerceSource):
        return {}
    n = src.n_events
    events = events_table(n + max(1, int(n * HOLDOUT)), src.config)
    train, _ = split(events, n)
    want = targets(events, n)
    customers = want["customer_id"].to_pylist()
    answers: list[dict[str, Any]] = []
    for lo in range(0, len(customers), 2_000):
        answers += rt.call_many(Customer.name, customers[lo : lo + 2_000], "recommend", k=k)
    products = Products(catalog_table(src.config))
    co = learn(products, train)
    wanted = want["product_id"].to_pylist()
    ours = hit_rate([a["product_ids"] for a in answers], wanted)
    pop = hit_rate([popularity_baseline(products, co, k)] * len(wanted), wanted)
    cooc = hit_rate(cooccurrence_baseline(products, co, train, customers, k), wanted)
    return {
        f"hit_rate_at_{k}": round(ours, 4),
        f"popularity_hit_rate_at_{k}": round(pop, 4),
        f"cooccurrence_hit_rate_at_{k}": round(cooc, 4),
        "vs_popularity": round(ours / pop, 2) if pop else None,
        "vs_cooccurrence": round(ours / cooc, 2) if cooc else None,
        "evaluated_customers": len(wanted),
    }


def _fields(cfg: CommerceConfig) -> dict[str, Any]:
    return {f: getattr(cfg, f) for f in cfg.__dataclass_fields__}


def recommend_app(
    config: RecommendConfig | None = None, catalog: CommerceConfig | None = WORLD
) -> App:
    """The recommend app; ``catalog``: the synthetic world whose catalog is written to the
    data folder when it has none (None: the folder must have one)."""
    config = config or RecommendConfig()

    def prepare(rt: Runtime) -> None:
        store = Store(rt.data_dir)
        if not store.exists(config.catalog_table) and catalog is not None:
            write_catalog_table(store, catalog_table(catalog), config.catalog_table)

    return App(
        "recommend",
        SHOPPING,
        Customer,
        config,
        sinks={"offers": ("offers", "event_id")},
        summarize=summarize,
        report=report,
        demo=demo_source,
        prepare=prepare,
        demo_report=demo_report,
        queries={
            "recommend": Query(
                "recommend", key="customer", params=(Param("k", "int", config.k, 1, 100),)
            )
        },
    )


recommend = recommend_app()  # what the `edgecore.apps` entry point names

__all__ = ["SHOPPING", "demo_report", "demo_source", "recommend", "recommend_app"]
