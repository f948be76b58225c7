"""Saved state as data: the one envelope every snapshot edgecore writes and reads back.

State that outlives a process (the data folder's ``_snapshots`` rows, the event-time
watermarks in a checkpoint, window, join and model state) is written with :func:`pack`
and read with :func:`unpack`, never with pickle: anyone who can write the data folder
would otherwise run code in the runtime. A snapshot is:

=========  ==========================================================================
bytes      what
=========  ==========================================================================
8          magic ``\\x89ECSNP\\r\\n`` (no pickle, ``.npz`` or text starts so; the
           ``\\r\\n`` and the high byte catch text-mode and 7-bit mangling)
2          format version, little-endian (this module writes and reads 1)
2, 8       length of the kind name, length of the payload
32         SHA-256 of the version, the lengths, the kind name and the payload
n          the kind name (UTF-8), e.g. ``windows``: what the bytes are a snapshot of
n          payload: a 4-byte length, a JSON header ``{"meta": {...}, "arrays": [...],
           "tables": [...]}``, then an uncompressed ``.npz`` holding the arrays
           (``a.<name>``; never object arrays) and the tables as Arrow IPC streams
           (``t.<name>``, as uint8 arrays)
=========  ==========================================================================

The checksum finds corruption (a torn write, a flipped bit), not forgery: whoever can
write the folder can write a valid snapshot. That is why :func:`unpack` runs nothing: it
reads numbers, strings, JSON and Arrow tables, checks every size against the bytes it
has before allocating, and refuses with :class:`~runtime.errors.SnapshotError` (one
line: what it is, where, how to go on) anything else.

>>> import numpy as np, pickle
>>> blob = pack("demo", {"n": 2}, {"x": np.arange(3)})
>>> snap = unpack(blob, "demo")
>>> snap.meta, snap.arrays["x"].tolist()
({'n': 2}, [0, 1, 2])
>>> unpack(pickle.dumps({"n": 2}), "demo")
Traceback (most recent call last):
...
runtime.errors.SnapshotError: snapshot 'demo' is a Python pickle, not an edgecore snapshot ...
>>> unpack(blob[:-1] + bytes([blob[-1] ^ 1]), "demo")
Traceback (most recent call last):
...
runtime.errors.SnapshotError: snapshot 'demo' is corrupt (its SHA-256 checksum does not match): refused, ...
>>> unpack(blob, "windows", where="_snapshots row 'hot#0'")
Traceback (most recent call last):
...
runtime.errors.SnapshotError: _snapshots row 'hot#0' holds a 'demo' snapshot, not 'windows': refused, ...
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import struct
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from runtime.errors import SnapshotError

MAGIC = b"\x89ECSNP\r\n"
VERSION = 1
_HEAD = struct.Struct("<8sHHQ32s")  # magic, version, kind length, payload length, sha256
_LEN = struct.Struct("<I")
#: what a refusal tells the user to do, unless the caller knows better
FIX = "restore the data folder from a backup, or start with a fresh --data folder"
_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed zip member times: the same state packs to the same bytes


@dataclass(frozen=True)
class State:
    """What a snapshot holds: JSON ``meta``, numpy ``arrays``, Arrow ``tables``."""

    meta: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    tables: dict[str, pa.Table] = field(default_factory=dict)


def pack(
    kind: str,
    meta: dict[str, Any],
    arrays: dict[str, np.ndarray] | None = None,
    tables: dict[str, pa.Table] | None = None,
) -> bytes:
    """``meta`` (JSON), ``arrays`` (numbers, bools, fixed-width strings; no objects) and
    ``tables`` (Arrow) as one snapshot of ``kind``."""
    arrays, tables = arrays or {}, tables or {}
    members: dict[str, bytes] = {}
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        if arr.dtype.hasobject:
            raise SnapshotError(
                f"snapshot {kind!r}: array {name!r} holds Python objects, which a snapshot "
                "never stores; store strings as a fixed-width str array or in a table"
            )
        buf = io.BytesIO()
        np.lib.format.write_array(buf, arr, allow_pickle=False)
        members[f"a.{name}"] = buf.getvalue()
    for name, table in tables.items():
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        buf = io.BytesIO()
        ipc = np.frombuffer(sink.getvalue().to_pybytes(), np.uint8)
        np.lib.format.write_array(buf, ipc, allow_pickle=False)
        members[f"t.{name}"] = buf.getvalue()
    npz = io.BytesIO()
    with zipfile.ZipFile(npz, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(zipfile.ZipInfo(f"{name}.npy", _EPOCH), data)
    # keys keep their order (a dict of output columns is ordered), so no sort_keys
    header = json.dumps(
        {"meta": meta, "arrays": list(arrays), "tables": list(tables)}, separators=(",", ":")
    ).encode()
    payload = _LEN.pack(len(header)) + header + npz.getvalue()
    name = kind.encode()
    digest = _digest(VERSION, name, payload)
    return _HEAD.pack(MAGIC, VERSION, len(name), len(payload), digest) + name + payload


def unpack(blob: bytes, kind: str, *, where: str | None = None, fix: str | None = None) -> State:
    """The state a snapshot of ``kind`` holds; :class:`SnapshotError` for anything else (a
    pickle, another format or version, corruption, another kind), naming ``where`` it
    was read from and, with ``fix``, how to go on. Never runs anything in ``blob``."""

    def refuse(problem: str) -> SnapshotError:
        place = where or f"snapshot {kind!r}"
        return SnapshotError(f"{place} {problem}: refused, nothing in it was run; {fix or FIX}")

    blob = bytes(blob)
    if not blob.startswith(MAGIC):
        raise refuse(_foreign(blob))
    if len(blob) < _HEAD.size:
        raise refuse(f"is truncated ({len(blob)} bytes, less than a snapshot header)")
    _, version, n_kind, n_payload, digest = _HEAD.unpack_from(blob)
    if version != VERSION:
        raise refuse(
            f"has snapshot format version {version}; this edgecore reads version {VERSION} "
            "(was it written by a newer edgecore?)"
        )
    body = blob[_HEAD.size :]
    if len(body) != n_kind + n_payload:
        raise refuse(
            f"is corrupt (truncated or extended: {len(body)} bytes after the header, "
            f"{n_kind + n_payload} expected)"
        )
    name, payload = body[:n_kind], body[n_kind:]
    if _digest(version, name, payload) != digest:
        raise refuse("is corrupt (its SHA-256 checksum does not match)")
    try:
        found = name.decode()
    except UnicodeDecodeError:
        raise refuse("is malformed (its kind name is not UTF-8)") from None
    if found != kind:
        raise refuse(f"holds a {found!r} snapshot, not {kind!r}")
    try:
        return _payload(payload)
    except _Objects as err:
        raise refuse(f"holds an array of Python objects ({err}), which is never loaded") from None
    except Exception as err:  # zip, npy, JSON or Arrow errors: all mean a crafted payload
        raise refuse(f"is malformed ({type(err).__name__}: {err})") from None


@contextmanager
def reading(kind: str, where: str | None = None) -> Iterator[None]:
    """Around the code that builds an object from an unpacked snapshot: what a snapshot that
    is well formed but crafted (a key missing, a value of the wrong type or shape) makes it
    raise becomes a :class:`SnapshotError` too.

    >>> with reading("demo"):
    ...     int({"n": "many"}["n"])
    Traceback (most recent call last):
    ...
    runtime.errors.SnapshotError: snapshot 'demo' is malformed (ValueError: ...
    """
    try:
        yield
    except SnapshotError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as err:
        place = where or f"snapshot {kind!r}"
        raise SnapshotError(
            f"{place} is malformed ({type(err).__name__}: {err}): refused, nothing in it was "
            f"run; {FIX}"
        ) from None


class _Objects(Exception):
    """An array member whose dtype holds Python objects."""


def _digest(version: int, name: bytes, payload: bytes) -> bytes:
    h = hashlib.sha256(struct.pack("<HHQ", version, len(name), len(payload)))
    h.update(name)
    h.update(payload)
    return h.digest()


def _foreign(blob: bytes) -> str:
    """What a blob without the magic looks like, to say so."""
    if blob[:1] == b"\x80" or blob[:1] in (b"(", b"c", b"}", b"]"):
        return "is a Python pickle, not an edgecore snapshot (a pickle can run code: never loaded)"
    if blob.startswith(b"PK\x03\x04") or blob.startswith(b"PK\x05\x06"):
        return "is a bare .npz without the snapshot envelope (an older edgecore wrote it)"
    if not blob:
        return "is empty"
    return "is not an edgecore snapshot (no snapshot magic)"


def _payload(payload: bytes) -> State:
    (n_header,) = _LEN.unpack_from(payload)
    header = json.loads(payload[_LEN.size : _LEN.size + n_header])
    meta, names, tables = header["meta"], header["arrays"], header["tables"]
    if not isinstance(meta, dict) or not all(isinstance(n, str) for n in [*names, *tables]):
        raise ValueError("the header is not {meta: object, arrays: [str], tables: [str]}")
    data = payload[_LEN.size + n_header :]
    members = _members(data)
    want = {f"a.{n}" for n in names} | {f"t.{n}" for n in tables}
    if set(members) != want or len(want) != len(names) + len(tables):
        raise ValueError("the arrays in it are not the ones its header names")
    arrays = {n: _array(members[f"a.{n}"], n) for n in names}
    out = {}
    for n in tables:
        ipc = _array(members[f"t.{n}"], n)
        if ipc.dtype != np.uint8 or ipc.ndim != 1:
            raise ValueError(f"table {n!r} is not a byte array")
        table = pa.ipc.open_stream(pa.BufferReader(ipc.tobytes())).read_all()
        table.validate(full=True)  # offsets and lengths checked before anything reads them
        out[n] = table
    return State(meta, arrays, out)


def _members(data: bytes) -> dict[str, bytes]:
    """The npz's members, each checked to be stored as is (no compression: a member cannot
    be larger than the bytes that hold it) before it is read."""
    out = {}
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        infos = z.infolist()
        if sum(i.file_size for i in infos) > len(data):
            raise ValueError("its members claim more bytes than it has")
        for info in infos:
            if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
                raise ValueError(f"member {info.filename!r} is compressed or not an array")
            out[info.filename[:-4]] = z.read(info)
    return out


#: the header numpy writes for a plain dtype: ``{'descr': '<f8', 'fortran_order': False,
#: 'shape': (3, 560), }`` and padding
_NPY_HEADER = re.compile(
    rb"\{'descr': '([<>|=]?[a-zA-Z]\d*(?:\[\w+\])?)', 'fortran_order': (True|False), "
    rb"'shape': \(((?:(?:0|[1-9]\d*), ?)*(?:0|[1-9]\d*)?)\), \} *\n"
)


def _header(data: bytes) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """Shape, Fortran order, dtype and where the values start, of one ``.npy`` member.

    numpy's own reader parses each header with ``ast.literal_eval``: 50 us an array, 9 %
    of the driver's time in a replay (a model snapshot holds 57 arrays and is read at
    every sync). Headers of the one form numpy writes for plain dtypes are read by a
    pattern; anything else still goes through numpy's reader.
    """
    if data[:6] == b"\x93NUMPY" and data[6:8] == b"\x01\x00" and len(data) >= 10:
        (n,) = struct.unpack_from("<H", data, 8)
        m = _NPY_HEADER.fullmatch(data, 10, 10 + n) if 10 + n <= len(data) else None
        if m is not None:
            shape = tuple(int(d) for d in m.group(3).split(b",") if d.strip())
            return shape, m.group(2) == b"True", np.dtype(m.group(1).decode()), 10 + n
    f = io.BytesIO(data)
    major, _ = np.lib.format.read_magic(f)
    read_header = (
        np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    )
    shape, fortran, dtype = read_header(f)
    return shape, fortran, dtype, f.tell()


def _array(data: bytes, name: str) -> np.ndarray:
    """One ``.npy`` member, its header parsed first: dtype and size checked against the
    bytes present before anything is allocated; object dtypes refused."""
    shape, fortran, dtype, start = _header(data)
    if dtype.hasobject:
        raise _Objects(repr(name))
    body = data[start:]
    count = math.prod(shape)
    if count * dtype.itemsize != len(body):
        raise ValueError(f"array {name!r} claims {shape} {dtype} but has {len(body)} bytes")
    arr = np.frombuffer(body, dtype=dtype, count=count).copy()  # writable, owned
    return arr.reshape(shape, order="F" if fortran else "C")
