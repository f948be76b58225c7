"""Bytes from the network into tables, without trusting them.

HTTP bodies and MQTT messages are checked before any parser sees them: nesting deeper
than :data:`MAX_DEPTH` (Arrow's JSON reader crashes the process on ~20,000 levels) and
text that is not UTF-8 never reach Arrow. Whatever cannot be read becomes a *malformed
record* — a row with only :data:`~runtime.streams.schema.MALFORMED` set to the raw text — which
validation turns into a dead letter with a reason; it never fails the other records of
the same body or message. A body as a whole that is not what its content type says
raises :class:`BadInput` (the HTTP front end answers 400).

>>> decode_json_records(b'{"a": 1}\\n{"a": 2, "b": "x"}\\n', ndjson=True).to_pylist()
[{'a': 1, 'b': None}, {'a': 2, 'b': 'x'}]
>>> decode_json_records(b'[' * 100 + b']' * 100, ndjson=True).to_pylist()[0]["_edgecore_malformed_why"]
'nested deeper than 64 levels'
>>> too_deep(b'{"a": [1, {"b": "' + b'[' * 100 + b'"}]}')    # brackets in a string
False
"""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.json as pajson

from runtime.streams.schema import MALFORMED, MALFORMED_WHY
from runtime.streams.sources import rows_to_table

