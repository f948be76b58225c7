"""runtime.state.keys: the stable key hash decides shard placement of stored data."""

from __future__ import annotations

import doctest

import numpy as np
import pyarrow as pa
import pytest

import runtime.state.keys as keys_module
from runtime.state.keys import as_signed, hash_keys, shard_of

MASK = (1 << 64) - 1
P = 0x100000001B3
M1 = 0xBF58476D1CE4E5B9
M2 = 0x94D049BB133111EB

# Frozen values: if one of these changes, every stored entity lands on another shard.
FROZEN = {
    "": 0x0,
    "a": 0xA91AD25FEFEB4260,
    "c42": 0x6B9B22F9249D1314,
    "customer-000001": 0x7E2A730A14501E04,
    "ünïcødé": 0x493F4130970880CD,
    "日本語": 0xA8985397B34BA2B6,
    "a" * 100: 0x6A2EB74D65D365B3,
}
FROZEN_SHARDS_OF_8 = [0, 7, 1, 2, 0, 7, 5]


def reference_hash(s: str | None) -> int:
    """The documented algorithm, in plain Python integers."""
    data = (s or "").encode("utf-8")
    poly = 0
    for i, b in enumerate(data):
        poly = (poly + (b + 1) * pow(P, i, 1 << 64)) & MASK
    x = poly ^ ((len(data) * M2) & MASK)
    x ^= x >> 30
    x = (x * M1) & MASK
    x ^= x >> 27
    x = (x * M2) & MASK
    return x ^ (x >> 31)


def test_doctests() -> None:
    assert doctest.testmod(keys_module).failed == 0


def test_frozen_values() -> None:
    h = hash_keys(pa.array(list(FROZEN)))
    assert h.dtype == np.uint64
    assert [int(v) for v in h] == list(FROZEN.values())
    assert shard_of(h, 8).tolist() == FROZEN_SHARDS_OF_8


def test_matches_reference_implementation() -> None:
    rng = np.random.default_rng(1)
    alphabet = list("abcxyz0129-_ üéß日本\U0001f600")
    words = ["".join(rng.choice(alphabet, size=rng.integers(0, 40))) for _ in range(300)]
    got = hash_keys(pa.array(words))
    assert [int(v) for v in got] == [reference_hash(w) for w in words]


def test_same_across_calls_and_positions() -> None:
    a = hash_keys(pa.array(["x", "y", "x"]))
    b = hash_keys(pa.array(["y", "x"]))
    assert a[0] == a[2] == b[1]
    assert a[1] == b[0]
    assert a[0] != a[1]


def test_slices_and_offsets() -> None:
    arr = pa.array(["x", "hello", None, "ünï", "", "zz", "c42"])
    full = hash_keys(arr)
    for off in range(len(arr)):
        for length in range(len(arr) - off + 1):
            assert (hash_keys(arr.slice(off, length)) == full[off : off + length]).all()
    large = arr.cast(pa.large_string())
    for off in range(len(arr)):
        assert (hash_keys(large.slice(off)) == full[off:]).all()


def test_nulls_hash_like_empty_string() -> None:
    h = hash_keys(pa.array([None, "", "a", None]))
    assert h[0] == h[1] == h[3] == 0
    assert h[2] == FROZEN["a"]
    assert hash_keys(pa.array([None, None], pa.string())).tolist() == [0, 0]


def test_unicode_is_hashed_as_utf8_bytes() -> None:
    # composed and decomposed forms are different byte strings, so different keys
    h = hash_keys(pa.array(["é", "e\u0301", "\U0001f600"]))
    assert h[0] != h[1]
    assert int(h[2]) == reference_hash("\U0001f600")


def test_large_string_and_chunked_input() -> None:
    words = [f"user-{i}" for i in range(1000)]
    expected = hash_keys(pa.array(words))
    assert (hash_keys(pa.array(words, pa.large_string())) == expected).all()
    chunked = pa.chunked_array([words[:10], words[10:600], words[600:]])
    assert (hash_keys(chunked) == expected).all()
    single = pa.chunked_array([pa.array(words).slice(3, 50)])
    assert (hash_keys(single) == expected[3:53]).all()
    empty = pa.chunked_array([], pa.string())
    assert hash_keys(empty).shape == (0,)
    assert hash_keys(pa.array([], pa.string())).dtype == np.uint64


