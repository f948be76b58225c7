"""Stream–state joins: ``entity_join`` adds the live state of another kind's entities (also
passivated ones, read back from LanceDB), in-process and on Ray; ``TableLookup`` adds the
rows of a LanceDB table through its cache (misses, absent keys, capacity, TTL)."""

from __future__ import annotations

import pickle
import sys
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pytest

from runtime import Column, EntityKind, EventSchema, NotStartedError, Runtime, UnknownEntityError
from runtime.dataflow.builder import Pipeline
from runtime.operators.enrich import TableLookup, entity_join
from runtime.state.store import Store
from runtime.testing import FakeClock, MemorySource

ALL = 1_000_000


class Merchant(EntityKind):
    """The latest risk score each merchant reported, and how many reports."""

    name = "merchants"
    key = "merchant_id"
    state: ClassVar = {"risk": "float64", "n": "int64"}

    def on_event(self, state, event):
        state["risk"] = event["risk"]
        state["n"] += 1


TXNS = EventSchema(
    "txns",
    [
        Column("event_id", "int64"),
        Column("customer_id", "string"),
        Column("merchant_id", "string", required=False),
        Column("amount", "float64"),
    ],
)


def reports(merchants: list[str], rounds: int, seed: int) -> list[dict]:
    """Risk reports, several per merchant in random order (the last one counts)."""
    rng = np.random.default_rng(seed)
    ms = [m for _ in range(rounds) for m in merchants]
    rng.shuffle(ms)
    return [{"merchant_id": m, "risk": round(float(rng.random()), 4)} for m in ms]


def latest(sent: list[dict]) -> dict[str, tuple[float, int]]:
    """The reference: each merchant's last reported risk and its number of reports."""
    out: dict[str, tuple[float, int]] = {}
    for r in sent:
        out[r["merchant_id"]] = (r["risk"], out.get(r["merchant_id"], (0.0, 0))[1] + 1)
    return out


def txns(n: int, merchants: list[str | None], first_id: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "event_id": np.arange(first_id, first_id + n, dtype=np.int64),
            "customer_id": [f"c{i}" for i in rng.integers(0, 9, n)],
            "merchant_id": pa.array([merchants[i] for i in rng.integers(0, len(merchants), n)]),
            "amount": rng.random(n).round(2),
        }
    )


def enriched(source_id: str, table: pa.Table) -> Pipeline:
    return (
        Pipeline("payments")
        .source(MemorySource(table, batch_size=97, id=source_id))
        .validate(TXNS)
        .map("merchant", entity_join("merchants", on="merchant_id", fields=["risk"], prefix="m_"))
        .key_by("customer_id")
        .to_topic("out")
    )


def check_rows(out: pa.Table, ids: range, want: dict[str, tuple[float, int]]) -> int:
    """Every output row with an id in ``ids`` carries its merchant's risk (null if none);
    returns how many rows had no merchant state."""
    rows = [r for r in out.to_pylist() if r["event_id"] in ids]
    assert sorted(r["event_id"] for r in rows) == list(ids)  # each once
    for r in rows:
        expected = want.get(r["merchant_id"], (None, 0))[0]
        assert r["m_risk"] == expected, r
    return sum(r["m_risk"] is None for r in rows)


def open_runtime(mode: str, path, request, **cfg) -> Runtime:
    if mode == "ray":
        request.getfixturevalue("ray_session")
        from ray import cloudpickle

        # Ray's workers cannot import this test module: ship Merchant's code with it
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
        return Runtime(data_dir=str(path), shards=2, **cfg)
    return Runtime(data_dir=str(path), mode="local", shards=2, **cfg)


# -- entity_join --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["local", "ray"])
def test_entity_join_adds_the_live_state_of_the_merchant(mode, tmp_path, request):
    known = [f"m{i}" for i in range(12)]
    named = [*known, "m_unknown", None]  # some transactions name no merchant we know
    with open_runtime(mode, tmp_path, request) as rt:
        rt.register(Merchant)
        sent = reports(known[:8], rounds=3, seed=1)
        rt.send("merchants", sent)
        first = txns(400, named, first_id=0, seed=2)
        stats = enriched("t1", first).run(rt)
        assert stats.accepted == 400 and stats.dead_lettered == 0
        out = rt.read_topic("out", 0, ALL)
        assert check_rows(out, range(400), latest(sent)) > 0  # unknown merchants: null
        # the merchants change (and four appear): the next transactions see the new state
        sent += reports(known, rounds=1, seed=3)
        rt.send("merchants", sent[24:])
        second = txns(300, named, first_id=400, seed=4)
        enriched("t2", second).run(rt)
        check_rows(rt.read_topic("out", 0, ALL), range(400, 700), latest(sent))
        # the lookups served the state and created no entity
        for m, (risk, n) in latest(sent).items():
            assert Merchant.ref(m).get() == {"merchant_id": m, "risk": risk, "n": n}
        with pytest.raises(UnknownEntityError):
            Merchant.ref("m_unknown").get()


