"""NEXMark reference queries in DuckDB SQL, the oracle for the runtime's implementations.

Follows the Flink SQL of ``nexmark/nexmark`` (``nexmark-flink/src/main/resources/queries/
q*.sql``) over the tables of :func:`actors.nexmark.generator.generate`, registered as views
``person``, ``auction``, ``bid``. Times are int64 ms since the epoch, so Flink's
``TUMBLE``/``HOP`` table functions are spelled out as arithmetic:

* **Tumbling window** of ``WINDOW_MS`` = 10,000 ms (q7, q8): an event at time ``t``
  belongs to exactly one window, ``window_start = floor(t / 10000) * 10000``,
  ``window_end = window_start + 10000``; the window is half-open,
  ``window_start <= t < window_end``. Windows are aligned to the epoch (Flink's default
  offset 0), so a bid at exactly ``...0000`` ms opens a new window.
* **Sliding (hop) window** of size ``WINDOW_MS`` = 10,000 ms sliding every
  ``HOP_SLIDE_MS`` = 2,000 ms (q5): windows are ``[s, s + 10000)`` for every ``s`` that is
  a multiple of 2000; an event at ``t`` is in the 5 windows whose ``s`` is in
  ``(t - 10000, t]``, i.e. ``s = floor(t / 2000) * 2000 - k * 2000`` for ``k = 0..4``.
  The first windows start before the first event, as in Flink; every window that holds
  at least one bid produces output (a bounded input ends with all windows fired).

Every result has a deterministic ``ORDER BY`` so that results can be compared row by row.
"""

from __future__ import annotations

from collections.abc import Mapping

import duckdb
import pyarrow as pa

WINDOW_MS = 10_000  # q5 window size, q7/q8 tumbling window (Flink: INTERVAL '10' SECOND)
HOP_SLIDE_MS = 2_000  # q5 slide (Flink: INTERVAL '2' SECOND)
EURO_RATE = "0.908"  # q1: dollars -> euros, a DECIMAL literal as in Flink


def _floor(col: str, size: int) -> str:
    """``floor(col / size) * size`` in exact integer arithmetic (also right for t < 0)."""
    return f"({col} - ((({col} % {size}) + {size}) % {size}))"


_HOPS = WINDOW_MS // HOP_SLIDE_MS  # windows per event: 5

