"""Event schemas and vectorized validation: every row is accepted or dead-lettered with a reason.

A whole input that cannot fit (a required column is absent) raises :class:`SchemaError`;
single bad rows never raise. Checks run column-wise over the batch; only the few
refused rows are turned into Python objects, to record them as raw JSON.

>>> import pyarrow as pa
>>> schema = EventSchema("clicks", [Column("id", "int64"), Column("amount", "float64", min=0)])
>>> ok, dead = schema.validate(pa.table({"id": ["1", "x"], "amount": [2.5, 1.0]}))
>>> ok.to_pydict()
{'id': [1], 'amount': [2.5]}
>>> dead.column("reason").to_pylist()
["id: not a valid int64: 'x'"]
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from runtime.errors import ConfigError, SchemaError

_TYPES = {
    "int64": pa.int64(),
    "float64": pa.float64(),
    "string": pa.string(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("ms"),
}

DEAD_LETTER_SCHEMA = pa.schema(
    [
        ("dead_letter_id", pa.string()),
        ("source", pa.string()),
        ("position", pa.int64()),
        ("step", pa.string()),
        ("reason", pa.string()),
        ("raw", pa.string()),
        ("received_at", pa.timestamp("ms")),
    ]
)
MAX_RAW_CHARS = 4096
#: column a source fills with the text of a record it could not parse at all
MALFORMED = "_edgecore_malformed"
#: and, where it knows, why (e.g. "not UTF-8"): the dead letter's reason names it
MALFORMED_WHY = "_edgecore_malformed_why"
#: the columns of a row that held an object or array where text was read (comma-separated)
NESTED = "_edgecore_nested"
#: event times outside these years are data errors, not events (1970-01-01 .. 2200-01-01)
TS_MIN_MS = 0
TS_MAX_MS = 7_258_118_400_000


@dataclass(frozen=True)
class Column:
    """One field of an event: its type and the checks a value must pass.

    ``min``/``max`` bound numbers (NaN and infinities are always refused);
    ``max_len`` bounds strings; ``required=False`` lets the column be absent or null.
    """

    name: str
    type: str
    required: bool = True
    min: float | None = None
    max: float | None = None
    max_len: int | None = None

    def __post_init__(self) -> None:
        if self.type not in _TYPES:
            raise ConfigError(
                f"column {self.name!r}: unknown type {self.type!r}; use one of {sorted(_TYPES)}"
            )

    @property
    def arrow_type(self) -> pa.DataType:
        return _TYPES[self.type]


@dataclass(frozen=True)
class EventSchema:
    """A named event schema: the canonical column order and types after validation."""

    name: str
    columns: list[Column] = field(default_factory=list)

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema([(c.name, c.arrow_type) for c in self.columns])

    def validate(
        self,
        table: pa.Table | pa.RecordBatch,
        *,
        source: str = "",
        first_position: int = 0,
        per_record: bool = False,
    ) -> tuple[pa.Table, pa.Table]:
        """Split ``table`` into (accepted rows in canonical types, dead letters).

        A table without a required column is refused as a whole (:class:`SchemaError`),
        unless its rows are independent records (``per_record``: live requests and
        messages, JSON lines), where each such row is a dead letter instead.
        """
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        missing = [c.name for c in self.columns if c.required and c.name not in table.column_names]
        # per-record sources (JSON lines, CSV with broken rows) can lack a field row by row
        per_record = per_record or MALFORMED in table.column_names
        if missing and not per_record:
            raise SchemaError(
                f"input for {self.name!r} lacks required column(s) {missing}; "
                f"it has {table.column_names}. Expected columns: {[c.name for c in self.columns]}"
            )
        n = table.num_rows
        out: dict[str, pa.Array] = {}
        failed: list[tuple[str, np.ndarray, Any]] = []
        if MALFORMED in table.column_names:
            broken = table.column(MALFORMED).is_valid().to_numpy(zero_copy_only=False)
            whys = (
                table.column(MALFORMED_WHY).to_pylist()
                if MALFORMED_WHY in table.column_names
                else [None] * n
            )
            failed.append(
                (
                    "record",
                    broken,
                    lambda i: f"malformed ({whys[i] or 'not parseable as a record'})",
                )
            )
        if NESTED in table.column_names:
            marks = [m if isinstance(m, str) else None for m in table.column(NESTED).to_pylist()]
            for col in self.columns:
                hit = np.array([m is not None and col.name in m.split(",") for m in marks])
                if hit.any():
                    failed.append(
                        (col.name, hit, lambda i, t=col.type: f"not a {t} (an object or array)")
                    )
        for col in self.columns:
            if col.name not in table.column_names:
                out[col.name] = pa.nulls(n, col.arrow_type)
                if col.required:
                    failed.append((col.name, np.ones(n, dtype=bool), lambda i: "missing value"))
                continue
            try:
                values, bad = _coerce(table.column(col.name), col)
            except (pa.ArrowException, ValueError, TypeError, OverflowError) as err:
                # a type no check foresaw: its rows are refused, never the whole input
                values, bad = _unconvertible(table.column(col.name), col, err)
            out[col.name] = values
            failed += [(col.name, mask, why) for mask, why in bad if mask.any()]
        bad_rows = np.zeros(n, dtype=bool)
        reason = np.full(n, None, dtype=object)
        for name, mask, why in failed:  # the first failing check names the reason
            hit = mask & ~bad_rows
            if hit.any():
                reason[hit] = [f"{name}: {why(i)}" for i in np.flatnonzero(hit)]
                bad_rows |= hit
        good = pa.table(out, schema=self.arrow_schema)
        if not bad_rows.any():
            return good, DEAD_LETTER_SCHEMA.empty_table()
        idx = np.flatnonzero(bad_rows)
        dead = dead_letters(
            table.take(pa.array(idx)),
            [str(r) for r in reason[idx]],
            source=source,
            positions=idx + first_position,
            step=f"validate:{self.name}",
        )
        return good.filter(pa.array(~bad_rows)), dead


def dead_letters(
    raw: pa.Table,
    reasons: list[str],
    *,
    source: str,
    positions: np.ndarray,
    step: str,
    ids: list[str] | None = None,
) -> pa.Table:
    """Build dead-letter rows (raw row as JSON, capped) for the refused rows of ``raw``;
    each is identified by its source and position unless ``ids`` are given."""
    rows = _pylist(raw)
    now = pd.Timestamp.now(tz="UTC").floor("ms").tz_localize(None)
    raws = [_raw_json(r)[:MAX_RAW_CHARS] for r in rows]
    return pa.table(
        {
            "dead_letter_id": ids or [f"{source}@{int(p)}" for p in positions],
            "source": [source] * len(rows),
            "position": pa.array(np.asarray(positions, dtype=np.int64)),
            "step": [step] * len(rows),
            "reason": reasons,
            "raw": raws,
            "received_at": pa.array([now] * len(rows), pa.timestamp("ms")),
        },
        schema=DEAD_LETTER_SCHEMA,
    )


def _pylist(table: pa.Table) -> list[dict[str, Any]]:
    """Rows as dicts, column by column: a value Python cannot hold (a time past year 9999,
    the reason it is refused) is kept as Arrow's text for it."""
    cols: dict[str, list[Any]] = {}
    for name, col in zip(table.column_names, table.columns, strict=True):
        try:
            cols[name] = col.to_pylist()
        except (ValueError, OverflowError, pa.ArrowException):
            try:
                cols[name] = pc.cast(col, pa.string()).to_pylist()
            except (pa.ArrowException, ValueError):
                cols[name] = [f"<{col.type}>"] * len(col)
    return [{k: v[i] for k, v in cols.items()} for i in range(table.num_rows)]


