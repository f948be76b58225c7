"""Stable, vectorized hashing of string keys.

Keys decide which shard hosts an entity, so the hash must be the same in every
process and every run (Python's ``hash()`` is salted per process) and it must be
computed over a whole batch at once: mapping strings through a Python dict costs
a third of a vectorized pipeline (see ARCHITECTURE.md).

The hash is a polynomial rolling hash over the UTF-8 bytes, computed for all
strings of an Arrow array with prefix sums in wrapping uint64 arithmetic, then
mixed with the length and a splitmix64 finaliser.

>>> import pyarrow as pa
>>> h = hash_keys(pa.array(["c1", "c2", "c1"]))
>>> bool(h[0] == h[2]) and bool(h[0] != h[1])
True
>>> shard_of(h, 4).tolist() == shard_of(hash_keys(pa.array(["c1", "c2", "c1"])), 4).tolist()
True
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_P = np.uint64(0x100000001B3)  # FNV prime: odd, so it is invertible mod 2**64
_P_INV = np.uint64(pow(int(_P), -1, 2**64))
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads the polynomial hash over all 64 bits."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


_POWERS = np.ones(1, dtype=np.uint64)
_INV_POWERS = np.ones(1, dtype=np.uint64)


def _powers(m: int) -> tuple[np.ndarray, np.ndarray]:
    """P**i and P**-i for i < m, cached and grown by doubling (they cost as much as the hash)."""
    global _POWERS, _INV_POWERS
    if len(_POWERS) < m:
        size = max(m, 2 * len(_POWERS), 1 << 16)
        with np.errstate(over="ignore"):
            p = np.full(size, _P, dtype=np.uint64)
            p[0] = 1
            q = np.full(size, _P_INV, dtype=np.uint64)
            q[0] = 1
            _POWERS = np.multiply.accumulate(p)
            _INV_POWERS = np.multiply.accumulate(q)
    return _POWERS, _INV_POWERS


#: below this many keys a batch is hashed as it is: finding its distinct keys costs more
_DICT_MIN = 4096
#: a strided sample of this many keys tells whether a batch is mostly repeats
_SAMPLE = 1024
#: hash distinct keys only when at most this share of the sample is distinct. Arrow's
#: dictionary encoding costs 20-70 ns a key (more the more keys are distinct), hashing a
#: key 10 ns + ~3 ns a byte (2 cores, 2026-12): hashing each distinct key once pays off
#: only for batches of few distinct keys (a category, a merchant: 0.055 vs 0.092 s for 2M),
#: and costs twice as much for customer or device ids, half of them distinct (0.17 vs
#: 0.07 s). A sample's distinct share is at least the batch's, so a batch of repeats the
#: sample missed is hashed key by key: never slower than that.
_SAMPLE_SHARE = 0.2


def hash_keys(keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Hash every string of ``keys`` to a stable uint64 (nulls hash like "").

    A large batch of few distinct keys (a category per event) hashes each distinct key
    once and spreads the hashes by Arrow's dictionary indices; any other batch hashes key
    by key. Both give the same hashes.
    """
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks() if keys.num_chunks != 1 else keys.chunk(0)
    if pa.types.is_dictionary(keys.type):
        # its dictionary may hold entries no row uses (many more than the rows, or bytes
        # that are no text): only the values are hashed, as for any other array
        keys = keys.dictionary_decode()
    if len(keys) >= _DICT_MIN and _mostly_repeats(keys):
        return _spread(pc.dictionary_encode(keys))
    return _hash_each(keys)


def _mostly_repeats(keys: pa.Array) -> bool:
    """Whether a strided sample of ``keys`` is mostly keys it holds more than once."""
    step = len(keys) // _SAMPLE
    sample = keys.take(pa.array(np.arange(0, step * _SAMPLE, step)))
    return len(pc.unique(sample)) <= _SAMPLE_SHARE * _SAMPLE


def _spread(encoded: pa.DictionaryArray) -> np.ndarray:
    """The hash of every value of ``dictionary_encode``'s output (every entry used),
    hashing each dictionary entry once."""
    table = _hash_each(encoded.dictionary)
    indices = encoded.indices.cast(pa.int64())  # room for the extra entry below
    if indices.null_count:  # a null value hashes like ""
        table = np.append(table, _hash_each(pa.array([""])))
        indices = pc.fill_null(indices, len(table) - 1)
    return table[indices.to_numpy()]


def _hash_each(keys: pa.Array) -> np.ndarray:
    """The hash of every string of ``keys``, computed string by string (vectorized)."""
    if not pa.types.is_large_string(keys.type):
        keys = pc.cast(keys, pa.large_string())
    keys = pc.fill_null(keys, "")
    n = len(keys)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    _, off_buf, data_buf = keys.buffers()
    offsets = np.frombuffer(off_buf, dtype=np.int64, count=keys.offset + n + 1)[keys.offset :]
    start, end = offsets[0], offsets[-1]
    data = np.frombuffer(data_buf, dtype=np.uint8, count=end)[start:end] if end > start else None
    rel = offsets - start
    with np.errstate(over="ignore"):
        if data is None:
            poly = np.zeros(n, dtype=np.uint64)
        else:
            powers, inv = _powers(len(data) + 1)
            prefix = np.zeros(len(data) + 1, dtype=np.uint64)
            np.cumsum((data.astype(np.uint64) + np.uint64(1)) * powers[: len(data)], out=prefix[1:])
            poly = (prefix[rel[1:]] - prefix[rel[:-1]]) * inv[rel[:-1]]
        lengths = np.diff(rel).astype(np.uint64)
        return _mix(poly ^ (lengths * _M2))


def shard_of(hashes: np.ndarray, n_shards: int) -> np.ndarray:
    """Shard index (int64) for each hash; a pure function of the key and shard count."""
    # The top bits decide, so shard choice stays independent of the low bits that
    # in-shard indexes sort by.
    return ((hashes >> np.uint64(32)) % np.uint64(n_shards)).astype(np.int64)


def as_signed(hashes: np.ndarray) -> np.ndarray:
    """View uint64 hashes as int64, the type stored in LanceDB and seen by SQL."""
    return hashes.view(np.int64)
