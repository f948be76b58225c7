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
200 (person), 500 (auction), 100 (bid) bytes; that is ``extra_bytes=None`` here. The
default ``extra_bytes=0`` leaves it empty to keep data small; a positive value makes it
about that long (+-20%).

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

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

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
    ]
)


@dataclass(frozen=True)
class NexmarkConfig:
    """Generator settings; defaults are the reference's (``NexmarkConfiguration``).

    ``events`` is Beam's ``numEvents`` default; ``base_time``, ``first_event_id`` and
    ``first_event_number`` are Beam's ``NexmarkUtils.standardGeneratorConfig`` (Flink's
    source uses the wall clock and 1/1 instead). ``extra_bytes``: ``None`` pads like the
    reference to ``avg_*_byte_size``; an int gives ``extra`` about that many letters.
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
    avg_person_byte_size: int = 200
    avg_auction_byte_size: int = 500
    avg_bid_byte_size: int = 100
    extra_bytes: int | None = 0

    def __post_init__(self) -> None:
        positive = (
            "events_per_second", "person_proportion", "auction_proportion", "hot_auction_ratio",
            "hot_sellers_ratio", "hot_bidders_ratio", "num_in_flight_auctions",
            "num_active_people", "out_of_order_group_size",
        )  # fmt: skip
        bad = [name for name in positive if getattr(self, name) < 1]
        bad += [
            name
            for name in ("events", "bid_proportion", "first_event_id", "first_event_number")
            if getattr(self, name) < 0
        ]
        if self.extra_bytes is not None and self.extra_bytes < 0:
            bad.append("extra_bytes")
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


def generate(config: NexmarkConfig) -> dict[str, pa.Table]:
    """Generate ``config.events`` events, split by kind.

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


def union(tables: dict[str, pa.Table]) -> pa.Table:
    """All events as one stream sorted by ``event_id``, in :data:`UNION_SCHEMA`.

    Columns: ``event_id, type, date_time, id, name, email_address, credit_card, city,
    state, item_name, description, initial_bid, reserve, expires, seller, category,
    auction, bidder, price, channel, url``; ``type`` is 'person', 'auction' or 'bid' and
    a column is null where it does not apply to the type (``id`` is set for persons and
    auctions). ``extra`` is dropped.
    """
    parts = []
    for kind in ("person", "auction", "bid"):
        t = tables[kind]
        cols = {
            name: t.column(name) if name in t.column_names else pa.nulls(t.num_rows, type_)
            for name, type_ in zip(UNION_SCHEMA.names, UNION_SCHEMA.types, strict=True)
            if name != "type"
        }
        cols["type"] = pa.repeat(pa.scalar(kind), t.num_rows)
        parts.append(pa.table(cols).select(UNION_SCHEMA.names).cast(UNION_SCHEMA))
    merged = pa.concat_tables(parts).combine_chunks()
    return merged.take(pc.sort_indices(merged.column("event_id")))


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


def _next_price(rng: np.random.Generator, n: int) -> np.ndarray:
    """PriceGenerator.nextPrice: ``Math.round(10^(u*6) * 100)``, log-uniform 100..1e8."""
    return np.floor(10.0 ** (rng.random(n) * 6.0) * 100.0 + 0.5).astype(np.int64)


# -- strings ---------------------------------------------------------------------------