def _raw_json(row: dict[str, Any]) -> str:
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if isinstance(v, (str, int, float, bool)) or v is None:
            return v
        return str(v)

    return json.dumps({k: clean(v) for k, v in row.items()}, ensure_ascii=False)


def _show(values: np.ndarray):
    def why_factory(template: str):
        def why(i: int) -> str:
            v = values[i]
            return template.format(repr(v.item() if isinstance(v, np.generic) else v)[:80])

        return why

    return why_factory


def _coerce(arr: pa.ChunkedArray, col: Column):
    """Cast one column to its type; return (values, [(bad mask, reason fn), ...])."""
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    null_in = arr.is_null().to_numpy(zero_copy_only=False)
    checks: list[tuple[np.ndarray, Any]] = []
    if col.required:
        checks.append((null_in, lambda i: "missing value"))
    target = col.arrow_type
    if col.type == "string":
        values, bad = _text(arr)
        checks += bad
    elif arr.type == target:
        values = arr
    elif pa.types.is_nested(arr.type) or _is_bytes(arr.type):
        # an object or array where a value belongs: refused, never cast
        values = pa.nulls(len(arr), target)
        checks.append((~null_in, lambda i: f"not a {col.type} (an object, array or bytes)"))
    elif pa.types.is_boolean(arr.type):  # true is not the number 1 (nor event 1)
        values = pa.nulls(len(arr), target)
        checks.append((~null_in, lambda i: f"not a {col.type} (a boolean)"))
    else:
        values, unparsable = _parse(arr, col)
        # a value that became null was not parsed (NaN as an id or a time): never accepted
        unparsable = unparsable | values.is_null().to_numpy(zero_copy_only=False)
        raw = arr.to_numpy(zero_copy_only=False)
        checks.append((unparsable & ~null_in, _show(raw)(f"not a valid {col.type}: {{}}")))
    if col.type in ("int64", "float64"):
        num = values.to_numpy(zero_copy_only=False).astype(np.float64)
        if col.type == "float64":
            nonfinite = ~np.isfinite(num) & ~null_in
            checks.append((nonfinite, _show(num)("not a finite number: {}")))
        if col.min is not None:
            checks.append((num < col.min, _show(num)(f"{{}} is below the minimum {col.min:g}")))
        if col.max is not None:
            checks.append((num > col.max, _show(num)(f"{{}} is above the maximum {col.max:g}")))
    if col.type == "timestamp":
        ms = pc.cast(values, pa.int64()).to_numpy(zero_copy_only=False)
        lo = TS_MIN_MS if col.min is None else col.min
        hi = TS_MAX_MS if col.max is None else col.max
        out_of_range = ~null_in & ~pc.is_null(values).to_numpy(zero_copy_only=False)
        with np.errstate(invalid="ignore"):
            out_of_range &= (ms < lo) | (ms > hi)
        checks.append(
            (
                out_of_range,
                lambda i: f"{int(ms[i])} ms since the epoch is outside {lo:.0f}..{hi:.0f}",
            )
        )
    if col.max_len is not None and pa.types.is_string(values.type):
        lens = pc.fill_null(pc.binary_length(values), 0).to_numpy(zero_copy_only=False)
        checks.append(
            (lens > col.max_len, lambda i: f"string of {lens[i]} bytes exceeds {col.max_len}")
        )
        if col.required:
            checks.append((lens == 0, lambda i: "empty string"))
    return values, checks


