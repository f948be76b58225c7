"""runtime.state.fields: columnar entity state, slots, growth and the Arrow round trip."""

from __future__ import annotations

import datetime as dt
import doctest

import numpy as np
import pyarrow as pa
import pytest

import runtime.state.fields as state_module
from runtime.errors import ConfigError
from runtime.state.fields import ColumnarState, Field, StateSpec
from runtime.state.keys import hash_keys

SPEC = StateSpec.of(
    [
        Field("count", "int64"),
        Field("total", "float64", 0.0),
        Field("best", "float64", float("nan")),
        Field("label", "string", "none"),
        Field("flag", "bool", False),
        Field("first_ts", "timestamp"),
        Field("recent", "timestamp", 0, 3),
        Field("vec", "float64", 0.5, 4),
        Field("hits", "int64", -1, 2),
    ]
)


def keys_of(words: list[str]) -> tuple[np.ndarray, pa.Array]:
    arr = pa.array(words)
    return hash_keys(arr), arr


def test_doctests() -> None:
    assert doctest.testmod(state_module).failed == 0


@pytest.mark.parametrize(
    "field",
    [
        lambda: Field("Bad", "int64"),
        lambda: Field("_key_hash", "int64"),
        lambda: Field("1x", "int64"),
        lambda: Field("x", "int32"),
        lambda: Field("s", "string", "", 3),
    ],
)
def test_field_definition_errors(field) -> None:
    with pytest.raises(ConfigError):
        field()


def test_spec_shorthands() -> None:
    spec = StateSpec.of({"n": "int64", "s": "string", "x": ("float64", 1.5), "w": ("int64", 7, 2)})
    assert spec.names() == ["n", "s", "x", "w"]
    assert spec.fields[1].default == ""
    assert spec.fields[2].default == 1.5
    assert spec.fields[3].width == 2
    assert StateSpec.of(spec) is spec


def test_activate_assigns_one_slot_per_key_and_defaults() -> None:
    st = ColumnarState(SPEC, key="user_id", capacity=4)
    h, k = keys_of(["a", "b", "a", "c", "b"])
    slots, new = st.activate(h, k)
    assert slots[0] == slots[2] and slots[1] == slots[4]
    assert len(set(slots.tolist())) == 3
    assert new.tolist() == [True, True, False, True, False]
    assert st.n_active == 3
    # a second activation finds the same slots and nothing new
    slots2, new2 = st.activate(h, k)
    assert slots2.tolist() == slots.tolist() and not new2.any()
    row = st.row(int(slots[0]))
    assert row["count"] == 0 and row["total"] == 0.0 and np.isnan(row["best"])
    assert row["label"] == "none" and row["flag"] is False and row["first_ts"] == 0
    assert row["recent"] == [0, 0, 0]
    assert row["vec"] == [0.5] * 4
    assert row["hits"] == [-1, -1]
    assert st.keys[slots].tolist() == ["a", "b", "a", "c", "b"]
    assert st.lookup(h).tolist() == slots.tolist()
    assert st.lookup(hash_keys(pa.array(["zz"]))).tolist() == [-1]


def test_grow_keeps_state() -> None:
    st = ColumnarState(SPEC, key="k", capacity=2)
    words = [f"k{i}" for i in range(5)]
    h, k = keys_of(words)
    slots, _ = st.activate(h[:2], k.slice(0, 2))
    st.cols["count"][slots] = [10, 11]
    st.cols["vec"][slots[0]] = [1, 2, 3, 4]
    slots_all, new = st.activate(h, k)  # 3 more than fit
    assert st.capacity >= 5
    assert new.tolist() == [False, False, True, True, True]
    assert slots_all[:2].tolist() == slots.tolist()
    assert st.cols["count"][slots_all].tolist() == [10, 11, 0, 0, 0]
    assert st.cols["vec"][slots_all[0]].tolist() == [1, 2, 3, 4]
    assert st.cols["vec"][slots_all[4]].tolist() == [0.5] * 4
    assert len(set(slots_all.tolist())) == 5
    for f in SPEC.fields:
        assert len(st.cols[f.name]) == st.capacity
    # grow a lot at once
    h2, k2 = keys_of([f"m{i}" for i in range(1000)])
    s2, new2 = st.activate(h2, k2)
    assert new2.all() and len(set(s2.tolist()) | set(slots_all.tolist())) == 1005
    assert st.n_active == 1005