def _strings(lengths: np.ndarray, chars: np.ndarray) -> pa.Array:
    """A string array from per-row lengths and the concatenated ASCII bytes."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] > np.iinfo(np.int32).max:  # pa.string() has 32-bit offsets
        raise ConfigError("a string column would exceed 2 GiB: generate fewer events per call")
    offsets = offsets.astype(np.int32)
    return pa.StringArray.from_buffers(
        len(lengths), pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(chars))
    )


def _next_strings(
    rng: np.random.Generator, n: int, max_length: int, special: str = " "
) -> pa.Array:
    """StringsGenerator.nextString: 3..max_length-1 chars, each ``special`` with p=1/13
    else a random letter, then Java ``trim()`` (which only removes the spaces)."""
    lengths = MIN_STRING_LENGTH + rng.integers(0, max_length - MIN_STRING_LENGTH, n)
    # one draw per char: 26 of the 13*26 values are the special char (1/13), the other
    # 12*26 map evenly onto the letters
    draws = rng.integers(0, 13 * 26, int(lengths.sum()), dtype=np.int16)
    chars = (ord("a") + draws % 26).astype(np.uint8)
    chars[draws < 26] = ord(special)
    out = _strings(lengths, chars)
    return pc.ascii_trim(out, " ") if special == " " else out


def _next_extra(
    rng: np.random.Generator, current_size: np.ndarray | int, desired_average: int, n: int
) -> pa.Array:
    """StringsGenerator.nextExtra: letters padding ``current_size`` to ``desired_average``
    on average (+-20%); empty when the event is already larger."""
    current = np.broadcast_to(np.asarray(current_size, dtype=np.int64), (n,))
    room = np.maximum(desired_average - current, 0)
    delta = np.floor(room * 0.2 + 0.5).astype(np.int64)  # Java Math.round
    size = room - delta + np.where(delta > 0, rng.integers(0, np.maximum(2 * delta, 1)), 0)
    # (the reference's nextExactString maps negative ints to chars below 'a'; not copied)
    return _strings(size, rng.integers(ord("a"), ord("z") + 1, int(size.sum()), dtype=np.uint8))


def _extra(
    cfg: NexmarkConfig,
    rng: np.random.Generator,
    current_size: np.ndarray | int,
    avg_byte_size: int,
    n: int,
) -> pa.Array:
    if cfg.extra_bytes is None:  # the reference: pad to the average event size
        return _next_extra(rng, current_size, avg_byte_size, n)
    return _next_extra(rng, 0, cfg.extra_bytes, n)


def _lengths(arr: pa.Array) -> np.ndarray:
    return pc.binary_length(arr).to_numpy(zero_copy_only=False).astype(np.int64)


def _credit_cards(rng: np.random.Generator, n: int) -> pa.Array:
    """Four space-separated groups of ``%04d`` of 0..9999, written as fixed 19-byte rows."""
    groups = rng.integers(0, 10_000, (n, 4))
    buf = np.full((n, 19), ord(" "), dtype=np.uint8)
    for g in range(4):
        for d in range(4):
            buf[:, g * 5 + d] = ord("0") + groups[:, g] // 10 ** (3 - d) % 10
    return _strings(np.full(n, 19), buf.reshape(-1))


def _int_reverse(x: np.ndarray) -> np.ndarray:
    """Java ``Integer.reverse``: the 32 bits of ``x`` in reverse order, as int32."""
    v = x.astype(np.uint32)
    for shift, mask in ((1, 0x55555555), (2, 0x33333333), (4, 0x0F0F0F0F), (8, 0x00FF00FF)):
        m = np.uint32(mask)
        v = ((v >> np.uint32(shift)) & m) | ((v & m) << np.uint32(shift))
    v = (v >> np.uint32(16)) | (v << np.uint32(16))
    return v.view(np.int32)


def _base_urls(rng: np.random.Generator, n: int) -> pa.Array:
    """BidGenerator.getBaseUrl: ``https://www.nexmark.com/<s>/<s>/<s>/item.htm?query=1``."""
    parts = [_next_strings(rng, n, 5, "_") for _ in range(3)]
    return pc.binary_join_element_wise("https://www.nexmark.com", *parts, "item.htm?query=1", "/")


