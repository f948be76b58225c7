"""Safe state on disk (issue 14, item 5): every snapshot is data in one envelope
(runtime.state.snapshot), round trips exactly, and anything else is refused with a
SnapshotError, never run. The data-folder attack through the CLI is in
tests/test_safe_state_cli.py."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import zipfile

import numpy as np
import pyarrow as pa
import pytest
from event_time_helpers import stream
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.nexmark.queries import AuctionWinners
from runtime import Runtime
from runtime.entities.kind import Batch
from runtime.errors import ConfigError, SnapshotError
from runtime.eventtime.watermarks import Watermarks
from runtime.eventtime.windows import Windows, WindowSpec
from runtime.operators.joins import join_kind
from runtime.operators.windowed import OperatorKind, argmax_kind, window_kind
from runtime.state.snapshot import _HEAD, MAGIC, VERSION, _digest, pack, unpack


class Exploit:
    """Unpickled, it runs a shell command that creates ``marker``."""

    def __init__(self, marker: object) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def seal(kind: str, payload: bytes, version: int = VERSION) -> bytes:
    """An envelope around any payload, with a valid checksum (what a forger can write)."""
    name = kind.encode()
    head = _HEAD.pack(MAGIC, version, len(name), len(payload), _digest(version, name, payload))
    return head + name + payload


def payload(header: dict, members: dict[str, bytes], compress: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compress) as z:
        for name, data in members.items():
            z.writestr(f"{name}.npy", data)
    h = json.dumps(header).encode()
    return len(h).to_bytes(4, "little") + h + buf.getvalue()


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=True)
    return buf.getvalue()


# -- the envelope -------------------------------------------------------------------------------


def test_the_exploit_is_live(tmp_path):
    """The payload the refusals below are tried with does run when unpickled."""
    pickle.loads(pickle.dumps(Exploit(tmp_path / "control")))
    assert (tmp_path / "control").exists()


def test_every_dtype_and_table_round_trips_and_packs_to_the_same_bytes():
    arrays = {
        "i": np.arange(5, dtype=np.int64),
        "u": np.array([2**64 - 1], np.uint64),
        "f": np.array([np.inf, -0.0, np.nan]),
        "b": np.array([True, False]),
        "s": np.array(["ab", "ü", ""]),
        "m": np.arange(6.0).reshape(2, 3, order="F"),
        "e": np.zeros((0, 4), np.float32),
    }
    tables = {"t": pa.table({"k": ["a", None], "v": [[1], []], "d": pa.array([1, 2], pa.int8())})}
    meta = {"n": 2**62, "x": [1, "two", None], "nested": {"z": 1.5, "a": None}}
    blob = pack("demo", meta, arrays, tables)
    assert blob == pack("demo", meta, arrays, tables)  # deterministic: no times in the zip
    got = unpack(blob, "demo")
    assert got.meta == meta and set(got.arrays) == set(arrays)
    assert list(got.meta["nested"]) == ["z", "a"]  # order kept: a join's output columns
    for k, a in arrays.items():
        np.testing.assert_array_equal(got.arrays[k], a)
        assert got.arrays[k].dtype == a.dtype and got.arrays[k].flags.writeable
    assert got.tables["t"].equals(tables["t"])
    with pytest.raises(SnapshotError, match="holds Python objects"):
        pack("demo", {}, {"o": np.array(["a", 1], dtype=object)})


ARRAYS = [
    np.zeros(0),
    np.array(3.5),
    np.arange(5, dtype=np.int8),
    np.arange(6, dtype=">i4").reshape(2, 3),
    np.arange(6.0).reshape(2, 3, order="F"),
    np.array([1 + 2j], np.complex128),
    np.array([True]),
    np.array(["ab", "ünï"]),
    np.array([b"x", b"yz"]),
    np.array(["2026-12-02"], "datetime64[ms]"),
    np.array([5], "timedelta64[s]"),
    np.zeros((2, 0, 3), np.float16),
    np.zeros(3, [("a", "<i4"), ("b", "<f8")]),  # structured: numpy's own reader
]


@pytest.mark.parametrize("arr", ARRAYS, ids=lambda a: f"{a.dtype}{a.shape}")
def test_array_headers_read_like_numpy_reads_them(arr):
    """The pattern that reads .npy headers (numpy parses each with ast.literal_eval, 9 %
    of a replay's driver) gives numpy's answer for every dtype a snapshot may hold."""
    from runtime.state.snapshot import _NPY_HEADER, _header

    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=False)
    data = buf.getvalue()
    f = io.BytesIO(data)
    np.lib.format.read_magic(f)
    want = (*np.lib.format.read_array_header_1_0(f), f.tell())
    assert _header(data) == want
    (n,) = np.frombuffer(data[8:10], "<u2")
    plain = arr.dtype.fields is None
    assert (_NPY_HEADER.fullmatch(data, 10, 10 + int(n)) is not None) == plain
    got = unpack(pack("demo", {}, {"a": arr}), "demo").arrays["a"]
    np.testing.assert_array_equal(got, arr)
    assert got.dtype == arr.dtype and got.flags.f_contiguous == arr.flags.f_contiguous


def test_an_array_header_running_past_its_member_is_refused():
    """A member whose header length runs past its bytes is refused as numpy refuses it,
    not read by the fast pattern (which would stop at the end and call it an empty array)."""
    from runtime.state.snapshot import _array

    good = io.BytesIO()
    np.lib.format.write_array(good, np.zeros(0), allow_pickle=False)
    data = good.getvalue()
    (n,) = np.frombuffer(data[8:10], "<u2")
    overrun = data[:8] + np.array([n + 64], "<u2").tobytes() + data[10:]
    with pytest.raises(ValueError, match="EOF"):
        _array(overrun, "x")
    assert _array(data, "x").shape == (0,)


def refusals(tmp_path) -> dict[str, tuple[bytes, str]]:
    """Crafted blobs and the words their refusal must use."""
    good = pack("demo", {"n": 1}, {"x": np.arange(4)})
    huge = io.BytesIO()  # an array header claiming 8 TB over a few bytes: refused unallocated
    np.lib.format.write_array_header_1_0(
        huge, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)}
    )
    huge.write(b"\0" * 64)
    header = json.dumps({"meta": {}, "arrays": [], "tables": []}).encode()
    evil = np.array([Exploit(tmp_path / "pwned")], dtype=object)
    return {
        "pickle": (pickle.dumps(Exploit(tmp_path / "pwned")), "is a Python pickle"),
        "old npz": (_npz(np.arange(3)), "bare .npz without the snapshot envelope"),
        "random": (bytes(range(7, 250)), "is not an edgecore snapshot"),
        "empty": (b"", "is empty"),
        "truncated": (good[:-3], "is corrupt (truncated or extended"),
        "extended": (good + b"\0", "is corrupt (truncated or extended"),
        "flipped": (good[:-5] + bytes([good[-5] ^ 0x40]) + good[-4:], "checksum does not match"),
        "newer": (seal("demo", b"", version=VERSION + 1), f"format version {VERSION + 1}"),
        "other kind": (pack("windows", {}), "holds a 'windows' snapshot, not 'demo'"),
        "object array": (
            seal("demo", payload({"meta": {}, "arrays": ["o"], "tables": []}, {"a.o": npy(evil)})),
            "holds an array of Python objects",
        ),
        "compressed": (
            seal(
                "demo",
                payload(
                    {"meta": {}, "arrays": ["x"], "tables": []},
                    {"a.x": npy(np.arange(9))},
                    zipfile.ZIP_DEFLATED,
                ),
            ),
            "is compressed",
        ),
        "size lie": (
            seal(
                "demo",
                payload({"meta": {}, "arrays": ["x"], "tables": []}, {"a.x": huge.getvalue()}),
            ),
            "claims (1000000000000,) float64 but has 64 bytes",
        ),
        "names lie": (
            seal(
                "demo",
                payload({"meta": {}, "arrays": ["y"], "tables": []}, {"a.x": npy(np.arange(2))}),
            ),
            "not the ones its header names",
        ),
        "bad json": (
            seal("demo", len(header).to_bytes(4, "little") + header[:-1] + b"!"),
            "is malformed",
        ),
    }


def _npz(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, a=a)
    return buf.getvalue()


def test_foreign_corrupt_and_crafted_snapshots_are_refused_and_never_run(tmp_path):
    for case, (blob, words) in refusals(tmp_path).items():
        with pytest.raises(SnapshotError) as err:
            unpack(blob, "demo", where="_snapshots row 'x#0'")
        msg = str(err.value)
        assert words in msg, (case, msg)
        assert msg.startswith("_snapshots row 'x#0' ") and "\n" not in msg, case
        assert "refused, nothing in it was run" in msg and "fresh --data folder" in msg, case
    assert not (tmp_path / "pwned").exists()


VALID = pack(
    "demo",
    {"n": 1, "s": "x"},
    {"x": np.arange(4), "s": np.array(["a", "bc"])},
    {"t": pa.table({"k": ["a", "b"], "v": [1.5, 2.5]})},
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    raw=st.binary(max_size=600),
    flips=st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(1, 255)), max_size=6),
    cut=st.integers(0, len(VALID)),
    reseal=st.booleans(),
)
def test_unpack_of_random_or_mutated_bytes_raises_only_snapshot_error(raw, flips, cut, reseal):
    """Random bytes, and a valid snapshot with bytes flipped and cut, re-sealed with a valid
    checksum half of the time (so the parser behind the checksum is fuzzed as well): the
    answer is the state or a SnapshotError, nothing else."""
    mutated = bytearray(VALID)
    for at, x in flips:
        mutated[at] ^= x
    mutated = bytes(mutated[:cut] if cut > _HEAD.size else mutated)
    blobs = [raw, MAGIC + raw, mutated]
    if reseal:
        body = mutated[_HEAD.size + 4 :]  # the kind "demo" (4 bytes) kept
        blobs.append(seal("demo", body))
    for blob in blobs:
        with contextlib.suppress(SnapshotError):
            unpack(blob, "demo")


# -- every converted state round trips ----------------------------------------------------------


def _continue_equals_uninterrupted(make, feed, table: pa.Table, cut: int, restore) -> None:
    """Feed ``table`` to one operator; to another, feed up to ``cut``, save, restore and feed
    the rest: both emit the very same rows."""
    whole, part = make(), make()
    want = feed(whole, table)
    got = feed(part, table.slice(0, cut))
    again = restore(part)
    got += feed(again, table.slice(cut))
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.equals(w), (g.to_pylist()[:3], w.to_pylist()[:3])


def _feed_windows(w: Windows, table: pa.Table) -> list[pa.Table]:
    out = [w.process(pa.Table.from_batches([b])).fired for b in table.to_batches(250)]
    return [t for t in out if t.num_rows]


@pytest.mark.parametrize(
    "spec, options",
    [
        (WindowSpec(2_000, allowed_lateness_ms=500), {}),
        (WindowSpec(4_000, 1_000, allowed_lateness_ms=800), {"top_k": 2, "item": "item"}),
        (
            WindowSpec.session(600, allowed_lateness_ms=1_000, out_of_orderness_ms=200),
            {"top_k": 1, "item": "item"},
        ),
    ],
    ids=["tumbling", "sliding_top_k", "session_top_k"],
)
def test_windows_continue_exactly_after_a_snapshot(spec, options):
    table = stream(3_000, keys=30, seed=4).select(["k", "t", "v", "item"])
    make = lambda: Windows(spec, "k", "t", "v", clock=lambda: 0.0, **options)  # noqa: E731
    _continue_equals_uninterrupted(
        make,
        _feed_windows,
        table,
        1_750,
        lambda w: Windows.restore(w.snapshot(), clock=lambda: 0.0),
    )


def test_a_session_retraction_not_emitted_yet_survives_a_snapshot():
    w = Windows(WindowSpec.session(5, out_of_orderness_ms=10), "k", "t", "v")
    w.process(pa.table({"k": ["a", "a"], "t": [1, 10], "v": [1.0, 1.0]}), watermark=30)
    w._retract(np.array([0]))  # as a fold does between the event and the next emit
    again = Windows.restore(w.snapshot())
    assert again.advance().equals(w.advance()) and again.advance().num_rows == 0


def test_watermarks_round_trip_with_partitions_of_any_name():
    m = Watermarks(100, idle_ms=5_000)
    m.observe("p0", np.array([1_000, 1_500]))
    m.observe(7, np.array([900]))  # type: ignore[arg-type]
    again = Watermarks.restore(m.snapshot())
    assert again._max == {"p0": 1_500, 7: 900} and again.current() == m.current() == 800
    assert (again.out_of_orderness_ms, again.idle_ms) == (100, 5_000)
    bad = pack(
        "watermarks", {"out_of_orderness_ms": -1, "idle_ms": None, "max": [], "watermark": 0}
    )
    with pytest.raises(SnapshotError, match="is malformed"):
        Watermarks.restore(bad, where="the watermarks of 'w'")


def _pairs() -> pa.Table:
    rng = np.random.default_rng(2)
    n = 2_000
    return pa.table(
        {
            "k": rng.integers(0, 40, n),
            "t": np.sort(rng.integers(0, 50_000, n)),
            "s": rng.choice(["p", "a"], n),
            "x": rng.integers(0, 1_000, n),
        }
    )


@pytest.mark.parametrize(
    "kind",
    [
        join_kind("wj", 1_000, key="k", time="t", side="s", left="p", right="a"),
        join_kind(
            "sj",
            None,
            key="k",
            time="t",
            side="s",
            left="p",
            right="a",
            columns={"k": "k", "xl": "x_left", "xr": "x_right"},
            distinct=True,
        ),
        argmax_kind("am", "x", window="k", end="t"),
        window_kind("wk", WindowSpec(1_000), key="s", time="t", value="x", top_k=2, item="k"),
    ],
    ids=["window_join", "stream_join", "argmax", "window_kind"],
)
def test_operator_kinds_continue_exactly_after_a_snapshot(kind):
    """Through the kind's own snapshot()/restore(), as a shard saves and restarts it."""
    kind.check()  # each operator says how to save its state as data

    def feed(k, table: pa.Table) -> list[pa.Table]:
        out = []
        for b in table.to_batches(300):
            batch = pa.Table.from_batches([b])
            wm = int(pa.compute.max(batch["t"]).as_py()) - 200
            res, late = k.process(batch, wm)
            out += [t for t in (res, late) if t.num_rows]
        return out

    def restore(k):
        again = kind(None)
        again.restore(k.snapshot())
        return again

    _continue_equals_uninterrupted(lambda: kind(None), feed, _pairs(), 1_200, restore)
    with pytest.raises(SnapshotError, match=r"the snapshot of step '\w+' holds a 'watermarks'"):
        kind(None).restore(Watermarks(0).snapshot())


def test_nexmark_q4_state_round_trips_with_none_and_empty_kept_apart():
    from actors.nexmark.generator import NexmarkConfig, generate, union

    events = union(generate(NexmarkConfig(events=3_000, seed=5)))
    events = events.set_column(
        events.schema.get_field_index("auction"),
        "auction",
        pa.compute.coalesce(events["auction"], events["id"]),
    )
    k = AuctionWinners()
    half = events.slice(0, 1_500)
    k.apply(
        Batch(
            half,
            np.zeros(0, np.int64),
            None,
            0,
            watermark=int(pa.compute.max(half["date_time"]).as_py()) - 5_000,
        )
    )  # type: ignore[arg-type]
    assert k.open is not None and k.open.num_rows > 0  # the state is not trivial
    again = AuctionWinners()
    again.restore(k.snapshot())
    assert again.watermark == k.watermark and again.open.equals(k.open)
    assert (again.waiting is None) == (k.waiting is None)
    assert again.waiting is None or again.waiting.equals(k.waiting)
    k.waiting = k.waiting.slice(0, 0) if k.waiting is not None else pa.table({"a": []})
    again.restore(k.snapshot())
    assert again.waiting is not None and again.waiting.num_rows == 0


# -- operators whose state is not data are refused when registered ------------------------------


class Opaque:
    """An operator keeping arbitrary Python objects, with no to_state/from_state."""

    watermark = 0

    def __init__(self) -> None:
        self.seen: list[object] = []

    def process(self, events, watermark):
        return events.slice(0, 0), events.slice(0, 0)


class OpaqueKind(OperatorKind):
    name, key, time, topics = "opaque", "k", "t", ("opaque",)

    def make(self) -> Opaque:
        return Opaque()


def test_an_operator_without_a_data_layout_is_refused_at_register(tmp_path):
    refused = pytest.raises(ConfigError, match=r"operator step 'opaque'.*never pickled.*to_state")
    with Runtime(data_dir=str(tmp_path), mode="local", shards=1) as rt, refused:
        rt.register(OpaqueKind)
