"""The stream, entity kind and exactness check of ``scripts/bench_scale.py``: Zipf activity.

Event ``p`` (its position, also its ``event_id``) of a stream over ``customers`` ids:

* ``p < customers``: the first pass, every customer exactly once, in blocks of
  ``batch_size`` positions shuffled within the block (so the whole population is
  created, then most of it goes cold);
* after that: a customer drawn by rank from a bounded Zipf law with exponent
  ``zipf`` (``P(rank <= k) ~ log k / log N`` for 1.0), ranks spread over the id
  space by a fixed multiplier so the hot set is not the first ids.

Each block is generated from ``(seed, block)`` alone, so the stream can be resumed at
any position and regenerated for checking without storing it.

>>> src = ScaleSource(customers=10, events=25, batch_size=8, seed=1)
>>> [(t.num_rows, end) for t, end in src.batches(start=3)]
[(5, 8), (8, 16), (8, 24), (1, 25)]
>>> ids = np.concatenate([b.ids for b in src.blocks()])
>>> sorted(ids[:10].tolist()) == list(range(10)) and int(ids.max()) < 10
True
>>> exp = expected_sums(src, np.array([3, 7]))
>>> int(exp["n"].sum()) == int(np.isin(ids, [3, 7]).sum())
True
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from runtime import Batch, Column, EntityKind, EventSchema

SCHEMA = EventSchema(
    "purchases",
    [
        Column("event_id", "int64", min=0),
        Column("customer_id", "string"),
        Column("cents", "int64", min=0),
    ],
)


class Tally(EntityKind):
    """Per customer: how many events, their summed cents, the last event id applied."""

    name = "scale_customers"
    key = "customer_id"
    state = {"n": "int64", "cents": "int64", "last_id": "int64"}

    def apply(self, batch: Batch) -> None:
        cols, slots = batch.state.cols, batch.slots
        np.add.at(cols["n"], slots, 1)
        np.add.at(cols["cents"], slots, batch.events.column("cents").to_numpy())
        np.maximum.at(cols["last_id"], slots, batch.events.column("event_id").to_numpy())


def customer_keys(ids: np.ndarray) -> pa.Array:
    """Customer ids as the stream's keys: ``c<id>``, built column-wise."""
    return pc.binary_join_element_wise("c", pc.cast(pa.array(ids), pa.string()), "")


def _multiplier(n: int) -> int:
    """An odd multiplier coprime to ``n``: rank -> id is then a bijection of the ids."""
    a = 0x9E3779B1 % max(n, 1) | 1
    while math.gcd(a, n) != 1:
        a += 2
    return a


@dataclass(frozen=True)
class Block:
    start: int  # position of the first event
    ids: np.ndarray  # customer id of each event (int64)
    cents: np.ndarray  # int64


