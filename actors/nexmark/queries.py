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
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from runtime.dataflow.builder import Pipeline
from runtime.entities.kind import Batch, EntityKind
from runtime.eventtime.windows import WindowSpec
from runtime.operators.windowed import argmax_kind
from runtime.state.snapshot import pack, reading, unpack
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


def _bids(name: str, source: Source | None) -> Pipeline:
    return _stream(name, source).filter("bids", _of("bid"))


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
    return _bids("q0", source).map("pass", lambda t: t.select(sel)).key_by("auction").to_topic("q0")


def q1(source: Source | None = None) -> Pipeline:
    return _bids("q1", source).map("euros", _euros).key_by("auction").to_topic("q1")


def _every_123rd(t: pa.Table) -> np.ndarray:
    return t["auction"].to_numpy() % 123 == 0


def q2(source: Source | None = None) -> Pipeline:
    return (
        _bids("q2", source)
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


class AuctionWinners(EntityKind):
    """Q4's first stage, keyed by auction: each open auction's best bid between its start
    and its expiry (both inclusive); when the watermark passes the expiry, the winner
    (auction, category, final) goes on. Bids that arrive before their auction (NEXMark
    lets a bid name an auction up to 10 ahead) wait until event time makes a match
    impossible."""

    name = "q4_winners"
    key = "auction"
    stateless = True
    snapshot_scope = "shard"
    topics = ("q4_winners",)

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.open: pa.Table | None = None  # auction, category, start, expires, final (null)
        self.waiting: pa.Table | None = None  # auction, date_time, price
        self.watermark = -(2**63)

    def apply(self, batch: Batch) -> None:
        t = batch.events
        auctions = t.filter(pc.equal(t["type"], "auction"))
        if auctions.num_rows:
            new = pa.table(
                {
                    "auction": auctions["auction"],
                    "category": auctions["category"],
                    "start": auctions["date_time"],
                    "expires": auctions["expires"],
                    "final": pa.nulls(auctions.num_rows, pa.int64()),
                }
            )
            self.open = new if self.open is None else pa.concat_tables([self.open, new])
        bids = t.filter(pc.equal(t["type"], "bid")).select(["auction", "date_time", "price"])
        if self.waiting is not None and self.waiting.num_rows:
            bids = pa.concat_tables([self.waiting, bids])
            self.waiting = None
        if bids.num_rows and self.open is not None:
            self._match(bids)
        elif bids.num_rows:
            self.waiting = bids
        self._close(batch)

    def _match(self, bids: pa.Table) -> None:
        assert self.open is not None
        known = pc.is_in(bids["auction"], value_set=self.open["auction"])
        self.waiting = bids.filter(pc.invert(known)) or None
        j = bids.filter(known).join(
            self.open.select(["auction", "start", "expires"]), keys="auction", use_threads=False
        )
        valid = pc.and_(
            pc.greater_equal(j["date_time"], j["start"]),
            pc.less_equal(j["date_time"], j["expires"]),
        )
        best = j.filter(valid).group_by("auction", use_threads=False).aggregate([("price", "max")])
        if best.num_rows == 0:
            return
        merged = self.open.join(best, keys="auction", use_threads=False)
        final = pc.max_element_wise(merged["final"], merged["price_max"], skip_nulls=True)
        self.open = merged.drop_columns(["final", "price_max"]).append_column("final", final)

    def _close(self, batch: Batch) -> None:
        wm = batch.watermark
        if wm is None or self.open is None:
            return
        self.watermark = max(self.watermark, wm)
        done = pc.less(self.open["expires"], wm)  # every bid at or before expiry is in
        closed = self.open.filter(done)
        self.open = self.open.filter(pc.invert(done))
        if self.waiting is not None and self.waiting.num_rows:
            # an auction created from now on starts at or after the watermark: older bids
            # can never count for it
            stale = pc.less(self.waiting["date_time"], wm)
            batch.count("q4_unmatched_bids", int(pc.sum(stale).as_py() or 0))
            self.waiting = self.waiting.filter(pc.invert(stale))
        won = closed.filter(pc.is_valid(closed["final"]))
        if won.num_rows:
            batch.emit("q4_winners", won.select(["auction", "category", "final"]))

    def on_watermark(self, batch: Batch) -> None:
        self._close(batch)

    def snapshot(self) -> bytes | None:
        """The open auctions and the waiting bids (Arrow tables) and the event time, as a
        ``nexmark_q4_winners`` snapshot (see runtime.state.snapshot)."""
        saved = (("open", self.open), ("waiting", self.waiting))
        tables = {n: t for n, t in saved if t is not None}  # None and empty differ
        return pack("nexmark_q4_winners", {"watermark": self.watermark}, tables=tables)

    def restore(self, blob: bytes) -> None:
        where = "the snapshot of q4_winners"
        state = unpack(blob, "nexmark_q4_winners", where=where)
        with reading("nexmark_q4_winners", where):
            self.watermark = int(state.meta["watermark"])
        self.open, self.waiting = state.tables.get("open"), state.tables.get("waiting")


class CategoryAverage(EntityKind):
    """Q4's second stage, an entity per category: the running average of winning bids,
    re-emitted whenever it changes (the last row per category is the answer)."""

    name = "q4_categories"
    key = "category"
    state: ClassVar[dict[str, str]] = {"total": "float64", "auctions": "int64"}
    topics = ("q4",)
    #: an upsert stream: a category's average is re-emitted once per batch that changes
    #: it, so the number of rows depends on batching; the last one per category does not
    changelog_topics: ClassVar[dict[str, tuple[str, ...]]] = {"q4": ("category",)}

    def apply(self, batch: Batch) -> None:
        st = batch.state
        price = batch.events["final"].to_numpy().astype(np.float64)
        np.add.at(st.cols["total"], batch.slots, price)
        np.add.at(st.cols["auctions"], batch.slots, 1)
        assert batch.order is not None and batch.starts is not None
        first = batch.order[batch.starts]  # one row per category in the batch
        cats = batch.events["category"].take(pa.array(first))
        uslots = batch.slots[first]
        total, n = st.cols["total"][uslots], st.cols["auctions"][uslots]
        batch.emit(
            "q4",
            pa.table({"category": cats, "avg_price": total / n, "auctions": n}),
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
        _bids("q5", source)
        .event_time("date_time")
        .key_by("auction")
        .window("q5_counts", WindowSpec(WINDOW_MS, HOP_MS), value="price")
        .then("q5_counts", "q5", argmax_kind("q5", "count"))
    )


def q7(source: Source | None = None) -> Pipeline:
    return (
        _bids("q7", source)
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


__all__ = ["NEXMARK", "QUERIES", "answer"]