def test_release_and_slot_reuse() -> None:
    st = ColumnarState(SPEC, key="k", capacity=4)
    h, k = keys_of(["a", "b", "c", "d"])
    slots, _ = st.activate(h, k)
    st.cols["count"][slots] = [1, 2, 3, 4]
    st.cols["label"][slots] = ["A", "B", "C", "D"]
    st.dirty[slots] = True
    st.release(slots[[1, 3]])
    assert st.n_active == 2
    assert st.lookup(h).tolist() == [slots[0], -1, slots[2], -1]
    assert not st.active[slots[[1, 3]]].any() and not st.dirty[slots[[1, 3]]].any()
    # new keys take the freed slots without growing, and start from the defaults
    h2, k2 = keys_of(["e", "f"])
    s2, new = st.activate(h2, k2)
    assert new.all()
    assert st.capacity == 4
    assert sorted(s2.tolist()) == sorted(slots[[1, 3]].tolist())
    assert st.cols["count"][s2].tolist() == [0, 0]
    assert st.cols["label"][s2].tolist() == ["none", "none"]
    assert st.keys[s2].tolist() == ["e", "f"]
    # the survivors kept their state
    assert st.cols["count"][slots[[0, 2]]].tolist() == [1, 3]
    # a released key comes back fresh
    s3, new3 = st.activate(h[1:2], k.slice(1, 1))
    assert new3.tolist() == [True] and st.cols["count"][s3[0]] == 0
    assert st.capacity == 8


def test_release_nothing() -> None:
    st = ColumnarState(SPEC, key="k")
    st.release(np.zeros(0, dtype=np.int64))
    assert st.n_active == 0


def fill(st: ColumnarState, slots: np.ndarray) -> None:
    n = len(slots)
    st.cols["count"][slots] = np.arange(n) + 1
    st.cols["total"][slots] = np.arange(n) * 1.25
    st.cols["best"][slots[1:]] = 9.5
    st.cols["label"][slots] = [f"lbl-{i}-ü" for i in range(n)]
    st.cols["flag"][slots] = np.arange(n) % 2 == 0
    st.cols["first_ts"][slots] = 1_700_000_000_000 + np.arange(n)
    st.cols["recent"][slots] = 1_700_000_000_000 + np.arange(3 * n).reshape(n, 3)
    st.cols["vec"][slots] = np.arange(4 * n, dtype=float).reshape(n, 4) / 8
    st.cols["hits"][slots] = np.arange(2 * n).reshape(n, 2)


def test_to_arrow_types_and_values() -> None:
    st = ColumnarState(SPEC, key="user_id")
    h, k = keys_of(["a", "b", "c"])
    slots, _ = st.activate(h, k)
    fill(st, slots)
    t = st.to_arrow(slots)
    assert t.column_names == ["user_id", "_key_hash", *SPEC.names()]
    assert t.schema.field("user_id").type == pa.string()
    assert t.schema.field("_key_hash").type == pa.int64()
    assert t.schema.field("first_ts").type == pa.timestamp("ms")
    assert t.schema.field("recent").type == pa.list_(pa.timestamp("ms"), 3)
    assert t.schema.field("vec").type == pa.list_(pa.float64(), 4)
    assert t.schema.field("flag").type == pa.bool_()
    assert t.column("_key_hash").to_numpy().view(np.uint64).tolist() == h.tolist()
    assert t.column("user_id").to_pylist() == ["a", "b", "c"]
    assert t.column("first_ts")[1].as_py() == dt.datetime(2023, 11, 14, 22, 13, 20, 1000)
    assert t.column("hits").to_pylist() == [[0, 1], [2, 3], [4, 5]]
    assert np.isnan(t.column("best")[0].as_py())


def test_to_arrow_load_round_trip() -> None:
    st = ColumnarState(SPEC, key="user_id")
    h, k = keys_of([f"u{i}" for i in range(6)])
    slots, _ = st.activate(h, k)
    fill(st, slots)
    table = st.to_arrow(slots)

    other = ColumnarState(SPEC, key="user_id", capacity=2)
    # a different order, and slots that are not 0..n
    h2, k2 = keys_of(["zz", *reversed([f"u{i}" for i in range(6)])])
    s2, _ = other.activate(h2, k2)
    rev = table.take(pa.array(list(range(5, -1, -1))))
    other.load(s2[1:], rev)
    back = other.to_arrow(s2[1:]).take(pa.array(list(range(5, -1, -1))))
    assert back.schema == table.schema
    for name in table.column_names:
        if name == "best":  # NaN != NaN for Table.equals
            assert np.array_equal(back[name].to_numpy(), table[name].to_numpy(), equal_nan=True)
        else:
            assert back[name].equals(table[name]), name
    for i, s in enumerate(slots):
        a, b = st.row(int(s)), other.row(int(s2[6 - i]))
        assert a.keys() == b.keys()
        for name in a:
            if name == "best" and i == 0:
                assert np.isnan(b[name])
            else:
                assert a[name] == b[name], name