@pytest.mark.parametrize("mode", ["local", "ray"])
def test_entity_join_reads_passivated_merchants_back_from_lancedb(mode, tmp_path, request):
    """With room for 3 active merchants per shard, most are passivated; after a checkpoint
    their state is only in LanceDB, where the lookups find it (also in a new runtime)."""
    known = [f"m{i}" for i in range(30)]
    sent = reports(known, rounds=2, seed=5)
    want = latest(sent)
    table = txns(500, [*known, "m_unknown"], first_id=0, seed=6)
    with open_runtime(mode, tmp_path, request, max_active=3) as rt:
        rt.register(Merchant)
        for lo in range(0, len(sent), 4):  # small batches: the least recently used leave
            rt.send("merchants", sent[lo : lo + 4])
        rt.checkpoint()
        shards = rt.shard_stats()["merchants"]
        assert sum(s["passivated"] for s in shards) >= 20
        assert all(s["outbox"] == 0 and s["active"] <= 3 for s in shards)
        enriched("t1", table).run(rt)
        check_rows(rt.read_topic("out", 0, ALL), range(500), want)
        assert sum(s["loaded"] for s in rt.shard_stats()["merchants"]) >= 20
    stored = {
        r["merchant_id"]: (r["risk"], r["n"]) for r in Store(tmp_path).read("merchants").to_pylist()
    }
    assert stored == want
    if mode == "ray":
        return  # (the same shard code; a second set of actors costs seconds)
    with open_runtime(mode, tmp_path, request, max_active=3) as rt:  # only LanceDB has them now
        rt.register(Merchant)
        again = txns(300, [*known, "m_unknown"], first_id=500, seed=7)
        enriched("t2", again).run(rt)
        check_rows(rt.read_topic("out", 0, ALL), range(500, 800), want)


def test_unknown_entity_error_survives_pickling():
    """Ray hands an actor's error to the caller pickled: ``Merchant.ref(k).get()`` for an
    unknown merchant must raise UnknownEntityError on Ray too (and a site-partitioned
    kind's lookup, which catches it to ask the next site, depends on that)."""
    err = UnknownEntityError("merchants", "m9")
    back = pickle.loads(pickle.dumps(err))
    assert (type(back), back.kind, back.key, str(back)) == (type(err), "merchants", "m9", str(err))


def test_entity_join_errors_are_dead_letters_with_a_reason(tmp_path):
    table = txns(50, ["m1"], first_id=0, seed=1)
    with Runtime(data_dir=str(tmp_path), mode="local", shards=2) as rt:
        rt.register(Merchant)
        rt.send("merchants", [{"merchant_id": "m1", "risk": 0.5}])
        bad = (
            Pipeline("payments")
            .source(MemorySource(table, id="t"))
            .validate(TXNS)
            .map("merchant", entity_join("merchants", on="merchant_id", fields=["nope"]))
            .key_by("customer_id")
            .to_topic("out")
        )
        stats = bad.run(rt)
        rt.checkpoint()
    assert stats.dead_lettered == 50 and stats.accepted == 0
    reasons = set(Store(tmp_path).read("dead_letters").column("reason").to_pylist())
    assert reasons == {
        "step 'merchant' (map) failed: ConfigError: entity kind 'merchants' has no state fields ['nope']"
    }
    with pytest.raises(NotStartedError, match="inside a started runtime"):
        entity_join("merchants", on="merchant_id", fields=["risk"])(table)


# -- TableLookup --------------------------------------------------------------------------------

CATALOG = {
    "p1": (1.5, "tools"),
    "p2": (2.0, None),  # a row with a null value: null, as if missing
    "o'brien": (3.25, "books"),  # a quote in the key
    "x') OR ('1'='1": (4.0, "games"),  # a key that would be SQL if not quoted
    "back\\slash": (5.0, "misc"),
    "ünï": (6.0, "food"),
}


@pytest.fixture
def catalog(tmp_path) -> str:
    data = str(tmp_path / "ref")
    rows = [{"product_id": k, "price": p, "category": c} for k, (p, c) in CATALOG.items()]
    Store(data).upsert("catalog", pa.Table.from_pylist(rows), key="product_id")
    return data


def wanted(keys: list[str | None], field: int) -> list:
    return [CATALOG[k][field] if k in CATALOG else None for k in keys]


def test_table_lookup_values_nulls_and_quoted_keys(catalog):
    look = TableLookup(catalog, "catalog", key="product_id", on="pid", prefix="c_")
    keys = [*CATALOG, "nope", "p1", "o'brien", "'", "p1"]
    out = look(pa.table({"pid": keys, "n": range(len(keys))}))
    assert out.column_names == ["pid", "n", "c_price", "c_category"]  # all the table's columns
    assert out.column("c_price").to_pylist() == wanted(keys, 0)
    assert out.column("c_category").to_pylist() == wanted(keys, 1)
    assert out.column("n").to_pylist() == list(range(len(keys)))  # rows stay in order


