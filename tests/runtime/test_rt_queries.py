"""Query parameters as a hostile client sends them, and the adaptive QueryBatcher."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from runtime import EntityKind, Runtime, handler
from runtime.errors import ConfigError
from runtime.ingest.queries import MAX_KEY_LEN, BadQuery, Param, Query, QueryBatcher

K = Param("k", "int", 10, 1, 100)
Q = Query("recommend", key="customer", params=(K, Param("w", "float", 0.5, 0.0, 1.0)))


@pytest.mark.parametrize(
    ("raw", "want"), [("5", 5), ("1", 1), ("100", 100), (" 7 ", 7), (None, 10)]
)
def test_int_parameter_accepts(raw, want):
    assert K.parse(raw) == want


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("0", r"in \[1, 100\]"),
        ("-5", r"in \[1, 100\]"),
        ("101", r"in \[1, 100\]"),
        ("1e9", "must be int"),
        ("abc", "must be int"),
        ("", "must be int"),
        ("5.0", "must be int"),
        ("nan", "must be int"),
        ("inf", "must be int"),
        ("0x10", "must be int"),
        ("9" * 100, r"in \[1, 100\]"),  # beyond int64: a bound, not a 500
        ("-" + "9" * 100, r"in \[1, 100\]"),
        ("9" * 10_000, "must be int"),  # beyond Python's int parsing limit
    ],
)
def test_int_parameter_refuses_with_the_reason(raw, why):
    with pytest.raises(BadQuery, match=why) as err:
        K.parse(raw)
    assert len(str(err.value)) < 200  # the reason quotes a bounded part of what came


@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf", "1e400", "-0.1", "1.5", "x"])
def test_float_parameter_refuses_non_finite_and_out_of_range(raw):
    with pytest.raises(BadQuery):
        Q.params[1].parse(raw)


def test_unbounded_parameters_and_strings():
    assert Param("n", "int").parse("9" * 100) == int("9" * 100)  # no bounds: any int
    with pytest.raises(BadQuery, match="required"):
        Param("n", "int").parse(None)
    s = Param("tag", "str", "")
    assert s.parse("x" * MAX_KEY_LEN) == "x" * MAX_KEY_LEN
    with pytest.raises(BadQuery, match="over"):
        s.parse("x" * (MAX_KEY_LEN + 1))
    with pytest.raises(ConfigError):
        Param("k", "bool")


def test_query_parse():
    assert Q.parse({"customer": "c1"}) == ("c1", {"k": 10, "w": 0.5})
    assert Q.parse({"customer": "c1", "k": "3", "w": "1"}) == ("c1", {"k": 3, "w": 1.0})
    for args, why in [
        ({}, "'customer'.*required"),
        ({"customer": ""}, "'customer'.*required"),
        ({"customer": "c" * 10_240}, "over 256"),
        ({"customer": "c1", "kk": "3"}, r"unknown parameters \['kk'\]"),
        ({"customer": "c1", "k": "0"}, "'k'"),
        ({"customer": "c1", "k": "abc"}, "'k' must be int"),
    ]:
        with pytest.raises(BadQuery, match=why):
            Q.parse(args)


class Echo(EntityKind):
    name = "echoes"
    key = "id"
    state = {"n": "int64"}

    def on_event(self, state, event):
        state["n"] += 1

    @handler(batched=True)
    def ask(self, state, slots, k=1):
        if k == 13:
            raise ConfigError("thirteen is refused")
        n = np.where(slots >= 0, state.cols["n"][np.maximum(slots, 0)], -1)
        return [{"n": int(x), "k": k, "batch": len(slots)} for x in n]


def test_batcher_gathers_concurrent_requests_and_answers_each_its_own(tmp_path):
    with Runtime(data_dir=str(tmp_path), mode="local", shards=3) as rt:
        rt.register(Echo)
        rt.send("echoes", [{"id": f"e{i}"} for i in range(20) for _ in range(i + 1)])
        batcher = QueryBatcher(Query("ask", key="id"), rt.shards_of("echoes"), max_batch=64)

        async def many():
            asks = [batcher.ask(f"e{i % 25}", {"k": 2 if i % 2 else 3}) for i in range(200)]
            return await asyncio.gather(*asks)

        got = asyncio.run(many())
        for i, g in enumerate(got):
            j = i % 25
            assert g["n"] == (j + 1 if j < 20 else -1), (i, g)
            assert g["k"] == (2 if i % 2 else 3)
        assert batcher.requests == 200
        assert batcher.batches < 200  # gathered: far fewer batches than requests
        assert max(g["batch"] for g in got) > 1

        async def with_a_bad_one():
            return await asyncio.gather(
                batcher.ask("e1", {"k": 13}), batcher.ask("e2", {"k": 1}), return_exceptions=True
            )

        bad, good = asyncio.run(with_a_bad_one())
        assert isinstance(bad, ConfigError) and "thirteen" in str(bad)
        assert good["n"] == 3  # the other kwargs group is answered all the same
