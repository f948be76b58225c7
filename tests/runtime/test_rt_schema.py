"""runtime.streams.schema: EventSchema.validate splits every row into accepted or dead-lettered."""

from __future__ import annotations

import datetime as dt
import doctest
import json
import re

import numpy as np
import pyarrow as pa
import pytest

import runtime.streams.schema as schema_module
from runtime.errors import ConfigError, SchemaError
from runtime.streams.schema import DEAD_LETTER_SCHEMA, MAX_RAW_CHARS, Column, EventSchema


def one(col: Column, values: list | pa.Array) -> tuple[list, list[str]]:
    """Validate a single-column table: (accepted values, dead-letter reasons)."""
    ok, dead = EventSchema("ev", [col]).validate(pa.table({col.name: values}))
    assert ok.num_rows + dead.num_rows == len(values)
    return ok.column(col.name).to_pylist(), dead.column("reason").to_pylist()


def assert_reasons(got: list[str], expected: list[tuple[str, ...]]) -> None:
    """Each reason starts with ``column: check``, shows the value and ends as expected.

    Values are matched loosely (``-0.01`` or ``np.float64(-0.01)``); the exact text is
    checked by test_reason_shows_plain_values.
    """
    assert len(got) == len(expected), got
    for text, (prefix, value, *suffix) in zip(got, expected, strict=True):
        assert text.startswith(prefix), text
        assert text.endswith(suffix[0] if suffix else ""), text
        shown = text[len(prefix) : len(text) - len(suffix[0]) if suffix else None]
        assert re.fullmatch(rf"(np\.\w+\()?{re.escape(value)}(\.0)?\)?", shown), text


def test_doctests() -> None:
    assert doctest.testmod(schema_module).failed == 0


def test_unknown_column_type_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'x'.*unknown type 'int'"):
        Column("x", "int")


def test_missing_required_column_raises() -> None:
    schema = EventSchema("clicks", [Column("id", "int64"), Column("user", "string")])
    with pytest.raises(SchemaError, match=r"lacks required column\(s\) \['user'\]"):
        schema.validate(pa.table({"id": [1]}))


def test_missing_optional_column_becomes_nulls() -> None:
    schema = EventSchema("ev", [Column("id", "int64"), Column("label", "bool", required=False)])
    ok, dead = schema.validate(pa.table({"id": [1, 2]}))
    assert dead.num_rows == 0
    assert ok.schema == schema.arrow_schema
    assert ok.column("label").to_pylist() == [None, None]


def test_clean_input_in_canonical_types() -> None:
    schema = EventSchema(
        "ev",
        [
            Column("id", "int64"),
            Column("amount", "float64"),
            Column("name", "string"),
            Column("flag", "bool"),
            Column("ts", "timestamp"),
        ],
    )
    raw = pa.table(
        {
            "ts": ["2024-01-01T00:00:00Z"],  # column order differs from the schema
            "flag": ["true"],
            "name": pa.array(["ü"], pa.large_string()),
            "amount": ["2.5"],
            "id": pa.array([7], pa.int32()),
            "extra": [1],  # extra columns are dropped
        }
    )
    ok, dead = schema.validate(raw)
    assert dead.num_rows == 0
    assert dead.schema == DEAD_LETTER_SCHEMA
    assert ok.schema == schema.arrow_schema
    assert ok.to_pylist() == [
        {"id": 7, "amount": 2.5, "name": "ü", "flag": True, "ts": dt.datetime(2024, 1, 1)}
    ]


def test_record_batch_input() -> None:
    schema = EventSchema("ev", [Column("id", "int64")])
    ok, dead = schema.validate(pa.record_batch({"id": ["1", "x"]}))
    assert ok.column("id").to_pylist() == [1]
    assert dead.num_rows == 1


# -- each kind of bad value ------------------------------------------------------------------
def test_missing_value() -> None:
    vals, why = one(Column("n", "int64"), pa.array([1, None, 3]))
    assert vals == [1, 3]
    assert why == ["n: missing value"]


def test_null_allowed_when_not_required() -> None:
    vals, why = one(Column("n", "int64", required=False), pa.array([1, None]))
    assert vals == [1, None]
    assert why == []


def test_unparsable_int() -> None:
    vals, why = one(Column("n", "int64"), ["1", "x", "1.5", "", " 7 ", "1e3", "-4"])
    assert vals == [1, 7, 1000, -4]
    assert why == [
        "n: not a valid int64: 'x'",
        "n: not a valid int64: '1.5'",
        "n: not a valid int64: ''",
    ]