#: deepest JSON nesting a record may have; events are flat, so this is generous
MAX_DEPTH = 64
MAX_RAW = 4096
#: the prefix of the columns decoding adds (malformed records, nested values): input
#: fields named so are dropped, so that no sender can mark rows (or break validation)
RESERVED = "_edgecore_"
_ONE_THREAD = pajson.ReadOptions(use_threads=False)  # a request is small: threads cost more
_OBJECT_FIRST = re.compile(rb"[ \t\r\n]*\{")
_OPEN = np.zeros(256, dtype=np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_OPEN[[ord("]"), ord("}")]] = -1


class BadInput(ValueError):
    """A body as a whole cannot be read as what it claims to be (the caller's mistake)."""


def too_deep(data: bytes, limit: int = MAX_DEPTH) -> bool:
    """Does JSON text ``data`` nest arrays and objects deeper than ``limit``? Brackets inside
    strings do not count. Vectorized, and the depth is summed over the brackets alone (a
    few per event), not over every byte: ~0.1 ms for a 110 KB body."""
    if not data or len(data) <= limit:
        return False
    b = np.frombuffer(data, dtype=np.uint8)
    at = np.flatnonzero((b == ord("{")) | (b == ord("[")) | (b == ord("}")) | (b == ord("]")))
    if len(at) <= limit:
        return False
    step = _OPEN[b[at]]
    if int(np.cumsum(step).max()) <= limit:  # brackets in strings can only add to it
        return False
    # a quote counts unless an odd run of backslashes escapes it
    n = len(b)
    pos = np.arange(n)
    slash = b == ord("\\")
    last_other = np.maximum.accumulate(np.where(~slash, pos, -1))
    run_before = np.zeros(n, dtype=np.int64)
    run_before[1:] = pos[:-1] - last_other[:-1]
    quote = (b == ord('"')) & (run_before % 2 == 0)
    in_string = (np.cumsum(quote) - quote) % 2 == 1
    return int(np.cumsum(np.where(in_string[at], 0, step)).max()) > limit


class _Malformed(dict):
    """The record :func:`malformed` makes (its marks are ours, not the sender's)."""


def malformed(text: bytes | str, why: str) -> dict[str, str]:
    """A record that could not be read: its reason and (capped) raw text."""
    if isinstance(text, bytes):
        text = text[:MAX_RAW].decode("utf-8", errors="replace")
    return _Malformed({MALFORMED: text[:MAX_RAW], MALFORMED_WHY: why})


def _load(text: bytes) -> Any:
    """One JSON document, or a malformed record saying why it is not one."""
    if too_deep(text):
        return malformed(text, f"nested deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        return malformed(text, "not UTF-8")
    except (ValueError, RecursionError) as err:
        return malformed(text, f"not JSON ({err})")


def _record(obj: Any) -> dict[str, Any]:
    """An event is a JSON object; anything else in its place is a malformed record. Fields
    named like the marks decoding sets (``_edgecore_...``) are not the sender's to set."""
    if isinstance(obj, _Malformed):
        return obj
    if isinstance(obj, dict):
        if any(k.startswith(RESERVED) for k in obj):
            return {k: v for k, v in obj.items() if not k.startswith(RESERVED)}
        return obj
    return malformed(json.dumps(obj)[:MAX_RAW], "not a JSON object")


def _unmarked(table: pa.Table) -> pa.Table:
    """``table`` without columns named like the marks of decoding (see :func:`_record`)."""
    marks = [n for n in table.column_names if n.startswith(RESERVED)]
    return table.drop_columns(marks) if marks else table


def decode_json_records(data: bytes, ndjson: bool, schema: pa.Schema | None = None) -> pa.Table:
    """Records from NDJSON (one object per line) or from a JSON array or object.

    Well-formed, shallow, UTF-8 NDJSON is read by Arrow in one pass, with the app's types
    when every value fits them; anything else line by line, each bad line becoming a
    malformed record. Raises :class:`BadInput` for an empty body, or for a JSON body that
    is not JSON at all.
    """
    if not data.strip():
        raise BadInput("empty body: send NDJSON lines or a JSON array of event objects")
    if ndjson:
        fast = _fast_ndjson(data, schema)
        if fast is not None:
            return fast
        rows = [_record(_load(line)) for line in data.splitlines() if line.strip()]
        return rows_to_table(rows)
    if too_deep(data, MAX_DEPTH + 1):  # the array around the events adds a level
        raise BadInput(f"JSON nested deeper than {MAX_DEPTH} levels")
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise BadInput(f"body is not UTF-8 ({err.reason} at byte {err.start})") from None
    except (ValueError, RecursionError) as err:
        raise BadInput(
            f"body is not JSON ({err}); send a JSON array or NDJSON (application/x-ndjson)"
        ) from None
    if isinstance(doc, dict):
        doc = [doc]
    if not isinstance(doc, list) or not doc:
        raise BadInput("expected a non-empty JSON array of event objects")
    return rows_to_table([_record(r) for r in doc])


def _fast_ndjson(data: bytes, schema: pa.Schema | None) -> pa.Table | None:
    """Arrow's reader, where it is safe and exact: shallow, UTF-8, every line an object."""
    if not _OBJECT_FIRST.match(data):  # Arrow 26 dies (SIGSEGV) on a body opening with null
        return None
    if too_deep(data):
        return None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    # first with the app's types; then (e.g. epoch numbers for timestamps) with only text
    # and integers pinned: inferred, text that looks like a date would become a timestamp
    # (its text changed) and integers among floats doubles (ids above 2**53 changed)
    attempts = [None]
    times: list[str] = []
    if schema is not None:
        exact = [f for f in schema if pa.types.is_string(f.type) or pa.types.is_integer(f.type)]
        attempts = [schema, pa.schema(exact)]
        times = [f.name for f in schema if pa.types.is_timestamp(f.type)]
    for explicit in attempts:
        parse = pajson.ParseOptions(explicit_schema=explicit, unexpected_field_behavior="infer")
        try:
            table = pajson.read_json(
                io.BytesIO(data), read_options=_ONE_THREAD, parse_options=parse
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            continue
        if any(t in table.column_names and pa.types.is_floating(table[t].type) for t in times):
            return None  # epoch integers, one beyond int64: all read as doubles, all refused
        return _unmarked(table)
    return None


def json_schema(schema: pa.Schema) -> pa.Schema:
    """An app's types as Arrow's JSON reader can take them (timestamps to the microsecond;
    validation then brings them to milliseconds)."""
    return pa.schema(
        [
            pa.field(f.name, pa.timestamp("us") if pa.types.is_timestamp(f.type) else f.type)
            for f in schema
        ]
    )


def decode_arrow(data: bytes) -> pa.Table:
    """An Arrow IPC stream of flat columns, checked in full before anything reads it."""
    try:
        table = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
        table.validate(full=True)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise BadInput(f"body is not a valid Arrow IPC stream ({err})") from None
    nested = [f.name for f in table.schema if pa.types.is_nested(f.type)]
    if nested:
        raise BadInput(f"Arrow columns must be flat; these are nested: {nested[:5]}")
    twice = sorted(n for n, k in Counter(table.column_names).items() if k > 1)
    if twice:
        raise BadInput(f"Arrow columns must have distinct names; these repeat: {twice[:5]}")
    return _unmarked(table)


def decode_messages(payloads: list[bytes]) -> pa.Table:
    """MQTT payloads, each one event or a JSON array of events, as one table; a payload
    that cannot be read is one malformed record and affects no other."""
    rows: list[dict[str, Any]] = []
    for payload in payloads:
        doc = _load(payload)
        items = doc if isinstance(doc, list) else [doc]
        rows += [_record(r) for r in items] if items else [malformed(payload, "empty array")]
    return rows_to_table(rows)
