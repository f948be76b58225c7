"""The NEXMark stream's constants, table schemas and generator settings.

Values follow the reference generator (see :mod:`actors.nexmark.generator`); the
schemas are those of the three tables :func:`~actors.nexmark.generator.generate`
returns and of their :func:`~actors.nexmark.generator.union`.

>>> NexmarkConfig().total_proportion, NexmarkConfig(events_per_second=1000).inter_event_delay_us
(50, 1000.0)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from runtime.errors import ConfigError

# Constants of the reference that are not configuration there either.
FIRST_PERSON_ID = 1000  # GeneratorConfig.FIRST_PERSON_ID: ids start high so queries match early
FIRST_AUCTION_ID = 1000  # GeneratorConfig.FIRST_AUCTION_ID
FIRST_CATEGORY_ID = 10  # GeneratorConfig.FIRST_CATEGORY_ID
NUM_CATEGORIES = 5  # AuctionGenerator.NUM_CATEGORIES
PERSON_ID_LEAD = 10  # PersonGenerator: persons not yet created that may be referenced
AUCTION_ID_LEAD = 10  # AuctionGenerator: same for auctions
HOT_SELLER_RATIO = 100  # AuctionGenerator: hot seller = first person of each block of 100
HOT_AUCTION_RATIO = 100  # BidGenerator: hot auction = first auction of each block of 100
HOT_BIDDER_RATIO = 100  # BidGenerator: hot bidder = second person of each block of 100
HOT_CHANNELS_RATIO = 2  # BidGenerator: 1 - 1/2 of the bids come from a hot channel
CHANNELS_NUMBER = 10_000  # BidGenerator: other channels are channel-0 .. channel-9999
MIN_STRING_LENGTH = 3  # StringsGenerator
OUT_OF_ORDER_MULTIPLIER = 953  # GeneratorConfig.nextAdjustedEventNumber
BASE_TIME_MS = 1_436_918_400_000  # Beam NexmarkUtils.BASE_TIME = 2015-07-15T00:00:00Z

US_STATES = ("AZ", "CA", "ID", "OR", "WA", "WY")
US_CITIES = (
    "Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland",
    "Bend", "Redmond", "Seattle", "Kent", "Cheyenne",
)  # fmt: skip
FIRST_NAMES = (
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
)  # fmt: skip
LAST_NAMES = (
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
)  # fmt: skip
HOT_CHANNELS = ("Google", "Facebook", "Baidu", "Apple")

PERSON_SCHEMA = pa.schema(
    [
        ("event_id", pa.int64()),
        ("id", pa.int64()),
        ("name", pa.string()),
        ("email_address", pa.string()),
        ("credit_card", pa.string()),
        ("city", pa.string()),
        ("state", pa.string()),
        ("date_time", pa.int64()),
        ("extra", pa.string()),
    ]
)
AUCTION_SCHEMA = pa.schema(
    [
        ("event_id", pa.int64()),
        ("id", pa.int64()),
        ("item_name", pa.string()),
        ("description", pa.string()),
        ("initial_bid", pa.int64()),
        ("reserve", pa.int64()),
        ("date_time", pa.int64()),
        ("expires", pa.int64()),
        ("seller", pa.int64()),
        ("category", pa.int64()),
        ("extra", pa.string()),
    ]
)
BID_SCHEMA = pa.schema(
    [
        ("event_id", pa.int64()),
        ("auction", pa.int64()),
        ("bidder", pa.int64()),
        ("price", pa.int64()),
        ("channel", pa.string()),
        ("url", pa.string()),
        ("date_time", pa.int64()),
        ("extra", pa.string()),
    ]
)
SCHEMAS = {"person": PERSON_SCHEMA, "auction": AUCTION_SCHEMA, "bid": BID_SCHEMA}
UNION_SCHEMA = pa.schema(
    [
        ("event_id", pa.int64()),
        ("type", pa.string()),  # 'person' | 'auction' | 'bid'
        ("date_time", pa.int64()),
        *[f for f in PERSON_SCHEMA if f.name not in ("event_id", "date_time", "extra")],
        *[f for f in AUCTION_SCHEMA if f.name not in ("event_id", "id", "date_time", "extra")],
        *[f for f in BID_SCHEMA if f.name not in ("event_id", "date_time", "extra")],
        ("extra", pa.string()),  # every kind's padding, in one column
    ]
)


@dataclass(frozen=True)
class NexmarkConfig:
    """Generator settings; defaults are the reference's (``NexmarkConfiguration``).

    ``events`` is Beam's ``numEvents`` default; ``base_time``, ``first_event_id`` and
    ``first_event_number`` are Beam's ``NexmarkUtils.standardGeneratorConfig`` (Flink's
    source uses the wall clock and 1/1 instead). ``extra_bytes``: ``None`` (the default)
    pads like the reference to ``avg_*_byte_size``; an int gives ``extra`` about that many
    letters (0: empty, to compare with unpadded events).

    ``chunk_events``: events drawn per call of the vectorized generator. Each chunk seeds
    its own draws (from ``seed`` and its first event number), so the chunk size is part of
    the stream's identity: the stream is the same however it is read (all at once by
    :func:`~actors.nexmark.generator.generate`, batch by batch by
    :class:`~actors.nexmark.source.NexmarkSource`), but a different chunk size gives other
    values. It must be a multiple of ``out_of_order_group_size``.
    """

    events: int = 100_000  # numEvents
    events_per_second: int = 10_000  # firstEventRate (= nextEventRate)
    seed: int = 1
    base_time: int = BASE_TIME_MS  # ms since the epoch of event number 0
    first_event_id: int = 0
    first_event_number: int = 0
    person_proportion: int = 1
    auction_proportion: int = 3
    bid_proportion: int = 46
    hot_auction_ratio: int = 2  # P(bid on the hot auction) = 1 - 1/2
    hot_sellers_ratio: int = 4  # P(auction by the hot seller) = 1 - 1/4
    hot_bidders_ratio: int = 4  # P(bid by the hot bidder) = 1 - 1/4
    num_in_flight_auctions: int = 100
    num_active_people: int = 1000
    out_of_order_group_size: int = 1  # 1: in order
    # the padding targets of nexmark/nexmark's NexmarkConfiguration (avgPersonByteSize,
    # avgAuctionByteSize, avgBidByteSize; Beam's are the same): each generator passes its
    # event's size so far to StringsGenerator.nextExtra, which pads to this average +-20%
    # (person: 8 + its strings' lengths; auction: 8 + item + description + 5 * 8; bid: 4 * 8)
    avg_person_byte_size: int = 200
    avg_auction_byte_size: int = 500
    avg_bid_byte_size: int = 100
    extra_bytes: int | None = None
    chunk_events: int = 50_000

    def __post_init__(self) -> None:
        positive = (
            "events_per_second", "person_proportion", "auction_proportion", "hot_auction_ratio",
            "hot_sellers_ratio", "hot_bidders_ratio", "num_in_flight_auctions",
            "num_active_people", "out_of_order_group_size", "chunk_events",
        )  # fmt: skip
        bad = [name for name in positive if getattr(self, name) < 1]
        bad += [
            name
            for name in ("events", "bid_proportion", "first_event_id", "first_event_number")
            if getattr(self, name) < 0
        ]
        if self.extra_bytes is not None and self.extra_bytes < 0:
            bad.append("extra_bytes")
        if self.chunk_events % max(self.out_of_order_group_size, 1):
            bad.append("chunk_events (a multiple of out_of_order_group_size)")
        if bad:
            raise ConfigError(f"NexmarkConfig: {', '.join(bad)} out of range (see the docstring)")

    @property
    def total_proportion(self) -> int:
        return self.person_proportion + self.auction_proportion + self.bid_proportion

    @property
    def inter_event_delay_us(self) -> float:
        """Microseconds between events (Flink's ``GeneratorConfig``: a double)."""
        return 1_000_000.0 / self.events_per_second

    def timestamp_for_event(self, event_number: np.ndarray) -> np.ndarray:
        """Event time in ms of event number(s) ``n``: ``base + trunc(n * delay_us) // 1000``."""
        n = np.asarray(event_number, dtype=np.int64)
        return self.base_time + (n * self.inter_event_delay_us).astype(np.int64) // 1000