def test_int_from_float_input() -> None:
    vals, why = one(Column("n", "int64"), pa.array([2.0, 2.5, float("inf")]))
    assert vals == [2]
    assert len(why) == 2 and all(w.startswith("n: not a valid int64") for w in why)


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")
def test_int_parse_exact_for_large_and_out_of_range_values() -> None:
    vals, why = one(Column("n", "int64"), ["9007199254740993", "1e30"])
    assert vals == [9007199254740993]
    assert why == ["n: not a valid int64: '1e30'"]


def test_unparsable_float() -> None:
    vals, why = one(Column("x", "float64"), ["1.5", "abc", "-2", "1,5"])
    assert vals == [1.5, -2.0]
    assert why == ["x: not a valid float64: 'abc'", "x: not a valid float64: '1,5'"]


def test_nan_and_infinities_are_refused() -> None:
    vals, why = one(
        Column("x", "float64", required=False),
        pa.array([1.0, float("nan"), float("inf"), -float("inf"), None]),
    )
    assert vals == [1.0, None]
    assert_reasons(
        why,
        [
            ("x: not a finite number: ", "nan"),
            ("x: not a finite number: ", "inf"),
            ("x: not a finite number: ", "-inf"),
        ],
    )
    _, why = one(Column("x", "float64"), ["inf", "-inf"])
    assert_reasons(why, [("x: not a finite number: ", "inf"), ("x: not a finite number: ", "-inf")])


def test_bounds() -> None:
    vals, why = one(Column("amount", "float64", min=0, max=100), [0.0, -0.01, 100.0, 100.5])
    assert vals == [0.0, 100.0]
    assert_reasons(
        why,
        [
            ("amount: ", "-0.01", " is below the minimum 0"),
            ("amount: ", "100.5", " is above the maximum 100"),
        ],
    )
    vals, why = one(Column("n", "int64", min=1), pa.array([-5, 1]))
    assert vals == [1]
    assert_reasons(why, [("n: ", "-5", " is below the minimum 1")])


def test_unparsable_bool() -> None:
    vals, why = one(Column("b", "bool"), ["true", "False", "1", "0", "TRUE", "yes", "t", None])
    assert vals == [True, False, True, False, True]
    assert why == ["b: not a valid bool: 'yes'", "b: not a valid bool: 't'", "b: missing value"]
    vals, why = one(Column("b", "bool"), pa.array([1, 0, 2]))
    assert vals == [True, False]
    assert_reasons(why, [("b: not a valid bool: ", "2")])


def test_reason_shows_plain_values() -> None:
    _, why = one(Column("amount", "float64", min=0), [-0.01])
    assert why == ["amount: -0.01 is below the minimum 0"]
    _, why = one(Column("x", "float64"), pa.array([float("nan")]))
    assert why == ["x: not a finite number: nan"]


def test_strings_empty_and_oversized() -> None:
    vals, why = one(Column("s", "string", max_len=4), ["abcd", "", "abcde", "日本", None])
    # the bound counts UTF-8 bytes: "日本" is 6 bytes
    assert vals == ["abcd"]
    assert why == [
        "s: empty string",
        "s: string of 5 bytes exceeds 4",
        "s: string of 6 bytes exceeds 4",
        "s: missing value",
    ]
    vals, why = one(Column("s", "string", required=False, max_len=2), ["", None, "abc"])
    assert vals == ["", None]
    assert why == ["s: string of 3 bytes exceeds 2"]


def test_string_column_from_numbers() -> None:
    vals, why = one(Column("s", "string"), pa.array([1, 22]))
    assert vals == ["1", "22"]
    assert why == []


# -- timestamps ------------------------------------------------------------------------------
def test_timestamp_from_iso_strings() -> None:
    vals, why = one(
        Column("ts", "timestamp"),
        [
            "2024-01-01T00:00:00Z",
            "2024-01-01 01:00:00+01:00",
            "2024-03-05T06:07:08.123",
            "2024-03-05",
            "not a date",
        ],
    )
    assert vals == [
        dt.datetime(2024, 1, 1),
        dt.datetime(2024, 1, 1),  # converted to UTC
        dt.datetime(2024, 3, 5, 6, 7, 8, 123000),
        dt.datetime(2024, 3, 5),
    ]
    assert why == ["ts: not a valid timestamp: 'not a date'"]


def test_timestamp_from_epoch_ms_ints() -> None:
    vals, why = one(Column("ts", "timestamp"), pa.array([0, 1_700_000_000_123], pa.int64()))
    assert vals == [dt.datetime(1970, 1, 1), dt.datetime(2023, 11, 14, 22, 13, 20, 123000)]
    assert why == []