class ScaleSource:
    """The stream as a resumable source (see the module docstring)."""

    def __init__(
        self,
        customers: int,
        events: int,
        batch_size: int = 100_000,
        seed: int = 7,
        zipf: float = 1.0,
    ) -> None:
        if customers < 1 or events < 1:
            raise ValueError("need at least one customer and one event")
        self.customers, self.events, self.batch_size = customers, events, batch_size
        self.seed, self.zipf = seed, zipf
        self.id = f"scale:seed={seed}:customers={customers}:events={events}:zipf={zipf}"
        self._mult = _multiplier(customers)

    def block(self, k: int) -> Block:
        a = k * self.batch_size
        b = min(a + self.batch_size, self.events)
        rng = np.random.default_rng((self.seed, k))
        ids = np.empty(b - a, dtype=np.int64)
        first = max(0, min(b, self.customers) - a)  # positions of the first pass
        if first:
            ids[:first] = a + rng.permutation(first)
        if b - a > first:
            ids[first:] = self._zipf_ids(rng, b - a - first)
        cents = rng.integers(1, 100_000, size=b - a, dtype=np.int64)
        return Block(a, ids, cents)

    def _zipf_ids(self, rng: np.random.Generator, m: int) -> np.ndarray:
        n, s, u = self.customers, self.zipf, rng.random(m)
        if abs(s - 1.0) < 1e-9:
            rank = np.exp(u * math.log(n))  # bounded Zipf, s = 1: log-uniform ranks
        else:
            rank = (u * (n ** (1 - s) - 1) + 1) ** (1 / (1 - s))
        rank = np.minimum(rank.astype(np.int64), n) - 1  # 0-based
        return (rank * self._mult) % n

    def n_blocks(self) -> int:
        return -(-self.events // self.batch_size)

    def blocks(self, first: int = 0) -> Iterator[Block]:
        for k in range(first, self.n_blocks()):
            yield self.block(k)

    @staticmethod
    def table(blk: Block) -> pa.Table:
        ids = np.arange(blk.start, blk.start + len(blk.ids), dtype=np.int64)
        return pa.table(
            {"event_id": ids, "customer_id": customer_keys(blk.ids), "cents": blk.cents},
            schema=SCHEMA.arrow_schema,
        )

    def batches(self, start: int = 0) -> Iterator[tuple[pa.Table, int]]:
        for blk in self.blocks(start // self.batch_size):
            t = self.table(blk)
            end = blk.start + t.num_rows
            yield t.slice(max(0, start - blk.start)), end


def expected_sums(src: ScaleSource, sample: np.ndarray) -> dict[str, np.ndarray]:
    """What the profiles of ``sample`` (sorted unique ids) must hold, from the stream
    regenerated; ``total_n``/``total_cents`` over every customer as well."""
    n = np.zeros(len(sample), dtype=np.int64)
    cents = np.zeros(len(sample), dtype=np.int64)
    last = np.full(len(sample), -1, dtype=np.int64)
    total_cents = 0
    for blk in src.blocks():
        total_cents += int(blk.cents.sum())
        pos = np.minimum(np.searchsorted(sample, blk.ids), len(sample) - 1)
        hit = sample[pos] == blk.ids
        idx = pos[hit]
        np.add.at(n, idx, 1)
        np.add.at(cents, idx, blk.cents[hit])
        np.maximum.at(last, idx, blk.start + np.flatnonzero(hit))
    return {
        "n": n,
        "cents": cents,
        "last_id": last,
        "total_n": np.int64(src.events),
        "total_cents": np.int64(total_cents),
    }


def check(src: ScaleSource, data_dir: Path, sample: np.ndarray, got: pa.Table | None) -> dict:
    """Stored (DuckDB) and restored (lookup) profiles of ``sample`` against the stream."""
    from runtime.state.sql import query

    exp = expected_sums(src, sample)
    keys = customer_keys(sample).to_pylist()
    in_list = ",".join(f"'{k}'" for k in keys)
    stored = query(
        data_dir,
        f"SELECT customer_id, n, cents, last_id FROM {Tally.name} WHERE customer_id IN ({in_list})",
    )
    totals = query(
        data_dir, f"SELECT count(*) AS rows, sum(n) AS n, sum(cents) AS c FROM {Tally.name}"
    )
    out: dict[str, Any] = {"sample": len(sample), "mismatches": []}
    want = {
        k: (int(exp["n"][i]), int(exp["cents"][i]), int(exp["last_id"][i]))
        for i, k in enumerate(keys)
    }
    sides = {"stored": stored}
    if got is not None:
        sides["restored"] = got
    for side, table in sides.items():
        have = {
            r["customer_id"]: (r["n"], r["cents"], r["last_id"])
            for r in table.select(["customer_id", "n", "cents", "last_id"]).to_pylist()
            if r["customer_id"] in want
        }
        for k, w in want.items():
            if have.get(k) != w:
                out["mismatches"].append({"side": side, "key": k, "want": w, "have": have.get(k)})
    t = totals.to_pylist()[0]
    out["totals"] = {"rows": t["rows"], "n": int(t["n"] or 0), "cents": int(t["c"] or 0)}
    out["totals_expected"] = {
        "rows": min(src.customers, src.events),
        "n": int(exp["total_n"]),
        "cents": int(exp["total_cents"]),
    }
    if out["totals"] != out["totals_expected"]:
        out["mismatches"].append({"side": "totals", **out["totals"]})
    out["exact"] = not out["mismatches"]
    return out