def _is_bytes(t: pa.DataType) -> bool:
    return (
        pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_fixed_size_binary(t)
        or pa.types.is_binary_view(t)
    )


def _unconvertible(arr: pa.ChunkedArray, col: Column, err: Exception):
    """A column whose type cannot be made a ``col.type``: each of its values is refused."""
    present = arr.is_valid().to_numpy(zero_copy_only=False)
    why = f"not a {col.type} ({arr.type} cannot be converted: {str(err)[:120]})"
    checks: list[tuple[np.ndarray, Any]] = [(present, lambda i: why)]
    if col.required:
        checks.append((~present, lambda i: "missing value"))
    return pa.nulls(len(arr), col.arrow_type), checks


def _text(arr: pa.Array) -> tuple[pa.Array, list[tuple[np.ndarray, Any]]]:
    """A string column: text as it is, numbers and booleans as their text; objects, arrays
    and text that is not UTF-8 are refused row by row (Arrow's JSON reader lets invalid
    UTF-8 through, and it would fail wherever the row went next)."""
    n = len(arr)
    if pa.types.is_nested(arr.type):
        present = arr.is_valid().to_numpy(zero_copy_only=False)
        return pa.nulls(n, pa.string()), [(present, lambda i: "not a string (an object or array)")]
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        try:
            arr.validate(full=True)
            return pc.cast(arr, pa.string()), []
        except pa.ArrowInvalid:
            arr = arr.view(pa.binary() if pa.types.is_string(arr.type) else pa.large_binary())
    if _is_bytes(arr.type):
        raw = arr.to_pylist()
        text, bad = [], np.zeros(n, dtype=bool)
        for i, v in enumerate(raw):
            try:
                text.append(None if v is None else v.decode("utf-8"))
            except UnicodeDecodeError:
                text.append(None)
                bad[i] = True
        return pa.array(text, pa.string()), [(bad, lambda i: "not UTF-8 text")]
    try:
        return pc.cast(arr, pa.string()), []
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        present = arr.is_valid().to_numpy(zero_copy_only=False)
        return pa.nulls(n, pa.string()), [(present, lambda i: f"not a string ({arr.type})")]


