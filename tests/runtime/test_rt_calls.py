"""Calls on entities by key: batched handlers (one pass over many slots, -1 for unknown
keys), call_many, keyword arguments, entities passivated or stored brought back, and
errors - in local mode and on Ray (one session for the module)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from runtime import EntityKind, Runtime, handler
from runtime.errors import ActorFailedError, ConfigError


class Wallet(EntityKind):
    name = "wallets"
    key = "user"
    state = {"balance": "float64", "n": "int64"}

    def on_event(self, state, event):
        state["balance"] += event["amount"]
        state["n"] += 1

    @handler(batched=True)
    def balances(self, state, slots, scale=1.0, missing=-1.0):
        known = slots >= 0
        b = np.where(known, state.cols["balance"][np.maximum(slots, 0)] * scale, missing)
        return [{"known": bool(k), "balance": float(x)} for k, x in zip(known, b, strict=True)]

    @handler(batched=True)
    def slots_seen(self, state, slots):
        return [len(slots)] * len(slots)  # how many keys the one call was given

    @handler(batched=True)
    def wrong_length(self, state, slots):
        return [0]

    @handler(batched=True)
    def boom(self, state, slots):
        raise ValueError("boom in a batched handler")

    @handler
    def deposit(self, state, amount, note=""):
        state["balance"] += amount
        return f"{note}{state['balance']:g}"


def deposits(users: int, rounds: int = 1) -> list[dict]:
    return [{"user": f"u{i}", "amount": float(i + 1)} for _ in range(rounds) for i in range(users)]


@pytest.fixture(scope="module", params=["local", "ray"])
def mode(request):
    if request.param == "ray":
        import sys

        ray = request.getfixturevalue("ray_session")
        # Ray's workers cannot import this test module: ship the kind by value
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return request.param


@pytest.fixture(scope="module")
def rt(mode, tmp_path_factory):
    """One runtime per mode (actors start in seconds on Ray); tests touch distinct keys."""
    with Runtime(data_dir=str(tmp_path_factory.mktemp(mode)), mode=mode, shards=2) as rt:
        rt.register(Wallet)
        rt.send("wallets", deposits(10, rounds=2))
        yield rt


def test_call_many_runs_a_batched_handler_once_per_shard_in_key_order(rt):
    keys = ["u3", "u0", "nobody", "u3", "u9", "ghost"]
    got = rt.call_many("wallets", keys, "balances", scale=0.5)
    assert [g["known"] for g in got] == [True, True, False, True, True, False]
    assert [g["balance"] for g in got] == [4.0, 1.0, -1.0, 4.0, 10.0, -1.0]
    # positional and keyword arguments both reach the handler
    got = rt.call_many("wallets", ["nobody", "u1"], "balances", 1.0, missing=7.5)
    assert [g["balance"] for g in got] == [7.5, 4.0]
    # one call per shard: each shard's call saw all of its keys at once
    seen = rt.call_many("wallets", [f"u{i}" for i in range(10)], "slots_seen")
    assert sum(1 / s for s in seen) == pytest.approx(2)  # two shards, 10 keys between them
    # the deployed kind takes arrow arrays (chunked, or not strings) too
    kind = rt.deployment.kind("wallets")
    chunked = pa.chunked_array([["u2"], ["u5", "nobody"]])
    assert [g["balance"] for g in kind.call_many(chunked, "balances")] == [6.0, 12.0, -1.0]
    assert rt.call_many("wallets", [], "balances") == []


def test_batched_handlers_never_create_entities(rt):
    assert rt.ref("wallets", "stranger").call("balances", scale=3.0) == {
        "known": False,
        "balance": -1.0,
    }
    rt.call_many("wallets", ["stranger", "other"], "balances")
    assert rt.lookup("wallets", pa.array(["stranger", "other", "u0"])).column("n").to_pylist() == [
        None,
        None,
        2,
    ]


def test_ref_call_with_keyword_arguments_and_per_entity_call_many(rt):
    assert rt.ref("wallets", "u6").call("deposit", 5.0, note="now ") == "now 19"
    assert rt.ref("wallets", "u6").call("balances", scale=2.0)["balance"] == 38.0
    # a per-entity handler through call_many runs key by key, creating as it goes
    got = rt.call_many("wallets", ["u7", "new", "u7"], "deposit", 1.0, note="=")
    assert got == ["=17", "=1", "=18"]
    assert rt.ref("wallets", "new").get()["balance"] == 1.0


def test_errors_reach_the_caller(rt):
    with pytest.raises(ConfigError, match="no handler 'nope'.*balances"):
        rt.call_many("wallets", ["u1"], "nope")
    with pytest.raises(ConfigError, match="no handler"):
        rt.ref("wallets", "u1").call("nope")
    # on Ray a handler's own error arrives wrapped, its message kept
    with pytest.raises(
        (TypeError, ActorFailedError), match=r"wrong_length.*returned 1 results for \d keys"
    ):
        rt.call_many("wallets", ["u1", "u2", "u3"], "wrong_length")
    with pytest.raises((ValueError, ActorFailedError), match="boom in a batched handler"):
        rt.call_many("wallets", ["u1"], "boom")
    with pytest.raises((TypeError, ActorFailedError), match="bogus"):
        rt.call_many("wallets", ["u1"], "balances", bogus=1)
    # the shards still answer after all that
    assert rt.call_many("wallets", ["u1"], "balances")[0]["balance"] == 4.0


def test_passivated_and_stored_entities_are_brought_back(rt, mode, tmp_path):
    """Last in the module: it stops the module's runtime (one runtime at a time on Ray)."""
    rt.stop()
    users = 40
    with Runtime(data_dir=str(tmp_path), mode=mode, shards=1, max_active=5) as rt:
        rt.register(Wallet)
        for lo in range(0, users, 5):  # five batches of five: most are passivated by now
            rt.send("wallets", deposits(users)[lo : lo + 5])
        assert rt.shard_stats()["wallets"][0]["passivated"] >= users - 5
        got = rt.call_many("wallets", [f"u{i}" for i in range(users)], "balances")
        assert all(g["known"] for g in got)
        assert [g["balance"] for g in got] == [float(i + 1) for i in range(users)]
        got = rt.call_many("wallets", [f"u{i}" for i in range(users)], "deposit", 1.0)
        assert got == [f"{i + 2:g}" for i in range(users)]
    with Runtime(data_dir=str(tmp_path), mode=mode, shards=1, max_active=5) as rt:
        rt.register(Wallet)  # a new runtime: every entity is in LanceDB only
        got = rt.call_many("wallets", ["u0", "missing", f"u{users - 1}"], "balances")
        assert got == [
            {"known": True, "balance": 2.0},
            {"known": False, "balance": -1.0},
            {"known": True, "balance": float(users + 1)},
        ]
