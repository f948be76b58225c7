"""The NEXMark auction event generator, vectorized with numpy and pyarrow.

A port of the standard NEXMark generator -- Apache Beam's
``sdks/java/testing/nexmark`` (``sources/generator``) and its descendant in
``nexmark/nexmark`` (``nexmark-flink/.../flink/generator``: ``GeneratorConfig``,
``NexmarkGenerator``, ``model/{Person,Auction,Bid,Price,Strings}Generator``) -- that
builds whole columns at once instead of one event per call. The id logic, the ratios
and the distributions are the reference's; the random numbers come from numpy and are
not Java's, so values differ from a Java run with the same settings.

The model
---------
Events are numbered. Event *n* (``n = first_event_number + i`` for the *i*-th event
emitted) has the id ``event_id = first_event_id + adjusted(n)``, where ``adjusted``
permutes every group of ``out_of_order_group_size`` numbers (``base + n*953 mod size``;
size 1, the default, leaves them in order). Its kind is ``event_id % 50``:
0 is a person, 1-3 an auction, 4-49 a bid (default proportions 1:3:46), so every aligned
block of 50 ids holds exactly one person, three auctions and 46 bids. Its time is
``base_time + trunc(adjusted(n) * 1e6 / events_per_second) // 1000`` ms: at the default
10,000 events/s, ten events per millisecond, never decreasing with the id.

Ids are not drawn but derived from the event id, so every kind "knows" how many of
each other kind exist already:

* person ``id = 1000 + `` persons so far; auction ``id = 1000 + `` auctions so far.
* auction ``seller``: with probability ``1 - 1/hot_sellers_ratio`` (3/4) the *hot*
  seller, the first person of the current block of 100 persons; otherwise a random
  one of the last ``num_active_people`` (1000) persons **or up to 10 not created
  yet** (the reference's ``PERSON_ID_LEAD``, so that person and auction appear swapped
  in time).
* bid ``auction``: with probability ``1 - 1/hot_auction_ratio`` (1/2) the first
  auction of the current block of 100; otherwise one of the last
  ``num_in_flight_auctions`` (100) auctions or up to 10 future ones.
* bid ``bidder``: with probability ``1 - 1/hot_bidders_ratio`` (3/4) the *second*
  person of the current block of 100 (so hot bidders differ from hot sellers -- and
  may be the very next person to register); otherwise like a random seller.

So a foreign key nearly always points at an earlier event, but the reference allows
it to point up to 10 persons/auctions ahead; those may lie beyond the generated range.

Values: names from 11 first x 9 last names, cities/states from short US lists (small
on purpose so the queries match on small inputs); ``category`` 10..14; prices
``round(10 ** (6u) * 100)`` for uniform *u*, i.e. log-uniform over 100..100,000,000;
``reserve = initial_bid + another price``; an auction ``expires`` 1 ms to twice the
time 100 auctions take later (so about 100 are open at once); a bid's ``channel`` is
one of four hot ones (Google, Facebook, Baidu, Apple) half of the time, else one of
``channel-0`` .. ``channel-9999``, each with a fixed random ``url``.

``extra`` pads events with letters. The reference pads each event to an average of
200 (person), 500 (auction), 100 (bid) bytes; that is the default ``extra_bytes=None``
here. ``extra_bytes=0`` leaves it empty; a positive value makes it about that long
(+-20%).

Events are drawn in chunks of ``chunk_events`` (50,000), each from its own seeded
streams, so that a source can generate the stream batch by batch while it is read
(:class:`actors.nexmark.source.NexmarkSource`) and still give exactly what
:func:`generate` gives at once.

Times (``date_time``, ``expires``) are int64 milliseconds since the epoch.

>>> tables = generate(NexmarkConfig(events=100))
>>> {kind: t.num_rows for kind, t in tables.items()}
{'person': 2, 'auction': 6, 'bid': 92}
>>> tables["person"].column("id").to_pylist(), tables["auction"].column("event_id").to_pylist()
([1000, 1001], [1, 2, 3, 51, 52, 53])
>>> union(tables).column("type").to_pylist()[:6]
['person', 'auction', 'auction', 'auction', 'bid', 'bid']
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from actors.nexmark.config import (
    AUCTION_ID_LEAD,
    AUCTION_SCHEMA,
    BID_SCHEMA,
    CHANNELS_NUMBER,
    FIRST_AUCTION_ID,
    FIRST_CATEGORY_ID,
    FIRST_NAMES,
    FIRST_PERSON_ID,
    HOT_AUCTION_RATIO,
    HOT_BIDDER_RATIO,
    HOT_CHANNELS,
    HOT_CHANNELS_RATIO,
    HOT_SELLER_RATIO,
    LAST_NAMES,
    NUM_CATEGORIES,
    OUT_OF_ORDER_MULTIPLIER,
    PERSON_ID_LEAD,
    PERSON_SCHEMA,
    US_CITIES,
    US_STATES,
    NexmarkConfig,
)
from actors.nexmark.stream import union
from actors.nexmark.strings import byte_lengths, channel_table, credit_cards, extra, next_strings


def generate(config: NexmarkConfig) -> dict[str, pa.Table]:
    """Generate ``config.events`` events, split by kind: the chunks of :func:`chunks`
    concatenated (their draws do not depend on how the stream is read).

    Returns ``{'person': ..., 'auction': ..., 'bid': ...}`` with the columns of
    :data:`PERSON_SCHEMA`, :data:`AUCTION_SCHEMA`, :data:`BID_SCHEMA`; rows are in
    emission order (= ``event_id`` order unless ``out_of_order_group_size > 1``).
    ``event_id`` is the global event id, unique across the three tables.

    >>> t = generate(NexmarkConfig(events=50, seed=3))
    >>> t["person"].to_pylist()[0]["id"], t["person"].column("date_time")[0].as_py()
    (1000, 1436918400000)
    >>> t["bid"].column("date_time")[-1].as_py() - 1436918400000  # event 49: 49 // 10 ms
    4
    >>> sorted(set(t["auction"].column("category").to_pylist()) - {10, 11, 12, 13, 14})
    []
    """
    parts = [chunk for _, chunk in chunks(config)]
    if len(parts) == 1:
        return parts[0]
    return {k: pa.concat_tables([p[k] for p in parts]).combine_chunks() for k in parts[0]}


def chunks(config: NexmarkConfig, start: int = 0) -> Iterator[tuple[int, dict[str, pa.Table]]]:
    """The stream's chunks from the one holding position ``start`` on, each as (its
    position, its events split by kind); position p is the p-th event emitted.

    >>> [(lo, t["bid"].num_rows) for lo, t in chunks(NexmarkConfig(events=250, chunk_events=100))]
    [(0, 92), (100, 92), (200, 46)]
    """
    size = config.chunk_events
    first = min(start, config.events) // size * size
    for lo in range(first, max(config.events, 1), size):
        n = min(size, config.events - lo)
        yield (
            lo,
            _chunk(replace(config, events=n, first_event_number=config.first_event_number + lo)),
        )


def _chunk(config: NexmarkConfig) -> dict[str, pa.Table]:
    """``config.events`` events from event number ``config.first_event_number`` on."""
    cfg = config
    count = np.arange(cfg.events, dtype=np.int64)
    number = cfg.first_event_number + count
    group = cfg.out_of_order_group_size
    # GeneratorConfig.nextAdjustedEventNumber: a fixed permutation inside each group
    adjusted = (
        number
        if group == 1
        else (number // group) * group + (number * OUT_OF_ORDER_MULTIPLIER) % group
    )
    event_id = cfg.first_event_id + adjusted
    date_time = cfg.timestamp_for_event(adjusted)
    rem = event_id % cfg.total_proportion
    is_person = rem < cfg.person_proportion
    is_auction = ~is_person & (rem < cfg.person_proportion + cfg.auction_proportion)
    is_bid = ~is_person & ~is_auction

    def rng(stream: int) -> np.random.Generator:
        # one stream per kind; the start of the stream is part of the seed so that a
        # continuation (first_event_id/number > 0) does not repeat the same draws
        return np.random.default_rng([cfg.seed, stream, cfg.first_event_id, cfg.first_event_number])

    return {
        "person": _persons(cfg, rng(1), event_id[is_person], date_time[is_person]),
        "auction": _auctions(
            cfg, rng(2), event_id[is_auction], date_time[is_auction], adjusted[is_auction]
        ),
        "bid": _bids(cfg, rng(3), event_id[is_bid], date_time[is_bid]),
    }


def write(tables: dict[str, pa.Table], out_dir: str | Path) -> None:
    """Write ``person.parquet``, ``auction.parquet``, ``bid.parquet`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for kind, table in tables.items():
        pq.write_table(table, out / f"{kind}.parquet")


# -- ids -------------------------------------------------------------------------------


def _last_base0_person_id(cfg: NexmarkConfig, event_id: np.ndarray) -> np.ndarray:
    """PersonGenerator.lastBase0PersonId: the newest person at ``event_id`` (0-based)."""
    epoch, offset = np.divmod(event_id, cfg.total_proportion)
    offset = np.minimum(offset, cfg.person_proportion - 1)
    return epoch * cfg.person_proportion + offset


def _last_base0_auction_id(cfg: NexmarkConfig, event_id: np.ndarray) -> np.ndarray:
    """AuctionGenerator.lastBase0AuctionId: the newest auction at ``event_id`` (0-based).

    -1 for a person event before any auction; only used for auctions and bids.
    """
    epoch, offset = np.divmod(event_id, cfg.total_proportion)
    p, a = cfg.person_proportion, cfg.auction_proportion
    before = offset < p  # a person: the last auction of the previous epoch
    epoch = epoch - before
    offset = np.where(before | (offset >= p + a), a - 1, offset - p)
    return epoch * a + offset


def _next_base0_person_id(
    cfg: NexmarkConfig, rng: np.random.Generator, event_id: np.ndarray
) -> np.ndarray:
    """PersonGenerator.nextBase0PersonId: one of the active persons or a few leads."""
    num_people = _last_base0_person_id(cfg, event_id) + 1
    active = np.minimum(num_people, cfg.num_active_people)
    return num_people - active + rng.integers(0, active + PERSON_ID_LEAD)


def _next_base0_auction_id(
    cfg: NexmarkConfig, rng: np.random.Generator, event_id: np.ndarray
) -> np.ndarray:
    """AuctionGenerator.nextBase0AuctionId: an auction likely still open, or a few leads."""
    last = _last_base0_auction_id(cfg, event_id)
    low = np.maximum(last - cfg.num_in_flight_auctions, 0)
    return low + rng.integers(0, last - low + 1 + AUCTION_ID_LEAD)


def _hot(rng: np.random.Generator, ratio: int, n: int) -> np.ndarray:
    """``random.nextInt(ratio) > 0``: True with probability ``1 - 1/ratio``."""
    return rng.integers(0, ratio, n) > 0


def _hot_or_next(
    cfg: NexmarkConfig,
    rng: np.random.Generator,
    event_id: np.ndarray,
    ratio: int,
    hot: np.ndarray,
    next_id: Callable[[NexmarkConfig, np.random.Generator, np.ndarray], np.ndarray],
) -> np.ndarray:
    """The ``hot`` id with probability ``1 - 1/ratio``, else ``next_id``'s draw (the hot
    choice is drawn first, as the reference does)."""
    return np.where(_hot(rng, ratio, len(event_id)), hot, next_id(cfg, rng, event_id))


def _next_price(rng: np.random.Generator, n: int) -> np.ndarray:
    """PriceGenerator.nextPrice: ``Math.round(10^(u*6) * 100)``, log-uniform 100..1e8."""
    return np.floor(10.0 ** (rng.random(n) * 6.0) * 100.0 + 0.5).astype(np.int64)


# -- the three kinds -------------------------------------------------------------------


def _persons(
    cfg: NexmarkConfig, rng: np.random.Generator, event_id: np.ndarray, date_time: np.ndarray
) -> pa.Table:
    n = len(event_id)
    full_names = pa.array([f"{f} {s}" for f in FIRST_NAMES for s in LAST_NAMES], pa.string())
    first = rng.integers(0, len(FIRST_NAMES), n)
    name = full_names.take(pa.array(first * len(LAST_NAMES) + rng.integers(0, len(LAST_NAMES), n)))
    domain = pc.binary_join_element_wise(next_strings(rng, n, 5), ".com", "")
    email = pc.binary_join_element_wise(next_strings(rng, n, 7), domain, "@")
    credit_card = credit_cards(rng, n)
    city = pa.array(US_CITIES, pa.string()).take(pa.array(rng.integers(0, len(US_CITIES), n)))
    state = pa.array(US_STATES, pa.string()).take(pa.array(rng.integers(0, len(US_STATES), n)))
    size = 8 + sum(byte_lengths(a) for a in (name, email, credit_card, city, state))
    columns = [
        event_id,
        _last_base0_person_id(cfg, event_id) + FIRST_PERSON_ID,
        name,
        email,
        credit_card,
        city,
        state,
        date_time,
        extra(cfg, rng, size, cfg.avg_person_byte_size, n),
    ]
    return pa.Table.from_arrays(columns, schema=PERSON_SCHEMA)


def _auctions(
    cfg: NexmarkConfig,
    rng: np.random.Generator,
    event_id: np.ndarray,
    date_time: np.ndarray,
    adjusted: np.ndarray,
) -> pa.Table:
    n = len(event_id)
    last_person = _last_base0_person_id(cfg, event_id)
    hot_seller = last_person // HOT_SELLER_RATIO * HOT_SELLER_RATIO
    seller = _hot_or_next(
        cfg, rng, event_id, cfg.hot_sellers_ratio, hot_seller, _next_base0_person_id
    )
    category = FIRST_CATEGORY_ID + rng.integers(0, NUM_CATEGORIES, n)
    initial_bid = _next_price(rng, n)
    # AuctionGenerator.nextAuctionLengthMs: uniform over twice the time until the
    # num_in_flight_auctions-th next auction, so about that many auctions are open
    events_for_auctions = (
        cfg.num_in_flight_auctions * cfg.total_proportion // cfg.auction_proportion
    )
    horizon = cfg.timestamp_for_event(adjusted + events_for_auctions) - date_time
    expires = date_time + 1 + rng.integers(0, np.maximum(horizon * 2, 1))
    item_name = next_strings(rng, n, 20)
    description = next_strings(rng, n, 100)
    reserve = initial_bid + _next_price(rng, n)
    size = 8 + byte_lengths(item_name) + byte_lengths(description) + 8 * 5
    columns = [
        event_id,
        _last_base0_auction_id(cfg, event_id) + FIRST_AUCTION_ID,
        item_name,
        description,
        initial_bid,
        reserve,
        date_time,
        expires,
        seller + FIRST_PERSON_ID,
        category,
        extra(cfg, rng, size, cfg.avg_auction_byte_size, n),
    ]
    return pa.Table.from_arrays(columns, schema=AUCTION_SCHEMA)


def _bids(
    cfg: NexmarkConfig, rng: np.random.Generator, event_id: np.ndarray, date_time: np.ndarray
) -> pa.Table:
    n = len(event_id)
    last_auction = _last_base0_auction_id(cfg, event_id)
    hot_auction = last_auction // HOT_AUCTION_RATIO * HOT_AUCTION_RATIO
    auction = _hot_or_next(
        cfg, rng, event_id, cfg.hot_auction_ratio, hot_auction, _next_base0_auction_id
    )
    last_person = _last_base0_person_id(cfg, event_id)
    hot_bidder = last_person // HOT_BIDDER_RATIO * HOT_BIDDER_RATIO + 1
    bidder = _hot_or_next(
        cfg, rng, event_id, cfg.hot_bidders_ratio, hot_bidder, _next_base0_person_id
    )
    price = _next_price(rng, n)
    channels, urls = channel_table(cfg)
    pick = np.where(
        _hot(rng, HOT_CHANNELS_RATIO, n),
        rng.integers(0, len(HOT_CHANNELS), n),
        len(HOT_CHANNELS) + rng.integers(0, CHANNELS_NUMBER, n),
    )
    pick_arr = pa.array(pick)
    columns = [
        event_id,
        auction + FIRST_AUCTION_ID,
        # FIRST_PERSON_ID once: the Flink port adds it twice (nexmark/nexmark issue #30)
        bidder + FIRST_PERSON_ID,
        price,
        channels.take(pick_arr),
        urls.take(pick_arr),
        date_time,
        extra(cfg, rng, 8 * 4, cfg.avg_bid_byte_size, n),
    ]
    return pa.Table.from_arrays(columns, schema=BID_SCHEMA)


__all__ = ["chunks", "generate", "union", "write"]  # union: re-exported from its module