def test_load_sliced_and_chunked_tables() -> None:
    st = ColumnarState(SPEC, key="k")
    h, k = keys_of(["a", "b", "c", "d"])
    slots, _ = st.activate(h, k)
    fill(st, slots)
    table = st.to_arrow(slots)
    chunked = pa.concat_tables([table.slice(1, 1), table.slice(3, 1)])
    assert chunked.column("vec").num_chunks == 2

    other = ColumnarState(SPEC, key="k")
    s2, _ = other.activate(h[[1, 3]], k.take(pa.array([1, 3])))
    other.load(s2, chunked)
    assert other.cols["vec"][s2].tolist() == st.cols["vec"][slots[[1, 3]]].tolist()
    assert other.cols["recent"][s2].tolist() == st.cols["recent"][slots[[1, 3]]].tolist()
    assert other.cols["label"][s2].tolist() == ["lbl-1-ü", "lbl-3-ü"]


def test_load_keeps_defaults_for_new_fields_and_fills_nulls() -> None:
    old = pa.table(
        {
            "k": ["a", "b"],
            "count": pa.array([5, None], pa.int64()),
            "total": pa.array([None, 2.0], pa.float64()),
            "first_ts": pa.array([None, 1000], pa.timestamp("ms")),
        }
    )
    st = ColumnarState(SPEC, key="k")
    slots, _ = st.activate(*keys_of(["a", "b"]))
    st.load(slots, old)
    assert st.cols["count"][slots].tolist() == [5, 0]
    assert st.cols["total"][slots].tolist() == [0.0, 2.0]
    assert st.cols["first_ts"][slots].tolist() == [0, 1000]
    assert st.cols["label"][slots].tolist() == ["none", "none"]  # not in the table
    assert st.cols["vec"][slots].tolist() == [[0.5] * 4] * 2


def test_load_bool_field_declared_by_shorthand() -> None:
    spec = StateSpec.of({"flag": "bool"})
    st = ColumnarState(spec, key="k")
    slots, _ = st.activate(*keys_of(["a", "b"]))
    st.cols["flag"][slots] = [True, False]
    table = st.to_arrow(slots)
    other = ColumnarState(spec, key="k")
    s2, _ = other.activate(*keys_of(["a", "b"]))
    other.load(s2, table)
    assert other.cols["flag"][s2].tolist() == [True, False]


def test_row_and_set_row() -> None:
    st = ColumnarState(SPEC, key="k")
    slots, _ = st.activate(*keys_of(["a"]))
    s = int(slots[0])
    assert not st.dirty[s]
    row = st.row(s)
    assert isinstance(row["count"], int) and isinstance(row["vec"], list)
    row["count"] += 3
    row["vec"] = [1.0, 2.0, 3.0, 4.0]
    row["label"] = "x"
    st.set_row(s, row)
    assert st.dirty[s]
    assert st.row(s)["count"] == 3
    assert st.row(s)["vec"] == [1.0, 2.0, 3.0, 4.0]
    assert st.row(s)["label"] == "x"
    st.set_row(s, {"count": 9})  # partial update
    assert st.row(s)["count"] == 9 and st.row(s)["label"] == "x"


def test_release_everything_after_growing() -> None:
    """After a grow the free stack still has room for every slot: a shard that filled
    up past its first capacity passivates most of its entities in one release (this
    failed with a broadcast error once the stack was shorter than the capacity)."""
    st = ColumnarState(SPEC, key="k", capacity=4)
    h, k = keys_of([f"k{i}" for i in range(3)])
    st.activate(h, k)  # 1 slot left free when it grows
    h2, k2 = keys_of([f"m{i}" for i in range(100)])
    st.activate(h2, k2)
    assert st.n_active == 103
    every = np.flatnonzero(st.active)
    st.release(every)
    assert st.n_active == 0 and not st.active.any()
    # every slot can be handed out again, each once
    h3, k3 = keys_of([f"z{i}" for i in range(st.capacity)])
    s3, new = st.activate(h3, k3)
    assert new.all() and sorted(s3.tolist()) == list(range(st.capacity))
