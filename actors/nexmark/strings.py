"""The NEXMark generator's strings and channels, vectorized: the reference's
``StringsGenerator`` (names, descriptions, ``extra`` padding), credit card numbers and
``BidGenerator``'s channels with their urls.

>>> import numpy as np
>>> next_strings(np.random.default_rng(0), 3, 10).type
DataType(string)
"""

from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from actors.nexmark.config import CHANNELS_NUMBER, HOT_CHANNELS, MIN_STRING_LENGTH, NexmarkConfig
from runtime.errors import ConfigError


def _strings(lengths: np.ndarray, chars: np.ndarray) -> pa.Array:
    """A string array from per-row lengths and the concatenated ASCII bytes."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] > np.iinfo(np.int32).max:  # pa.string() has 32-bit offsets
        raise ConfigError("a string column would exceed 2 GiB: generate fewer events per call")
    offsets = offsets.astype(np.int32)
    return pa.StringArray.from_buffers(
        len(lengths), pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(chars))
    )


def next_strings(rng: np.random.Generator, n: int, max_length: int, special: str = " ") -> pa.Array:
    """StringsGenerator.nextString: 3..max_length-1 chars, each ``special`` with p=1/13
    else a random letter, then Java ``trim()`` (which only removes the spaces)."""
    lengths = MIN_STRING_LENGTH + rng.integers(0, max_length - MIN_STRING_LENGTH, n)
    # one draw per char: 26 of the 13*26 values are the special char (1/13), the other
    # 12*26 map evenly onto the letters
    draws = rng.integers(0, 13 * 26, int(lengths.sum()), dtype=np.int16)
    chars = (ord("a") + draws % 26).astype(np.uint8)
    chars[draws < 26] = ord(special)
    out = _strings(lengths, chars)
    return pc.ascii_trim(out, " ") if special == " " else out


def _next_extra(
    rng: np.random.Generator, current_size: np.ndarray | int, desired_average: int, n: int
) -> pa.Array:
    """StringsGenerator.nextExtra: letters padding ``current_size`` to ``desired_average``
    on average (+-20%); empty when the event is already larger."""
    current = np.broadcast_to(np.asarray(current_size, dtype=np.int64), (n,))
    room = np.maximum(desired_average - current, 0)
    delta = np.floor(room * 0.2 + 0.5).astype(np.int64)  # Java Math.round
    size = room - delta + np.where(delta > 0, rng.integers(0, np.maximum(2 * delta, 1)), 0)
    # (the reference's nextExactString maps negative ints to chars below 'a'; not copied)
    return _strings(size, _letters(rng, int(size.sum())))


def _letters(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random letters a-z: a random byte b gives ``b * 26 >> 8`` (each letter from 9
    or 10 of the 256 bytes), twice as fast as a bounded draw per letter; the padding is
    generated inside the timed run, 60-90 MB of it per million events."""
    b = np.frombuffer(rng.bytes(n), dtype=np.uint8).astype(np.uint16)
    b *= 26
    b >>= 8
    out = b.astype(np.uint8)
    out += ord("a")
    return out


def extra(
    cfg: NexmarkConfig,
    rng: np.random.Generator,
    current_size: np.ndarray | int,
    avg_byte_size: int,
    n: int,
) -> pa.Array:
    if cfg.extra_bytes is None:  # the reference: pad to the average event size
        return _next_extra(rng, current_size, avg_byte_size, n)
    return _next_extra(rng, 0, cfg.extra_bytes, n)


def byte_lengths(arr: pa.Array) -> np.ndarray:
    return pc.binary_length(arr).to_numpy(zero_copy_only=False).astype(np.int64)


def credit_cards(rng: np.random.Generator, n: int) -> pa.Array:
    """Four space-separated groups of ``%04d`` of 0..9999, written as fixed 19-byte rows."""
    groups = rng.integers(0, 10_000, (n, 4))
    buf = np.full((n, 19), ord(" "), dtype=np.uint8)
    for g in range(4):
        for d in range(4):
            buf[:, g * 5 + d] = ord("0") + groups[:, g] // 10 ** (3 - d) % 10
    return _strings(np.full(n, 19), buf.reshape(-1))


def _int_reverse(x: np.ndarray) -> np.ndarray:
    """Java ``Integer.reverse``: the 32 bits of ``x`` in reverse order, as int32."""
    v = x.astype(np.uint32)
    for shift, mask in ((1, 0x55555555), (2, 0x33333333), (4, 0x0F0F0F0F), (8, 0x00FF00FF)):
        m = np.uint32(mask)
        v = ((v >> np.uint32(shift)) & m) | ((v & m) << np.uint32(shift))
    v = (v >> np.uint32(16)) | (v << np.uint32(16))
    return v.view(np.int32)


def _base_urls(rng: np.random.Generator, n: int) -> pa.Array:
    """BidGenerator.getBaseUrl: ``https://www.nexmark.com/<s>/<s>/<s>/item.htm?query=1``."""
    parts = [next_strings(rng, n, 5, "_") for _ in range(3)]
    return pc.binary_join_element_wise("https://www.nexmark.com", *parts, "item.htm?query=1", "/")


def channel_table(cfg: NexmarkConfig) -> tuple[pa.Array, pa.Array]:
    """Channels and urls: the 4 hot ones, then ``channel-0`` .. ``channel-9999``.

    The reference draws each url once per process (unseeded) and caches it; here it is
    drawn once from the seed. 9 in 10 of the other channels' urls end in
    ``&channel_id=<abs(Integer.reverse(n))>`` (a Java int, so channel 1 gets -2**31).
    """
    return _channel_table(cfg.seed)


@functools.lru_cache(maxsize=8)
def _channel_table(seed: int) -> tuple[pa.Array, pa.Array]:
    # cached: every chunk of a stream needs the same table (Arrow arrays are immutable)
    rng = np.random.default_rng([seed, 4])
    hot_urls = _base_urls(rng, len(HOT_CHANNELS))
    number = np.arange(CHANNELS_NUMBER, dtype=np.int64)
    urls = _base_urls(rng, CHANNELS_NUMBER)
    with np.errstate(over="ignore"):  # abs(MIN_VALUE) stays MIN_VALUE, as in Java
        channel_id = np.abs(_int_reverse(number))
    suffix = pc.binary_join_element_wise(
        "&channel_id=", pc.cast(pa.array(channel_id), pa.string()), ""
    )
    with_id = rng.integers(0, 10, CHANNELS_NUMBER) > 0
    urls = pc.if_else(pa.array(with_id), pc.binary_join_element_wise(urls, suffix, ""), urls)
    names = pc.binary_join_element_wise("channel-", pc.cast(pa.array(number), pa.string()), "")
    return (
        pa.concat_arrays([pa.array(HOT_CHANNELS, pa.string()), names]),
        pa.concat_arrays([hot_urls, urls]),
    )
