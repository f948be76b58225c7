"""The NEXMark queries Q0-Q5, Q7, Q8 as pipelines on the runtime.

Every query reads the one NEXMark stream (:func:`actors.nexmark.generator.union`: persons,
auctions and bids in event order, ``type`` telling them apart), validates it, and runs
its own steps; what a query emits lands on the topic named after it (``q0`` ...). The
windowed and join queries use the runtime's event-time operators, checkpointed per
shard; the two-stage ones (Q4, Q5) forward their first stage shard to shard.

========  ===================================================================
query     built from
========  ===================================================================
q0        filter bids -> publish (pass-through)
q1        filter bids -> map price to euros (DECIMAL(23, 3)) -> publish
q2        filter bids on ``auction % 123 = 0`` -> publish
q3        filter -> join person and auction on seller, over all time
q4        per auction, the best bid within its life, when it closes
          (:class:`AuctionWinners`) -> per category, the running average
q5        sliding 10 s / 2 s windows counting bids per auction -> per window
          the auctions with the most bids (arg-max)
q7        per tumbling 10 s window, the bids with the highest price (arg-max)
q8        persons joined with the auctions they created in the same 10 s window
========  ===================================================================

>>> sorted(QUERIES)
['q0', 'q1', 'q2', 'q3', 'q4', 'q5', 'q7', 'q8']
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from actors.nexmark.winners import AuctionWinners, CategoryAverage
from runtime.dataflow.builder import Pipeline
from runtime.eventtime.windows import WindowSpec
from runtime.operators.windowed import argmax_kind
from runtime.streams.schema import Column, EventSchema
from runtime.streams.sources import Source

WINDOW_MS = 10_000  # q5 window size; q7, q8 tumbling windows (Flink: 10 s)
HOP_MS = 2_000  # q5 slide

_OPTIONAL = [
    ("id", "int64"),
    ("name", "string"),
    ("email_address", "string"),
    ("credit_card", "string"),
    ("city", "string"),
    ("state", "string"),
    ("item_name", "string"),
    ("description", "string"),
    ("initial_bid", "int64"),
    ("reserve", "int64"),
    ("expires", "int64"),
    ("seller", "int64"),
    ("category", "int64"),
    ("auction", "int64"),
    ("bidder", "int64"),
    ("price", "int64"),
    ("channel", "string"),
    ("url", "string"),
    ("extra", "string"),  # the padding; q0, q1 and q7 pass it on, as Flink's SQL does
]
#: the union stream; the columns of one type are null for the others
NEXMARK = EventSchema(
    "nexmark",
    [
        Column("event_id", "int64"),
        Column("type", "string"),
        Column("date_time", "int64"),
        *[Column(n, t, required=False) for n, t in _OPTIONAL],
    ],
)


def _of(kind: str) -> Callable[[pa.Table], Any]:
    return lambda t: pc.equal(t["type"], kind)


def _stream(name: str, source: Source | None) -> Pipeline:
    """A query's pipeline up to the validated NEXMark stream (from ``source``, if given)."""
    p = Pipeline(name)
    if source is not None:
        p = p.source(source)
    return p.validate(NEXMARK)


def _bids(name: str, source: Source | None, columns: list[str]) -> Pipeline:
    """The bids, with only ``columns`` (and ``type``): selected before the filter, which
    copies what it keeps, so the other kinds' columns are never copied."""
    keep = ["type", *columns]
    return (
        _stream(name, source)
        .map("bid_columns", lambda t: t.select(keep))
        .filter("bids", _of("bid"))
    )


def _euros(t: pa.Table) -> pa.Table:
    rate = pa.scalar(Decimal("0.908"), pa.decimal128(3, 3))
    price = pc.multiply(pc.cast(t["price"], pa.decimal128(19, 0)), rate)
    return t.select(["auction", "bidder", "date_time", "extra"]).append_column(
        "price", pc.cast(price, pa.decimal128(23, 3))
    )


def _tumble(t: pa.Table) -> pa.Table:
    start = pc.multiply(pc.divide(t["date_time"], WINDOW_MS), WINDOW_MS)  # t >= 0: floor
    return t.append_column("window_start", start).append_column(
        "window_end", pc.add(start, WINDOW_MS)
    )


def _join_key(t: pa.Table) -> pa.Table:
    """Persons join on their id, auctions on their seller."""
    jk = pc.if_else(pc.equal(t["type"], "person"), t["id"], t["seller"])
    return t.append_column("jk", jk)


def q0(source: Source | None = None) -> Pipeline:
    sel = ["auction", "bidder", "price", "date_time", "extra"]
    return (
        _bids("q0", source, sel)
        .map("pass", lambda t: t.select(sel))
        .key_by("auction")
        .to_topic("q0")
    )


def q1(source: Source | None = None) -> Pipeline:
    sel = ["auction", "bidder", "price", "date_time", "extra"]
    return _bids("q1", source, sel).map("euros", _euros).key_by("auction").to_topic("q1")


