"""One input column cast to its schema type, vectorized: the values, and per check the
rows it refuses with a function that says why (see :meth:`EventSchema.validate
<runtime.streams.schema.EventSchema.validate>`, which turns them into dead letters).

Mistyped input is parsed, never trusted: digit strings become integers exactly, text
becomes times (ISO 8601 or epoch milliseconds), objects, arrays, bytes and booleans
where a number belongs are refused row by row.

>>> import pyarrow as pa
>>> from runtime.streams.schema import Column
>>> values, checks = coerce(pa.array(["7", "x", None]), Column("n", "int64"))
>>> values.to_pylist(), [why(int(mask.argmax())) for mask, why in checks if mask.any()]
([7, None, None], ['missing value', "not a valid int64: 'x'"])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    import pandas as pd

if TYPE_CHECKING:
    from runtime.streams.schema import Column

#: event times outside these years are data errors, not events (1970-01-01 .. 2200-01-01)
TS_MIN_MS = 0
TS_MAX_MS = 7_258_118_400_000


def _show(values: np.ndarray):
    def why_factory(template: str):
        def why(i: int) -> str:
            v = values[i]
            return template.format(repr(v.item() if isinstance(v, np.generic) else v)[:80])

        return why

    return why_factory


def coerce(arr: pa.ChunkedArray, col: Column):
    """Cast one column to its type; return (values, [(bad mask, reason fn), ...])."""
    if isinstance(arr, pa.ChunkedArray):  # one chunk (a slice of a batch): no copy
        arr = arr.chunk(0) if arr.num_chunks == 1 else arr.combine_chunks()
    null_in = (
        np.zeros(len(arr), dtype=bool)
        if arr.null_count == 0
        else arr.is_null().to_numpy(zero_copy_only=False)
    )
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
    if col.choices is not None and pa.types.is_string(values.type):
        member = pc.is_in(values, value_set=pa.array(col.choices, pa.string()))
        other = ~member.fill_null(True).to_numpy(zero_copy_only=False)
        raw = values.to_numpy(zero_copy_only=False)
        choices = ", ".join(col.choices)
        checks.append((other, lambda i: f"{str(raw[i])[:40]!r} is not one of {choices}"))
    return values, checks


def _is_bytes(t: pa.DataType) -> bool:
    return (
        pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_fixed_size_binary(t)
        or pa.types.is_binary_view(t)
    )


def unconvertible(arr: pa.ChunkedArray, col: Column, err: Exception):
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
    import pandas as pd  # here: only the slow path needs it (0.1 s to import)

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
    import pandas as pd  # here: only the slow path needs it (0.1 s to import)

    return pd.Series(arr.to_numpy(zero_copy_only=False), dtype=object)


def _parse_int(arr: pa.Array, series: pd.Series) -> tuple[pa.Array, np.ndarray]:
    """Integers exactly: digit strings are cast as integers, never through float64
    (which silently rounds above 2**53); integral floats are taken within +-2**53."""
    import pandas as pd  # here: only the slow path needs it (0.1 s to import)

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