def test_table_lookup_int_keys(tmp_path):
    data = str(tmp_path)
    Store(data).upsert(
        "sensors", pa.table({"sensor": [1, 2, 30, -4], "room": ["a", "b", "c", "d"]}), key="sensor"
    )
    look = TableLookup(data, "sensors", key="sensor", on="sensor", columns=["room"])
    out = look(pa.table({"sensor": [30, 2, 7, 2, -4]}))
    assert out.column("room").to_pylist() == ["c", "b", None, "b", "d"]
    text = TableLookup(data, "sensors", key="sensor", on="code", columns=["room"])
    assert text(pa.table({"code": ["1", "x", "30"]})).column("room").to_pylist() == ["a", None, "c"]


def test_table_lookup_of_an_empty_batch(catalog):
    look = TableLookup(catalog, "catalog", key="product_id", on="pid", columns=["price"])
    empty = look(pa.table({"pid": pa.array([], pa.string())}))
    assert empty.num_rows == 0 and empty.column_names == ["pid", "price"]
    assert empty.schema.field("price").type == pa.float64()


def test_table_lookup_caches_keys_and_absent_keys(catalog):
    look = TableLookup(catalog, "catalog", key="product_id", on="pid", columns=["price"])
    keys = ["p1", "p2", "nope", "p1"]
    look(pa.table({"pid": keys}))
    assert look.stats() == {"hits": 0, "misses": 3, "queries": 1, "cached": 3}
    for _ in range(3):  # known keys, present or absent, do not query again
        out = look(pa.table({"pid": ["nope", "p2", "p1", "p1"]}))
        assert out.column("price").to_pylist() == [None, 2.0, 1.5, 1.5]
    assert look.stats() == {"hits": 9, "misses": 3, "queries": 1, "cached": 3}
    out = look(pa.table({"pid": ["p1", "ünï", "other"]}))  # only the new keys are asked for
    assert out.column("price").to_pylist() == [1.5, 6.0, None]
    assert look.stats() == {"hits": 10, "misses": 5, "queries": 2, "cached": 5}


def test_table_lookup_starts_over_when_full(catalog):
    look = TableLookup(
        catalog, "catalog", key="product_id", on="pid", columns=["price"], capacity=3
    )
    look(pa.table({"pid": ["p1", "p2", "o'brien"]}))
    assert look.stats()["cached"] == 3
    out = look(pa.table({"pid": ["p1", "ünï"]}))  # full: the cache starts over, p1 is asked again
    assert out.column("price").to_pylist() == [1.5, 6.0]
    assert look.stats() == {"hits": 0, "misses": 5, "queries": 2, "cached": 2}
    out = look(pa.table({"pid": ["p1"]}))
    assert out.column("price").to_pylist() == [1.5]
    assert look.stats()["queries"] == 2  # not full yet: a hit


def test_table_lookup_ttl_picks_up_a_table_update(catalog):
    clock = FakeClock()
    look = TableLookup(
        catalog,
        "catalog",
        key="product_id",
        on="pid",
        columns=["price"],
        ttl_seconds=10,
        clock=clock,
    )
    assert look(pa.table({"pid": ["p1", "new"]})).column("price").to_pylist() == [1.5, None]
    Store(catalog).upsert(
        "catalog",
        pa.table({"product_id": ["p1", "new"], "price": [9.0, 7.0], "category": ["x", "y"]}),
        key="product_id",
    )
    clock.advance(9)  # within the TTL: the cached rows, stale as allowed
    assert look(pa.table({"pid": ["p1", "new"]})).column("price").to_pylist() == [1.5, None]
    clock.advance(2)  # past it: read again
    assert look(pa.table({"pid": ["p1", "new"]})).column("price").to_pylist() == [9.0, 7.0]
    assert look.stats()["queries"] == 2


def test_table_lookup_as_a_pipeline_step(catalog, tmp_path):
    keys = [*CATALOG, "nope", None]
    rng = np.random.default_rng(3)
    pids = [keys[i] for i in rng.integers(0, len(keys), 600)]
    table = pa.table(
        {
            "event_id": np.arange(600),
            "customer_id": [f"c{i % 7}" for i in range(600)],
            "merchant_id": pa.array(pids, pa.string()),
            "amount": np.ones(600),
        }
    )
    look = TableLookup(catalog, "catalog", key="product_id", on="merchant_id", prefix="p_")
    flow = (
        Pipeline("orders")
        .source(MemorySource(table, batch_size=50, id="orders"))
        .validate(TXNS)
        .map("catalog", look)
        .key_by("customer_id")
        .to_topic("out")
    )
    with Runtime(data_dir=str(tmp_path / "rt"), mode="local", shards=2) as rt:
        stats = flow.run(rt)
        out = rt.read_topic("out", 0, ALL).sort_by("event_id")
    assert stats.accepted == 600
    got = out.column("merchant_id").to_pylist()
    assert got == pids
    assert out.column("p_price").to_pylist() == wanted(got, 0)
    assert out.column("p_category").to_pylist() == wanted(got, 1)
    assert look.stats()["queries"] <= 12  # 12 batches; the keys were all known after a few
    assert look.stats()["hits"] > look.stats()["misses"]