def test_timestamp_from_timestamp_types() -> None:
    ms = 1_700_000_000_123
    for arr in (
        pa.array([ms], pa.timestamp("ms")),
        pa.array([ms * 1000], pa.timestamp("us")),
        pa.array([ms], pa.timestamp("ms", tz="UTC")),
        pa.array([ms // 1000], pa.timestamp("s")),
    ):
        vals, why = one(Column("ts", "timestamp"), arr)
        assert why == []
        assert vals[0].replace(microsecond=0) == dt.datetime(2023, 11, 14, 22, 13, 20)


def test_timestamp_with_sub_millisecond_precision() -> None:
    arr = pa.array([1_700_000_000_123_456_789], pa.timestamp("ns"))
    vals, why = one(Column("ts", "timestamp"), arr)
    assert why == []
    assert vals == [dt.datetime(2023, 11, 14, 22, 13, 20, 123000)]


def test_timestamp_missing() -> None:
    vals, why = one(Column("ts", "timestamp"), ["2024-01-01", None])
    assert len(vals) == 1
    assert why == ["ts: missing value"]


# -- dead letters as a whole -----------------------------------------------------------------
def test_accepted_plus_dead_is_input_and_first_failure_names_reason() -> None:
    schema = EventSchema(
        "txn",
        [
            Column("id", "int64", min=0),
            Column("amount", "float64", min=0, max=1000),
            Column("user", "string", max_len=8),
        ],
    )
    rng = np.random.default_rng(3)
    n = 500
    ids = [str(i) for i in range(n)]
    amounts = rng.uniform(-10, 1100, n).round(2).astype(object)
    users = [f"u{i % 17}" for i in range(n)]
    for i in rng.choice(n, 40, replace=False):
        ids[i] = "bad"
    for i in rng.choice(n, 40, replace=False):
        amounts[i] = None
    for i in rng.choice(n, 20, replace=False):
        users[i] = "x" * 9
    table = pa.table({"id": ids, "amount": pa.array(list(amounts), pa.float64()), "user": users})
    ok, dead = schema.validate(table, source="file:t", first_position=1000)
    assert ok.num_rows + dead.num_rows == n
    # oracle: the first failing column (in schema order) names the reason
    expected: dict[int, str] = {}
    for i in range(n):
        a = table["amount"][i].as_py()
        if ids[i] == "bad":
            expected[i] = "id:"
        elif a is None or a < 0 or a > 1000:
            expected[i] = "amount:"
        elif len(users[i]) > 8:
            expected[i] = "user:"
    assert dead.column("position").to_pylist() == [1000 + i for i in sorted(expected)]
    assert [r.split(" ")[0] for r in dead.column("reason").to_pylist()] == [
        expected[i] for i in sorted(expected)
    ]
    good = [i for i in range(n) if i not in expected]
    assert ok.column("id").to_pylist() == good
    # dead-letter rows carry the source, the step and the raw row
    assert dead.schema == DEAD_LETTER_SCHEMA
    assert set(dead.column("source").to_pylist()) == {"file:t"}
    assert set(dead.column("step").to_pylist()) == {"validate:txn"}
    assert dead.column("dead_letter_id")[0].as_py() == f"file:t@{1000 + min(expected)}"
    first_raw = json.loads(dead.column("raw")[0].as_py())
    assert first_raw["id"] == ids[min(expected)]
    assert dead.column("received_at").null_count == 0


def test_raw_json_is_capped_and_handles_nan() -> None:
    schema = EventSchema("ev", [Column("x", "float64"), Column("s", "string", max_len=10)])
    ok, dead = schema.validate(pa.table({"x": [float("nan"), 1.0], "s": ["a", "y" * 10_000]}))
    assert ok.num_rows == 0
    raws = dead.column("raw").to_pylist()
    assert json.loads(raws[0]) == {"x": "nan", "s": "a"}
    assert len(raws[1]) == MAX_RAW_CHARS


def test_chunked_input() -> None:
    schema = EventSchema("ev", [Column("n", "int64")])
    table = pa.Table.from_batches(
        [pa.record_batch({"n": ["1", "x"]}), pa.record_batch({"n": ["3", "4"]})]
    )
    ok, dead = schema.validate(table, first_position=10)
    assert ok.column("n").to_pylist() == [1, 3, 4]
    assert dead.column("position").to_pylist() == [11]


def test_empty_input() -> None:
    schema = EventSchema("ev", [Column("n", "int64"), Column("s", "string")])
    ok, dead = schema.validate(
        pa.table({"n": pa.array([], pa.int64()), "s": pa.array([], pa.string())})
    )
    assert ok.num_rows == 0 and dead.num_rows == 0
    assert ok.schema == schema.arrow_schema