def _every_123rd(t: pa.Table) -> np.ndarray:
    return t["auction"].to_numpy() % 123 == 0


def q2(source: Source | None = None) -> Pipeline:
    return (
        _bids("q2", source, ["auction", "price"])
        .filter("every_123rd", _every_123rd)
        .map("select", lambda t: t.select(["auction", "price"]))
        .key_by("auction")
        .to_topic("q2")
    )


def _q3_rows(t: pa.Table) -> pa.Table:
    person = pc.and_kleene(
        pc.equal(t["type"], "person"), pc.is_in(t["state"], pa.array(["OR", "ID", "CA"]))
    )
    auction = pc.and_kleene(pc.equal(t["type"], "auction"), pc.equal(t["category"], 10))
    keep = t.filter(pc.fill_null(pc.or_kleene(person, auction), False))
    return _join_key(keep).select(["jk", "type", "name", "city", "state", "id"])


def q3(source: Source | None = None) -> Pipeline:
    return (
        _stream("q3", source)
        .flat_map("sellers_and_items", _q3_rows)
        .key_by("jk")
        .join(
            "q3",
            None,
            side="type",
            left="person",
            right="auction",
            columns={
                "name": "name_left",
                "city": "city_left",
                "state": "state_left",
                "id": "id_right",
            },
        )
    )


def _auction_key(t: pa.Table) -> pa.Table:
    """Bids name their auction; an auction's own id is its key."""
    i = t.schema.get_field_index("auction")
    return t.set_column(i, "auction", pc.coalesce(t["auction"], t["id"]))


def q4(source: Source | None = None) -> Pipeline:
    return (
        _stream("q4", source)
        .event_time("date_time")
        .filter("auctions_and_bids", lambda t: pc.not_equal(t["type"], "person"))
        .map("auction_key", _auction_key)
        .key_by("auction")
        .to_entity("q4_winners", AuctionWinners)
        .then("q4_winners", "q4_categories", CategoryAverage)
    )


def q5(source: Source | None = None) -> Pipeline:
    return (
        _bids("q5", source, ["auction", "price", "date_time"])
        .event_time("date_time")
        .key_by("auction")
        .window("q5_counts", WindowSpec(WINDOW_MS, HOP_MS), value="price")
        .then("q5_counts", "q5", argmax_kind("q5", "count"))
    )


def q7(source: Source | None = None) -> Pipeline:
    return (
        _bids("q7", source, ["auction", "price", "bidder", "date_time", "extra"])
        .event_time("date_time")
        .map(
            "window",
            lambda t: _tumble(t.select(["auction", "price", "bidder", "date_time", "extra"])),
        )
        .key_by("window_start")
        .argmax("q7", "price")
    )


def q8(source: Source | None = None) -> Pipeline:
    return (
        _stream("q8", source)
        .event_time("date_time")
        .filter("persons_and_auctions", lambda t: pc.not_equal(t["type"], "bid"))
        .map("join_key", lambda t: _join_key(t).select(["jk", "type", "date_time", "name"]))
        .key_by("jk")
        .join(
            "q8",
            WINDOW_MS,
            side="type",
            left="person",
            right="auction",
            columns={"id": "jk", "name": "name_left", "window_start": "window_start"},
            distinct=True,
        )
    )


QUERIES: dict[str, Callable[..., Pipeline]] = {
    "q0": q0,
    "q1": q1,
    "q2": q2,
    "q3": q3,
    "q4": q4,
    "q5": q5,
    "q7": q7,
    "q8": q8,
}


def answer(q: str, rows: pa.Table) -> pa.Table:
    """A query's final answer from everything its topic received (in the columns of the
    reference queries): q4 keeps each category's last average, q5 names ``count`` num."""
    rows = rows.drop_columns([c for c in rows.column_names if c.startswith("_")])
    if q == "q4":
        if rows.num_rows == 0:
            return pa.table(
                {"category": pa.array([], pa.int64()), "avg_price": pa.array([], pa.float64())}
            )
        n = pa.array(np.arange(rows.num_rows))
        rows = rows.append_column("_n", n)
        last = rows.group_by("category", use_threads=False).aggregate([("_n", "max")])
        pick = rows.take(last["_n_max"]).select(["category", "avg_price"])
        return pick.take(pc.sort_indices(pick, [("category", "ascending")]))
    if q == "q5":  # windows key by text
        i = rows.schema.get_field_index("auction")
        rows = rows.set_column(i, "auction", pc.cast(rows["auction"], pa.int64()))
        return rows.select(["auction", "count", "window_start", "window_end"]).rename_columns(
            ["auction", "num", "window_start", "window_end"]
        )
    if q == "q7":
        return rows.select(
            ["auction", "price", "bidder", "date_time", "extra", "window_start", "window_end"]
        )
    if q == "q8":
        return rows.select(["id", "name", "window_start"])
    return rows


__all__ = ["NEXMARK", "QUERIES", "AuctionWinners", "CategoryAverage", "answer"]