def _parse(arr: pa.Array, col: Column) -> tuple[pa.Array, np.ndarray]:
    """Parse a mistyped column vectorized (pandas' coercing parsers); unparsable -> null + flag."""
    if col.type == "timestamp":
        none = np.zeros(len(arr), dtype=bool)
        if pa.types.is_timestamp(arr.type):  # sub-millisecond precision is truncated
            ticks = pc.cast(arr, pa.int64())
            if arr.type.unit == "s":  # in milliseconds, beyond int64 is no time at all
                limit = pa.scalar(np.iinfo(np.int64).max // 1000, pa.int64())
                fits = pc.and_(
                    pc.less_equal(ticks, limit), pc.greater_equal(ticks, pc.negate(limit))
                )
                ticks = pc.if_else(fits, ticks, pa.scalar(None, pa.int64()))
                ticks = pc.multiply(ticks, pa.scalar(1000, pa.int64()))
                return ticks.cast(pa.timestamp("ms")), none
            ts = ticks.cast(pa.timestamp(arr.type.unit))  # (a time zone's instants are UTC)
            return pc.cast(ts, pa.timestamp("ms"), safe=False), none
        if pa.types.is_integer(arr.type):  # epoch milliseconds
            if pa.types.is_unsigned_integer(arr.type):  # beyond int64: none (refused)
                top = pa.scalar(np.iinfo(np.int64).max, pa.uint64())
                arr = pc.if_else(pc.less_equal(pc.cast(arr, pa.uint64()), top), arr, None)
            return pc.cast(arr, pa.int64()).cast(pa.timestamp("ms")), none
        fast = _iso_timestamps(arr)
        if fast is not None:
            return fast, np.zeros(len(arr), dtype=bool)
        series = _series(arr)
        text = series.astype("string")
        epoch = text.str.fullmatch(r"\s*[+-]?\d{1,15}\s*").fillna(False).to_numpy(dtype=bool)
        # a number is no ISO text (and pandas is to read numbers as epoch nanoseconds)
        dated = series.map(lambda v: not isinstance(v, (int, float, bool, np.number, np.bool_)))
        dated = dated.to_numpy(dtype=bool) & ~epoch
        ts = pd.to_datetime(series.where(dated, None), errors="coerce", utc=True, format="ISO8601")
        ms = ts.dt.tz_localize(None).astype("datetime64[ms]").to_numpy().astype(np.int64)
        if epoch.any():  # digits in text: epoch milliseconds, as CSV carries them
            ms[epoch] = text[epoch].astype("int64").to_numpy()
        valid = ~ts.isna().to_numpy() | epoch
        bad = ~valid & series.notna().to_numpy()
        return pa.array(ms, pa.int64(), mask=~valid).cast(pa.timestamp("ms")), bad
    # made only where a path needs it: for a column of times (every JSON request's) it
    # alone cost a third of a millisecond
    series = _series(arr)
    if col.type == "bool":
        mapped = series.map(_BOOLS.get) if series.dtype == object else series
        bad = mapped.isna().to_numpy() & series.notna().to_numpy()
        return pa.array(mapped.where(mapped.notna(), None).tolist(), pa.bool_()), bad
    if col.type == "int64":
        return _parse_int(arr, series)
    num = pd.to_numeric(series, errors="coerce")
    bad = num.isna().to_numpy() & series.notna().to_numpy()
    f = num.to_numpy(dtype=np.float64, na_value=np.nan)
    # keep NaN that came from the input as NaN (refused later as non-finite), null where unparsable
    return pa.array(f, pa.float64(), mask=bad | series.isna().to_numpy()), bad


def _iso_timestamps(arr: pa.Array) -> pa.Array | None:
    """ISO 8601 text all of one style (naive, or all with offsets) parsed by Arrow in one
    pass, 20x faster than pandas; None when any value needs the careful path."""
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        return None
    for tz in (None, "UTC"):  # naive text is taken as UTC, as the careful path does
        try:
            ts = pc.cast(arr, pa.timestamp("us", tz=tz))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        return pc.cast(pc.cast(ts, pa.int64()), pa.timestamp("us")).cast(
            pa.timestamp("ms"), safe=False
        )
    return None


def _series(arr: pa.Array) -> pd.Series:
    return pd.Series(arr.to_numpy(zero_copy_only=False), dtype=object)


def _parse_int(arr: pa.Array, series: pd.Series) -> tuple[pa.Array, np.ndarray]:
    """Integers exactly: digit strings are cast as integers, never through float64
    (which silently rounds above 2**53); integral floats are taken within +-2**53."""
    n = len(arr)
    out = np.zeros(n, dtype=np.int64)
    ok = np.zeros(n, dtype=bool)
    present = series.notna().to_numpy()
    if pa.types.is_floating(arr.type):
        f = arr.to_numpy(zero_copy_only=False)
        ok = np.isfinite(f) & (f == np.round(f)) & (np.abs(f) <= 2.0**53)
        out[ok] = f[ok].astype(np.int64)
    else:
        text = series.astype("string").str.strip()
        digits = text.str.fullmatch(r"[+-]?\d{1,18}").fillna(False).to_numpy(dtype=bool)
        out[digits] = text[digits].astype("int64").to_numpy()
        ok |= digits
        rest = present & ~digits  # e.g. "12.0" or 1e3: integral values written as floats
        if rest.any():
            f = pd.to_numeric(series[rest], errors="coerce").to_numpy(
                dtype=np.float64, na_value=np.nan
            )
            fine = np.isfinite(f) & (f == np.round(f)) & (np.abs(f) <= 2.0**53)
            idx = np.flatnonzero(rest)[fine]
            out[idx] = f[fine].astype(np.int64)
            ok[idx] = True
    return pa.array(out, pa.int64(), mask=~ok), present & ~ok


_BOOLS: dict[Any, bool] = {  # 1 and 0 match True and False as dict keys
    True: True,
    False: False,
    "true": True,
    "false": False,
    "True": True,
    "False": False,
    "1": True,
    "0": False,
    "TRUE": True,
    "FALSE": False,
}