def _channel_table(cfg: NexmarkConfig) -> tuple[pa.Array, pa.Array]:
    """Channels and urls: the 4 hot ones, then ``channel-0`` .. ``channel-9999``.

    The reference draws each url once per process (unseeded) and caches it; here it is
    drawn once from the seed. 9 in 10 of the other channels' urls end in
    ``&channel_id=<abs(Integer.reverse(n))>`` (a Java int, so channel 1 gets -2**31).
    """
    rng = np.random.default_rng([cfg.seed, 4])
    hot_urls = _base_urls(rng, len(HOT_CHANNELS))
    number = np.arange(CHANNELS_NUMBER, dtype=np.int64)
    urls = _base_urls(rng, CHANNELS_NUMBER)
    with np.errstate(over="ignore"):  # abs(MIN_VALUE) stays MIN_VALUE, as in Java
        channel_id = np.abs(_int_reverse(number))
    suffix = pc.binary_join_element_wise(
        "&channel_id=", pc.cast(pa.array(channel_id), pa.string()), ""
    )
    with_id = rng.integers(0, 10, CHANNELS_NUMBER) > 0
    urls = pc.if_else(pa.array(with_id), pc.binary_join_element_wise(urls, suffix, ""), urls)
    names = pc.binary_join_element_wise("channel-", pc.cast(pa.array(number), pa.string()), "")
    return (
        pa.concat_arrays([pa.array(HOT_CHANNELS, pa.string()), names]),
        pa.concat_arrays([hot_urls, urls]),
    )


# -- the three kinds -------------------------------------------------------------------


def _persons(
    cfg: NexmarkConfig, rng: np.random.Generator, event_id: np.ndarray, date_time: np.ndarray
) -> pa.Table:
    n = len(event_id)
    full_names = pa.array([f"{f} {s}" for f in FIRST_NAMES for s in LAST_NAMES], pa.string())
    first = rng.integers(0, len(FIRST_NAMES), n)
    name = full_names.take(pa.array(first * len(LAST_NAMES) + rng.integers(0, len(LAST_NAMES), n)))
    domain = pc.binary_join_element_wise(_next_strings(rng, n, 5), ".com", "")
    email = pc.binary_join_element_wise(_next_strings(rng, n, 7), domain, "@")
    credit_card = _credit_cards(rng, n)
    city = pa.array(US_CITIES, pa.string()).take(pa.array(rng.integers(0, len(US_CITIES), n)))
    state = pa.array(US_STATES, pa.string()).take(pa.array(rng.integers(0, len(US_STATES), n)))
    size = 8 + sum(_lengths(a) for a in (name, email, credit_card, city, state))
    columns = [
        event_id,
        _last_base0_person_id(cfg, event_id) + FIRST_PERSON_ID,
        name,
        email,
        credit_card,
        city,
        state,
        date_time,
        _extra(cfg, rng, size, cfg.avg_person_byte_size, n),
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
    seller = np.where(
        _hot(rng, cfg.hot_sellers_ratio, n),
        last_person // HOT_SELLER_RATIO * HOT_SELLER_RATIO,
        _next_base0_person_id(cfg, rng, event_id),
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
    item_name = _next_strings(rng, n, 20)
    description = _next_strings(rng, n, 100)
    reserve = initial_bid + _next_price(rng, n)
    size = 8 + _lengths(item_name) + _lengths(description) + 8 * 5
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
        _extra(cfg, rng, size, cfg.avg_auction_byte_size, n),
    ]
    return pa.Table.from_arrays(columns, schema=AUCTION_SCHEMA)


def _bids(
    cfg: NexmarkConfig, rng: np.random.Generator, event_id: np.ndarray, date_time: np.ndarray
) -> pa.Table:
    n = len(event_id)
    last_auction = _last_base0_auction_id(cfg, event_id)
    auction = np.where(
        _hot(rng, cfg.hot_auction_ratio, n),
        last_auction // HOT_AUCTION_RATIO * HOT_AUCTION_RATIO,
        _next_base0_auction_id(cfg, rng, event_id),
    )
    last_person = _last_base0_person_id(cfg, event_id)
    bidder = np.where(
        _hot(rng, cfg.hot_bidders_ratio, n),
        last_person // HOT_BIDDER_RATIO * HOT_BIDDER_RATIO + 1,
        _next_base0_person_id(cfg, rng, event_id),
    )
    price = _next_price(rng, n)
    channels, urls = _channel_table(cfg)
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
        _extra(cfg, rng, 8 * 4, cfg.avg_bid_byte_size, n),
    ]
    return pa.Table.from_arrays(columns, schema=BID_SCHEMA)