def test_dictionary_input_hashes_like_values() -> None:
    arr = pa.array(["a", "b", "a"])
    assert (hash_keys(arr.dictionary_encode()) == hash_keys(arr)).all()


def test_long_keys_beyond_power_cache() -> None:
    # more than 2**16 bytes in one batch grows the cached powers table
    words = ["k" * 5000 + str(i) for i in range(30)]
    got = hash_keys(pa.array(words))
    assert [int(v) for v in got[:3]] == [reference_hash(w) for w in words[:3]]
    assert len(set(got.tolist())) == 30


def test_distribution_over_shards_is_roughly_uniform() -> None:
    h = hash_keys(pa.array([f"c{i}" for i in range(200_000)]))
    assert len(np.unique(h)) == len(h)
    for n in (2, 7, 16):
        counts = np.bincount(shard_of(h, n), minlength=n)
        expected = len(h) / n
        assert counts.min() > 0.95 * expected
        assert counts.max() < 1.05 * expected
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 3 * n + 30


@pytest.mark.parametrize("n", [1, 3, 8])
def test_shard_of_range_and_type(n: int) -> None:
    s = shard_of(hash_keys(pa.array([str(i) for i in range(500)])), n)
    assert s.dtype == np.int64
    assert s.min() >= 0 and s.max() < n


def test_as_signed_is_a_view() -> None:
    h = np.array([0, 1, (1 << 63), MASK], dtype=np.uint64)
    assert as_signed(h).tolist() == [0, 1, -(1 << 63), -1]
    assert as_signed(h).view(np.uint64).tolist() == h.tolist()


@pytest.mark.parametrize("distinct", [50, 3_000, 9_000])
def test_large_batches_hash_like_the_reference_whichever_path(distinct: int) -> None:
    # 9,000 keys: 50 distinct take the distinct-keys path, 3,000 or 9,000 hash each key
    rng = np.random.default_rng(distinct)
    words = [f"cust-{i}-{'ü' * (i % 3)}" for i in range(distinct)]
    picked = [words[i] for i in rng.integers(0, distinct, 9_000)]
    if distinct == 9_000:
        picked = words
    picked[::97] = [None] * len(picked[::97])
    arr = pa.array(picked)
    got = hash_keys(arr)
    sample = rng.integers(0, len(picked), 400)
    assert [int(got[i]) for i in sample] == [reference_hash(picked[i]) for i in sample]
    # slices and chunks of a large batch agree with the whole
    assert (hash_keys(arr.slice(1234, 5000)) == got[1234:6234]).all()
    chunked = pa.chunked_array([arr.slice(0, 4500), arr.slice(4500)])
    assert (hash_keys(chunked) == got).all()
    # a dictionary array with null indices, and one with a null in its dictionary
    assert (hash_keys(arr.dictionary_encode()) == got).all()
    with_null_value = pa.DictionaryArray.from_arrays(
        pa.array([0, 1, 2, 1] * 1500, pa.int32()), pa.array(["a", None, "b"])
    )
    assert hash_keys(with_null_value).tolist()[:4] == [FROZEN["a"], 0, reference_hash("b"), 0]


def test_dictionary_arrays_of_any_index_type_hash_their_values_only() -> None:
    """A dictionary array from elsewhere (IPC, pandas) hashes like its values: narrow
    indices with a full dictionary and a null, and entries no row uses (even bytes that
    are no text), change nothing."""
    entries = [f"v{i}" for i in range(128)]
    narrow = pa.DictionaryArray.from_arrays(pa.array([0, None, 127], pa.int8()), pa.array(entries))
    assert hash_keys(narrow).tolist() == [reference_hash("v0"), 0, reference_hash("v127")]
    unused = pa.DictionaryArray.from_arrays(
        pa.array([1, 1], pa.int32()), pa.array([b"\xff\xfe", b"ok"], pa.binary())
    )
    assert hash_keys(unused).tolist() == [reference_hash("ok")] * 2
    big = pa.DictionaryArray.from_arrays(
        pa.array([5, 3], pa.int32()), pa.array([f"k{i}" for i in range(200_000)])
    )
    assert hash_keys(big).tolist() == [reference_hash("k5"), reference_hash("k3")]
