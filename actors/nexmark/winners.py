"""Q4's two stages as kinds: each auction's winning bid when it closes
(:class:`AuctionWinners`), then the running average of the winners per category
(:class:`CategoryAverage`). :func:`actors.nexmark.queries.q4` chains them."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from runtime.entities.kind import Batch, EntityKind
from runtime.state.snapshot import pack, reading, unpack


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
