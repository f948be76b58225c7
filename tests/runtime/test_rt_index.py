"""runtime.state.index: HashIndex against a dict oracle, SeenSet semantics."""

from __future__ import annotations

import doctest

import numpy as np
import pyarrow as pa
import pytest

import runtime.state.index as index_module
from runtime.state.index import HashIndex, SeenSet, seen_sets

U64_MAX = np.iinfo(np.uint64).max


def test_doctests() -> None:
    assert doctest.testmod(index_module).failed == 0


def test_empty_index() -> None:
    idx = HashIndex()
    assert len(idx) == 0
    assert idx.lookup(np.array([0, 5], dtype=np.uint64)).tolist() == [-1, -1]
    assert idx.lookup(np.zeros(0, dtype=np.uint64)).shape == (0,)
    idx.delete(np.array([1], dtype=np.uint64))  # absent: ignored
    idx.insert(np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64))
    assert len(idx) == 0


def test_extreme_keys() -> None:
    idx = HashIndex()
    keys = np.array([U64_MAX, 0, 1 << 63, U64_MAX - 1], dtype=np.uint64)
    idx.insert(keys, np.array([1, 2, 3, 4]))
    assert idx.lookup(keys).tolist() == [1, 2, 3, 4]
    assert idx.lookup(np.array([2, (1 << 63) + 1], dtype=np.uint64)).tolist() == [-1, -1]
    assert np.all(np.diff(idx.keys) > 0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_ops_against_dict_oracle(seed: int) -> None:
    rng = np.random.default_rng(seed)
    idx = HashIndex()
    oracle: dict[int, int] = {}
    # a small key universe forces collisions between inserts, deletes and lookups,
    # plus some keys spread over the full 64-bit range
    universe = np.concatenate(
        [
            np.arange(2000, dtype=np.uint64),
            rng.integers(0, U64_MAX, size=2000, dtype=np.uint64, endpoint=True),
        ]
    )
    next_value = 0
    for _ in range(200):
        op = rng.integers(0, 3)
        sample = rng.choice(universe, size=int(rng.integers(0, 120)))
        if op == 0:
            new = np.array(
                [k for k in dict.fromkeys(sample.tolist()) if k not in oracle], dtype=np.uint64
            )
            values = np.arange(next_value, next_value + len(new), dtype=np.int64)
            next_value += len(new)
            rng.shuffle(perm := np.arange(len(new)))
            idx.insert(new[perm], values[perm])
            oracle.update(zip(new.tolist(), values.tolist(), strict=True))
        elif op == 1:
            idx.delete(sample)
            for k in sample.tolist():
                oracle.pop(k, None)
        probe = np.concatenate([sample, rng.choice(universe, size=50)])
        assert idx.lookup(probe).tolist() == [oracle.get(k, -1) for k in probe.tolist()]
        assert len(idx) == len(oracle)
    assert np.all(np.diff(idx.keys) > 0)  # strictly sorted, unique
    assert sorted(idx.keys.tolist()) == sorted(oracle)


def oracle_add(oracle: set[int], ids: np.ndarray) -> list[bool]:
    """What ``SeenSet.add_new`` must answer, from a Python set (which takes the ids)."""
    out = []
    for i in ids.tolist():
        out.append(i not in oracle)
        oracle.add(i)
    return out


def test_seen_set_in_batch_repeats_first_wins() -> None:
    seen = SeenSet()
    ids = np.array([5, 3, 5, 5, 3, 9])
    assert seen.add_new(ids).tolist() == [True, True, False, False, False, True]
    assert len(seen) == 3
    assert seen.add_new(np.array([9, 10, 10, 3])).tolist() == [False, True, False, False]
    assert seen.contains(np.array([3, 5, 9, 10, 11])).tolist() == [True] * 4 + [False]
    assert seen.add_new(np.zeros(0, dtype=np.int64)).tolist() == []


def test_seen_set_random_against_python_set() -> None:
    rng = np.random.default_rng(7)
    seen, oracle = SeenSet(), set()
    for _ in range(50):
        ids = rng.integers(-500, 500, size=rng.integers(0, 80))
        assert seen.add_new(ids).tolist() == oracle_add(oracle, ids)
    assert len(seen) == len(oracle)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_seen_set_rising_random_and_repeated_batches_against_python_set(seed: int) -> None:
    """Batches above every id (appended in place), interleaved and repeated ones (merged),
    small ones (buffered) and large ones (spanning generations) all answer like a set."""
    rng = np.random.default_rng(seed)
    seen, oracle = SeenSet(capacity=1 << 40, generation=10_000), set()
    top = 0
    for _ in range(120):
        size = int(rng.choice([0, 1, 50, 700, 2500, 6000]))
        shape = rng.integers(0, 4)
        if shape == 0:  # rising, above everything so far
            ids = top + np.cumsum(rng.integers(1, 4, size))
        elif shape == 1:  # rising, but starting inside what was seen
            ids = max(top - size, 0) + np.arange(size) * 2
        elif shape == 2:  # anywhere, with repeats inside the batch
            ids = rng.integers(-50, top + 100, size)
        else:  # rising, then one step back
            ids = top + np.arange(size)
            if size > 1:
                ids[-1] = ids[0]
        top = max(top, int(ids.max()) + 1) if size else top
        assert seen.add_new(ids).tolist() == oracle_add(oracle, ids)
        assert len(seen) == len(oracle)
    for gen in seen._gens:
        assert (np.diff(gen) > 0).all() and len(gen) <= 10_000
    assert sorted(seen.ids().tolist()) == sorted(oracle)
    probe = rng.integers(-100, top + 100, 5000)
    assert seen.contains(probe).tolist() == [int(i) in oracle for i in probe]


def test_seen_set_capacity_evicts_oldest_generations() -> None:
    seen = SeenSet(capacity=10, generation=4)
    assert seen.add_new(np.arange(0, 6)).all()
    assert seen.add_new(np.arange(6, 12)).all()  # 12 ids: the others hold only 8 < 10, keep all
    assert seen.contains(np.arange(0, 12)).all()
    assert seen.add_new(np.arange(12, 16)).all()  # now the oldest generation (0..3) can go
    assert len(seen) == 12
    assert not seen.contains(np.arange(0, 4)).any()
    assert seen.contains(np.arange(4, 16)).all()
    # forgotten ids count as new again; remembered ones do not
    assert seen.add_new(np.array([0, 7])).tolist() == [True, False]


def test_seen_set_batch_larger_than_capacity_keeps_newest() -> None:
    seen = SeenSet(capacity=5, generation=2)
    assert seen.add_new(np.arange(8)).all()
    assert 5 <= len(seen) <= 5 + 2
    # the newest ids must still be recognised as duplicates
    assert not seen.add_new(np.arange(3, 8)).any()


def test_seen_sets_forget_the_oldest_epoch_even_when_rows_are_out_of_order() -> None:
    """A restart rebuilds the dedup sets from the saved rows; past the capacity the ids
    of the oldest epoch are forgotten, whatever order the table hands the rows in."""
    old = np.arange(1 << 16, dtype=np.int64)
    new = old + 100_000
    rows = pa.table(  # the newer epoch first, as a compaction could leave them
        {
            "scope": ["k"] * (2 << 16) + ["other"] * 3,
            "event_id": np.concatenate([new, old, [7, 7, 8]]),
            "epoch": np.concatenate([np.full(1 << 16, 2), np.full(1 << 16, 1), [1, 1, 2]]),
        }
    )
    sets = seen_sets(rows, capacity=1 << 16)
    assert sorted(sets) == ["k", "other"]
    assert sets["k"].contains(new).all() and not sets["k"].contains(old).any()
    assert sets["other"].ids().tolist() == [7, 8] and len(sets["other"]) == 2