QUERIES: dict[str, str] = {
    # Query 0: pass-through of the bids, in event order.
    "q0": """
        SELECT auction, bidder, price, date_time, extra
        FROM bid ORDER BY event_id""",
    # Query 1: currency conversion. Flink's result type is DECIMAL(23, 3): kept exact.
    "q1": f"""
        SELECT auction, bidder, CAST({EURO_RATE} * price AS DECIMAL(23, 3)) AS price, date_time,
               extra
        FROM bid ORDER BY event_id""",
    # Query 2: selection of every 123rd auction.
    "q2": """
        SELECT auction, price FROM bid WHERE auction % 123 = 0 ORDER BY event_id""",
    # Query 3: local item suggestion, an unwindowed inner join; id is the auction's id.
    "q3": """
        SELECT P.name, P.city, P.state, A.id
        FROM auction AS A INNER JOIN person AS P ON A.seller = P.id
        WHERE A.category = 10 AND (P.state = 'OR' OR P.state = 'ID' OR P.state = 'CA')
        ORDER BY A.id""",
    # Query 4: per category, the average of the winning (highest) bid of each auction,
    # counting only bids with A.date_time <= B.date_time <= A.expires (both ends
    # inclusive, Flink's BETWEEN). Auctions without such a bid do not count. Flink's AVG
    # over BIGINT truncates to BIGINT; avg_price here is the exact DOUBLE mean.
    "q4": """
        SELECT Q.category, AVG(Q.final) AS avg_price
        FROM (
            SELECT MAX(B.price) AS final, A.category
            FROM auction A, bid B
            WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
            GROUP BY A.id, A.category
        ) Q
        GROUP BY Q.category ORDER BY Q.category""",
    # Query 5: hot items. Per sliding window, the auction(s) with the most bids; ties
    # are all kept (Flink joins on num >= max).
    "q5": f"""
        WITH hop AS (
            SELECT B.auction, {_floor("B.date_time", HOP_SLIDE_MS)} - k * {HOP_SLIDE_MS}
                AS window_start
            FROM bid B, range(0, {_HOPS}) AS r(k)
        ),
        counts AS (
            SELECT auction, window_start, count(*) AS num FROM hop GROUP BY auction, window_start
        ),
        maxes AS (SELECT window_start, max(num) AS maxn FROM counts GROUP BY window_start)
        SELECT C.auction, C.num, C.window_start, C.window_start + {WINDOW_MS} AS window_end
        FROM counts C JOIN maxes M ON C.window_start = M.window_start AND C.num >= M.maxn
        ORDER BY C.window_start, C.auction""",
    # Query 7: highest bid. Per tumbling window, the bid(s) with the window's maximum
    # price (ties all kept). Flink matches bids to a window by B.dateTime BETWEEN
    # window_end - 10 s AND window_end, which also offers a bid at exactly window_end to
    # the previous window; here each bid is in its one half-open window only.
    "q7": f"""
        WITH w AS (
            SELECT *, {_floor("date_time", WINDOW_MS)} AS window_start FROM bid
        ),
        maxes AS (SELECT window_start, max(price) AS maxprice FROM w GROUP BY window_start)
        SELECT w.auction, w.price, w.bidder, w.date_time, w.extra,
               w.window_start, w.window_start + {WINDOW_MS} AS window_end
        FROM w JOIN maxes M ON w.window_start = M.window_start AND w.price = M.maxprice
        ORDER BY w.window_start, w.event_id""",
    # Query 8: monitor new users. Persons who registered and created an auction (as
    # seller) in the same tumbling window; one row per person and window.
    "q8": f"""
        WITH P AS (
            SELECT DISTINCT id, name, {_floor("date_time", WINDOW_MS)} AS window_start
            FROM person
        ),
        A AS (
            SELECT DISTINCT seller, {_floor("date_time", WINDOW_MS)} AS window_start
            FROM auction
        )
        SELECT P.id, P.name, P.window_start
        FROM P JOIN A ON P.id = A.seller AND P.window_start = A.window_start
        ORDER BY P.window_start, P.id""",
}


def connect(tables: Mapping[str, pa.Table]) -> duckdb.DuckDBPyConnection:
    """A fresh in-memory DuckDB with ``tables`` registered as views person/auction/bid."""
    con = duckdb.connect()
    for name in ("person", "auction", "bid"):
        con.register(name, tables[name])
    return con


def reference(
    con_or_tables: duckdb.DuckDBPyConnection | Mapping[str, pa.Table], q: str
) -> pa.Table:
    """The result of NEXMark query ``q`` (q0, q1, q2, q3, q4, q5, q7, q8) as Arrow.

    ``con_or_tables`` is a DuckDB connection that already has views ``person``,
    ``auction``, ``bid`` (with ``event_id``), or the dict :func:`actors.nexmark.generator.generate`
    returns. Columns:

    * q0: auction, bidder, price, date_time, extra -- every bid, by event_id
    * q1: auction, bidder, price (DECIMAL(23, 3) = 0.908 * price), date_time, extra
    * q2: auction, price -- bids with ``auction % 123 = 0``
    * q3: name, city, state, id (auction id) -- category 10 by sellers in OR/ID/CA
    * q4: category, avg_price (DOUBLE)
    * q5: auction, num, window_start, window_end -- sliding 10 s every 2 s
    * q7: auction, price, bidder, date_time, extra, window_start, window_end -- tumbling 10 s
    * q8: id, name, window_start -- tumbling 10 s

    All times are int64 ms; see the module docstring for the window boundaries.
    """
    if q not in QUERIES:
        raise ValueError(f"unknown query {q!r}; choose from {sorted(QUERIES)}")
    if isinstance(con_or_tables, duckdb.DuckDBPyConnection):
        return con_or_tables.sql(QUERIES[q]).to_arrow_table()
    con = connect(con_or_tables)
    try:
        return con.sql(QUERIES[q]).to_arrow_table()
    finally:
        con.close()
