"""The NEXMark tables of one chunk merged into the one stream the queries read.

:func:`union` runs inside the timed run for every chunk a
:class:`~actors.nexmark.source.NexmarkSource` generates, so it moves as few bytes as it
can: a column only one kind has (a person's ``name``, a bid's ``url``) keeps that kind's
string data as it is and gets new offsets and a validity bitmap; only the columns
several kinds share (``extra``, ``id``, ``date_time``) are gathered row by row.

>>> import pyarrow as pa
>>> from actors.nexmark.config import SCHEMAS
>>> t = {k: s.empty_table() for k, s in SCHEMAS.items()}
>>> t["bid"] = pa.Table.from_pylist(
...     [{"event_id": 1, "auction": 7, "url": "u", "date_time": 5, "extra": "x"}], SCHEMAS["bid"]
... )
>>> t["person"] = pa.Table.from_pylist(
...     [{"event_id": 0, "id": 1000, "name": "Kate", "date_time": 5, "extra": ""}], SCHEMAS["person"]
... )
>>> s = union(t)
>>> s.select(["event_id", "type", "id", "name", "auction", "url", "extra"]).to_pylist()[1]
{'event_id': 1, 'type': 'bid', 'id': None, 'name': None, 'auction': 7, 'url': 'u', 'extra': 'x'}
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from actors.nexmark.config import UNION_SCHEMA

KINDS = ("person", "auction", "bid")


def union(tables: dict[str, pa.Table]) -> pa.Table:
    """All events as one stream sorted by ``event_id``, in :data:`UNION_SCHEMA`.

    Columns: ``event_id, type, date_time, id, name, email_address, credit_card, city,
    state, item_name, description, initial_bid, reserve, expires, seller, category,
    auction, bidder, price, channel, url, extra``; ``type`` is 'person', 'auction' or 'bid'
    and a column is null where it does not apply to the type (``id`` is set for persons and
    auctions; ``extra`` for all).
    """
    ids = [tables[k].column("event_id").to_numpy() for k in KINDS]
    starts = np.cumsum([0, *(len(i) for i in ids)])
    concat_ids = np.concatenate(ids)
    n = len(concat_ids)
    # row r of the stream is row index[r] of the table of kind[r]
    order = np.argsort(concat_ids, kind="stable")
    kind = np.searchsorted(starts, order, side="right") - 1
    index = order - starts[kind]
    where = np.empty(n, dtype=np.int64)  # the stream row of each table row
    where[order] = np.arange(n)
    lands = [where[starts[i] : starts[i + 1]] for i in range(len(KINDS))]
    # rows of a kind keep their order in the stream unless events come out of order
    in_order = all(bool((np.diff(rows) > 0).all()) for rows in lands)
    columns: dict[str, pa.Array] = {
        "event_id": pa.array(concat_ids[order]),
        "type": pa.array(KINDS, pa.string()).take(pa.array(kind)),
    }
    for name in UNION_SCHEMA.names[2:]:
        type_ = UNION_SCHEMA.field(name).type
        having = [i for i, k in enumerate(KINDS) if name in tables[k].column_names]
        parts = [_one_chunk(tables[KINDS[i]].column(name), type_) for i in having]
        if len(having) == 1 and in_order and parts[0].null_count == 0:
            columns[name] = _spread(parts[0], lands[having[0]], n)
            continue
        source = pa.concat_arrays(parts) if len(parts) > 1 else parts[0]
        skip = np.zeros(len(KINDS) + 1, dtype=np.int64)  # where each kind starts in source
        for i, p in zip(having, parts, strict=True):
            skip[i + 1 :] += len(p)
        if len(having) == len(KINDS):  # every row has one
            columns[name] = source.take(pa.array(skip[kind] + index))
            continue
        has = np.zeros(len(KINDS), dtype=bool)
        has[having] = True
        columns[name] = source.take(pa.array(skip[kind] + index, mask=~has[kind]))
    return pa.table(columns, schema=UNION_SCHEMA)


def _one_chunk(column: pa.ChunkedArray, type_: pa.DataType) -> pa.Array:
    arr = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    return arr if arr.type == type_ else arr.cast(type_)


def _spread(arr: pa.Array, rows: np.ndarray, n: int) -> pa.Array:
    """``arr`` (no nulls) at the increasing stream ``rows`` of a stream of ``n``, null
    elsewhere: numbers are scattered, strings keep their data buffer (new offsets only)."""
    valid = np.zeros(n, dtype=bool)
    valid[rows] = True
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
    nulls = n - len(rows)
    if pa.types.is_string(arr.type):
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[
            arr.offset : arr.offset + len(arr) + 1
        ]
        lengths = np.zeros(n, dtype=np.int32)
        lengths[rows] = np.diff(offsets)
        spread = np.empty(n + 1, dtype=np.int32)
        spread[0] = offsets[0] if len(offsets) else 0
        np.cumsum(lengths, out=spread[1:])
        spread[1:] += spread[0]
        data = arr.buffers()[2] or pa.py_buffer(b"")
        return pa.Array.from_buffers(arr.type, n, [bitmap, pa.py_buffer(spread), data], nulls)
    values = np.zeros(n, dtype=arr.type.to_pandas_dtype())
    values[rows] = arr.to_numpy(zero_copy_only=False)
    return pa.Array.from_buffers(arr.type, n, [bitmap, pa.py_buffer(values)], nulls)
