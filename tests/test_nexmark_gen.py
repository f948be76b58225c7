"""The vectorized NEXMark generator (actors/nexmark/generator.py) against the reference's rules,
and the DuckDB reference queries (tests/nexmark_sql.py) on its output."""

from __future__ import annotations

import dataclasses
import re
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from nexmark_sql import QUERIES, connect, reference

from actors.nexmark.config import (
    BASE_TIME_MS,
    FIRST_NAMES,
    HOT_CHANNELS,
    LAST_NAMES,
    UNION_SCHEMA,
    US_CITIES,
    US_STATES,
    NexmarkConfig,
)
from actors.nexmark.generator import generate, union, write
from actors.nexmark.source import NexmarkSource, pregenerated
from runtime.errors import ConfigError

N = 50_000


@pytest.fixture(scope="module")
def tables() -> dict[str, pa.Table]:
    return generate(NexmarkConfig(events=N))


@pytest.fixture(scope="module")
def stream(tables) -> pa.Table:
    return union(tables)


def col(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy()


def test_defaults_are_the_reference_ones():
    cfg = NexmarkConfig()
    assert (cfg.events, cfg.events_per_second, cfg.base_time) == (100_000, 10_000, BASE_TIME_MS)
    assert (cfg.person_proportion, cfg.auction_proportion, cfg.bid_proportion) == (1, 3, 46)
    assert (cfg.hot_auction_ratio, cfg.hot_sellers_ratio, cfg.hot_bidders_ratio) == (2, 4, 4)
    assert (cfg.num_in_flight_auctions, cfg.num_active_people) == (100, 1000)
    assert cfg.out_of_order_group_size == 1 and cfg.inter_event_delay_us == 100.0
    assert BASE_TIME_MS == 1_436_918_400_000  # 2015-07-15T00:00:00Z
    for bad in ({"events": -1}, {"events_per_second": 0}, {"hot_auction_ratio": 0}):
        with pytest.raises(ConfigError):
            NexmarkConfig(**bad)


def test_proportions_exact_per_50_events(tables, stream):
    assert {k: t.num_rows for k, t in tables.items()} == {
        "person": N // 50,
        "auction": 3 * N // 50,
        "bid": 46 * N // 50,
    }
    kinds = np.array(stream.column("type").to_pylist()).reshape(-1, 50)
    assert (kinds[:, 0] == "person").all()
    assert (kinds[:, 1:4] == "auction").all()
    assert (kinds[:, 4:] == "bid").all()
    # any aligned block of 50 ids, also when the stream starts mid-block
    shifted = union(generate(NexmarkConfig(events=5_000, first_event_id=17)))
    ids = col(shifted, "event_id")
    assert ids[0] == 17 and (np.diff(ids) == 1).all()
    full = (ids // 50 > ids[0] // 50) & (ids // 50 < ids[-1] // 50)
    block = ids[full] // 50
    for kind, per_block in (("person", 1), ("auction", 3), ("bid", 46)):
        is_kind = np.array(shifted.column("type").to_pylist())[full] == kind
        assert (np.bincount(block[is_kind] - block[0]) == per_block).all()


def test_entity_ids_are_consecutive(tables):
    assert (col(tables["person"], "id") == 1000 + np.arange(N // 50)).all()
    assert (col(tables["auction"], "id") == 1000 + np.arange(3 * N // 50)).all()
    event_ids = np.concatenate([col(t, "event_id") for t in tables.values()])
    assert np.array_equal(np.sort(event_ids), np.arange(N))


def test_sellers_follow_the_reference_rules(tables):
    """A seller is the hot one (first of the block of 100 newest persons, created
    already) with p=3/4, else one of the 1000 newest persons or up to 10 not yet created
    (PersonGenerator.PERSON_ID_LEAD): not every seller precedes its auction."""
    auction = tables["auction"]
    persons_so_far = np.searchsorted(col(tables["person"], "event_id"), col(auction, "event_id"))
    last = persons_so_far - 1  # 0-based id of the newest person
    seller = col(auction, "seller") - 1000
    assert (seller >= np.maximum(persons_so_far - 1000, 0)).all()
    assert (seller <= last + 10).all()
    hot = seller == last // 100 * 100
    assert abs(hot.mean() - 0.75) < 0.04
    assert (seller <= last).mean() > 0.98  # the few others are the 'lead' ids


def test_bids_follow_the_reference_rules(tables):
    """A bid's auction is the hot one (first of the block of 100 newest auctions) with
    p=1/2, else one of the 100 newest auctions or up to 10 future ones; the bidder is
    the hot one (second of the block of 100 newest persons -- possibly the next person)
    with p=3/4, else like a random seller."""
    bid = tables["bid"]
    bid_ids = col(bid, "event_id")
    auctions_so_far = np.searchsorted(col(tables["auction"], "event_id"), bid_ids)
    last_a = auctions_so_far - 1
    a = col(bid, "auction") - 1000
    assert (last_a >= 0).all()
    assert (a >= np.maximum(last_a - 100, 0)).all() and (a <= last_a + 10).all()
    assert abs((a == last_a // 100 * 100).mean() - 0.5) < 0.02
    assert (a <= last_a).mean() > 0.93  # 1/2 * 10/111 of the bids name a future auction
    persons_so_far = np.searchsorted(col(tables["person"], "event_id"), bid_ids)
    last_p = persons_so_far - 1
    b = col(bid, "bidder") - 1000
    assert (b >= np.maximum(persons_so_far - 1000, 0)).all() and (b <= last_p + 10).all()
    assert abs((b == last_p // 100 * 100 + 1).mean() - 0.75) < 0.02


def test_values(tables):
    person, auction, bid = tables["person"], tables["auction"], tables["bid"]
    category = col(auction, "category")
    assert set(np.unique(category)) == {10, 11, 12, 13, 14}
    price, initial = col(bid, "price"), col(auction, "initial_bid")
    assert price.min() >= 100 and price.max() <= 100_000_000
    assert initial.min() >= 100 and (col(auction, "reserve") > initial).all()
    # log-uniform: each decade holds about a sixth of the prices
    decades = np.bincount(np.minimum(np.log10(price / 100).astype(int), 5), minlength=6)
    assert (abs(decades / len(price) - 1 / 6) < 0.02).all()
    length = col(auction, "expires") - col(auction, "date_time")
    # 1 + U[0, 2 * horizon), horizon = time of the next 1666 events = 166 ms
    assert length.min() >= 1 and length.max() <= 333 and 150 < length.mean() < 185
    assert set(person.column("state").to_pylist()) <= set(US_STATES)
    assert set(person.column("city").to_pylist()) <= set(US_CITIES)
    names = {f"{f} {s}" for f in FIRST_NAMES for s in LAST_NAMES}
    assert set(person.column("name").to_pylist()) <= names
    # trimmed random parts: inner spaces only, and all-space parts become empty (as in Java)
    part = r"([a-z]([a-z ]*[a-z])?)?"
    for email in person.column("email_address").to_pylist():
        assert re.fullmatch(f"{part}@{part}\\.com", email), email
    assert pc.all(pc.match_substring_regex(person["credit_card"], r"^(\d{4} ){3}\d{4}$")).as_py()
    for column, longest in (("item_name", 19), ("description", 99)):
        values = auction.column(column)
        assert pc.max(pc.utf8_length(values)).as_py() <= longest
        assert pc.all(pc.equal(pc.utf8_trim_whitespace(values), values)).as_py()
    channel = np.array(bid.column("channel").to_pylist())
    hot = np.isin(channel, HOT_CHANNELS)
    assert abs(hot.mean() - 0.5) < 0.02
    assert all(re.fullmatch(r"channel-\d{1,4}", c) for c in channel[~hot][:1000])
    url = r"https://www\.nexmark\.com/[a-z_]{3,4}/[a-z_]{3,4}/[a-z_]{3,4}/item\.htm\?query=1"
    assert pc.all(pc.match_substring_regex(bid["url"], f"^{url}(&channel_id=-?\\d+)?$")).as_py()
    for t in tables.values():  # padded by default, with letters only (nextExactString)
        assert pc.all(pc.match_substring_regex(t["extra"], "^[a-z]+$")).as_py()


def test_extra_bytes():
    padded = generate(NexmarkConfig(events=5_000))  # the default: the reference's sizes
    bid_extra = pc.utf8_length(padded["bid"]["extra"]).to_numpy()
    assert bid_extra.min() >= 54 and bid_extra.max() <= 81  # 100 - 32 bytes, +-20%
    for kind, avg in (("person", 200), ("auction", 500)):
        t = padded[kind]
        size = 8 + sum(
            pc.utf8_length(t[c]).to_numpy()
            for c in t.column_names
            if t.schema.field(c).type == pa.string()
        )
        assert abs(size.mean() / avg - 1) < 0.1 + (40 if kind == "auction" else 0) / avg
    short = generate(NexmarkConfig(events=1_000, extra_bytes=20))
    lengths = pc.utf8_length(short["bid"]["extra"]).to_numpy()
    assert lengths.min() >= 16 and lengths.max() < 24
    off = generate(NexmarkConfig(events=1_000, extra_bytes=0))
    assert all(t["extra"].to_pylist() == [""] * t.num_rows for t in off.values())


def test_timestamps_follow_the_event_rate(stream):
    ids, ts = col(stream, "event_id"), col(stream, "date_time")
    assert (np.diff(ts) >= 0).all()
    assert (ts == BASE_TIME_MS + ids // 10).all()  # 10,000 events/s: 10 per ms
    slow = union(generate(NexmarkConfig(events=3_000, events_per_second=3_000, base_time=0)))
    ids = col(slow, "event_id")
    expected = [int(i * (1e6 / 3_000)) // 1000 for i in ids.tolist()]  # Java (long)(n*d)/1000
    assert col(slow, "date_time").tolist() == expected
    assert expected[-1] == 999  # 3000 events at 3000/s span one second


def test_out_of_order_groups():
    cfg = NexmarkConfig(events=1_000, out_of_order_group_size=10)
    tables = generate(cfg)
    emitted = np.concatenate([col(t, "event_id") for t in tables.values()])
    assert np.array_equal(np.sort(emitted), np.arange(1_000))
    # emission order within a table is the generator's, which is shuffled per group
    bid_ids = col(tables["bid"], "event_id")
    assert (np.diff(bid_ids) < 0).any()
    assert np.array_equal(np.sort(bid_ids // 10), bid_ids // 10)  # but never across groups
    s = union(tables)
    assert (col(s, "date_time") == BASE_TIME_MS + col(s, "event_id") // 10).all()


def test_deterministic_by_seed():
    a, b = generate(NexmarkConfig(events=2_000)), generate(NexmarkConfig(events=2_000))
    assert all(a[k].equals(b[k]) for k in a)
    c = generate(NexmarkConfig(events=2_000, seed=2))
    assert not a["bid"].equals(c["bid"]) and not a["person"].equals(c["person"])
    # ids and times do not depend on the seed, only the draws do
    assert a["auction"]["id"].equals(c["auction"]["id"])
    assert a["bid"]["date_time"].equals(c["bid"]["date_time"])


def test_union(tables, stream):
    assert stream.schema == UNION_SCHEMA
    assert stream.num_rows == N
    assert (col(stream, "event_id") == np.arange(N)).all()
    kind = np.array(stream.column("type").to_pylist())
    for name, kinds in {
        "id": {"person", "auction"},
        "name": {"person"},
        "seller": {"auction"},
        "expires": {"auction"},
        "price": {"bid"},
        "url": {"bid"},
    }.items():
        valid = stream.column(name).is_valid().to_numpy(zero_copy_only=False)
        assert np.array_equal(valid, np.isin(kind, list(kinds))), name
    bids = stream.filter(pc.equal(stream["type"], "bid"))
    assert bids["price"].equals(tables["bid"]["price"])


def test_write_roundtrip(tables, tmp_path):
    write(tables, tmp_path / "nexmark")
    for kind, table in tables.items():
        assert pq.read_table(tmp_path / "nexmark" / f"{kind}.parquet").equals(table)


def test_million_events_fast():
    start = time.perf_counter()
    tables = generate(NexmarkConfig(events=1_000_000))
    elapsed = time.perf_counter() - start
    assert sum(t.num_rows for t in tables.values()) == 1_000_000
    assert elapsed < 5.0, f"{elapsed:.2f}s"  # about 0.4 s on 2 cores; generous for CI


@pytest.fixture(scope="module")
def con(tables):
    c = connect(tables)
    yield c
    c.close()


@pytest.mark.parametrize("q", sorted(QUERIES))
def test_reference_queries_return_rows(con, q):
    assert reference(con, q).num_rows > 0


def test_reference_query_semantics(con, tables):
    bid = tables["bid"]
    assert reference(con, "q0").num_rows == bid.num_rows
    q1 = reference(tables, "q1")  # also from the dict
    assert q1.schema.field("price").type == pa.decimal128(23, 3)
    assert float(q1["price"][0].as_py()) == pytest.approx(0.908 * bid["price"][0].as_py())
    assert all(a % 123 == 0 for a in reference(con, "q2")["auction"].to_pylist())
    q3 = reference(con, "q3")
    assert set(q3["state"].to_pylist()) <= {"OR", "ID", "CA"}
    assert reference(con, "q4")["category"].to_pylist() == [10, 11, 12, 13, 14]
    # q5: per window the max count, computed here with numpy
    q5 = reference(con, "q5")
    t, a = col(bid, "date_time"), col(bid, "auction")
    for row in q5.to_pylist()[:5]:
        inside = (t >= row["window_start"]) & (t < row["window_end"])
        counts = np.unique(a[inside], return_counts=True)
        assert row["num"] == counts[1].max() == counts[1][counts[0] == row["auction"]][0]
        assert row["window_start"] % 2000 == 0 and row["window_end"] - row["window_start"] == 10_000
    # q7: the max price of each tumbling window
    for row in reference(con, "q7").to_pylist():
        assert row["window_start"] == row["date_time"] // 10_000 * 10_000
        inside = (t >= row["window_start"]) & (t < row["window_end"])
        assert row["price"] == col(bid, "price")[inside].max()
    # q8: registered and sold in the same tumbling window
    person = {r["id"]: r for r in tables["person"].to_pylist()}
    sellers = {
        (r["seller"], r["date_time"] // 10_000 * 10_000) for r in tables["auction"].to_pylist()
    }
    q8 = reference(con, "q8").to_pylist()
    for row in q8:
        p = person[row["id"]]
        assert row["name"] == p["name"] and row["window_start"] == p["date_time"] // 10_000 * 10_000
    expected = {(pid, p["date_time"] // 10_000 * 10_000) for pid, p in person.items()} & sellers
    assert {(r["id"], r["window_start"]) for r in q8} == expected
    with pytest.raises(ValueError):
        reference(con, "q6")


# -- the generating source (actors/nexmark/source.py) -----------------------------------

SMALL = NexmarkConfig(events=23_000, chunk_events=5_000, seed=7)


def read(src: NexmarkSource, start: int = 0) -> tuple[pa.Table, list[int]]:
    got = list(src.batches(start))
    return pa.concat_tables([b for b, _ in got]), [end for _, end in got]


@pytest.mark.parametrize("prefetch", [0, 2])
def test_source_is_the_pregenerated_stream(prefetch):
    """Batch by batch, across chunk boundaries, from any position: the rows of
    union(generate(config)), in order, with positions that count them."""
    whole = pregenerated(SMALL)
    assert whole.equals(union(generate(SMALL))) and whole.num_rows == SMALL.events
    got, ends = read(NexmarkSource(SMALL, batch_size=3_000, prefetch=prefetch))
    assert got.equals(whole)
    assert ends == [*range(3_000, 23_000, 3_000), 23_000]
    for start in (1, 4_999, 5_000, 12_345, 22_999):
        tail, ends = read(NexmarkSource(SMALL, batch_size=4_000, prefetch=prefetch), start)
        assert tail.equals(whole.slice(start)), start
        assert ends[-1] == 23_000 and ends[0] == min(start + 4_000, 23_000)
    assert list(NexmarkSource(SMALL, prefetch=prefetch).batches(23_000)) == []


def test_source_deterministic_by_seed():
    a, _ = read(NexmarkSource(SMALL, batch_size=6_000))
    b, _ = read(NexmarkSource(SMALL, batch_size=10_000, prefetch=0))
    assert a.equals(b)  # the batch size and the thread change nothing
    other = dataclasses.replace(SMALL, seed=8)
    c, _ = read(NexmarkSource(other, batch_size=6_000))
    assert not a["price"].equals(c["price"]) and not a["extra"].equals(c["extra"])
    assert a["event_id"].equals(c["event_id"]) and a["date_time"].equals(c["date_time"])
    # the checkpoint names the stream: another seed, padding or chunking is another id
    ids = {
        NexmarkSource(cfg).id
        for cfg in (
            SMALL,
            other,
            dataclasses.replace(SMALL, extra_bytes=0),
            dataclasses.replace(SMALL, chunk_events=1_000),
        )
    }
    assert len(ids) == 4
    assert NexmarkSource(NexmarkConfig()).id == "nexmark:seed=1:events=100000"


def test_source_pads_like_the_reference():
    """Bids carry 100 - 4 * 8 = 68 letters +-20%; an event's size (8 + its strings, or
    its numbers for bids) averages the reference's 200 / 500 / 100 bytes."""
    stream, _ = read(NexmarkSource(SMALL))
    assert stream.schema == UNION_SCHEMA
    kind = stream["type"]
    extra = pc.utf8_length(stream["extra"]).to_numpy()
    bid = pc.equal(kind, "bid").to_numpy(zero_copy_only=False)
    assert extra[bid].min() >= 54 and extra[bid].max() <= 81 and abs(extra[bid].mean() - 68) < 1
    person = stream.filter(pc.equal(kind, "person"))
    size = 8 + sum(
        pc.utf8_length(person[c]).to_numpy()
        for c in ("name", "email_address", "credit_card", "city", "state", "extra")
    )
    assert abs(size.mean() - 200) < 8
    auction = stream.filter(pc.equal(kind, "auction"))
    size = (
        8
        + 5 * 8
        + sum(pc.utf8_length(auction[c]).to_numpy() for c in ("item_name", "description", "extra"))
    )
    assert abs(size.mean() - 500) < 10
    off, _ = read(NexmarkSource(dataclasses.replace(SMALL, extra_bytes=0)))
    assert pc.all(pc.equal(off["extra"], "")).as_py()
    assert (
        off.drop_columns(["extra"])
        .select(["event_id", "type"])
        .equals(stream.select(["event_id", "type"]))
    )


def test_source_errors_reach_the_reader_and_closing_stops_the_thread(monkeypatch):
    before = {t.name for t in threading.enumerate()}
    it = NexmarkSource(SMALL, batch_size=1_000, prefetch=1).batches()
    next(it)
    assert any(t.name == "nexmark-generator" for t in threading.enumerate())
    it.close()  # the reader stops early: the thread ends with it
    assert "nexmark-generator" not in {t.name for t in threading.enumerate()} - before

    def broken(*_a, **_k):
        raise ValueError("generator broke")

    monkeypatch.setattr("actors.nexmark.source.union", broken)
    with pytest.raises(ValueError, match="generator broke"):
        read(NexmarkSource(SMALL, prefetch=2))
    for bad in ({"batch_size": 0}, {"prefetch": -1}):
        with pytest.raises(ConfigError):
            NexmarkSource(SMALL, **bad)
    with pytest.raises(ConfigError, match="chunk_events"):
        NexmarkConfig(chunk_events=1_000, out_of_order_group_size=300)
