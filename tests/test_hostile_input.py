"""Hostile but plausible input at the live endpoints: every body and message a device or a
broken client may send is answered (a 200 with dead letters, or a 4xx), never a 5xx or a
crash, and never costs another request its events.

The HTTP front end runs in-process on a local-mode runtime (as in ``test_http.py``); the
tests that need the data folder drive a live feeder through :func:`runtime.dataflow.driver.drive`
in a thread; MQTT goes through a real Mosquitto.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import io
import itertools
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import assert_profiles_match, make_transactions, sql_profiles
from live_helpers import Broker, Driven, get, mqtt_client, ndjson, post, publish
from live_helpers import FrontEnd as Live

from runtime.ingest.http import ARROW, HttpOptions
from runtime.state.store import Store

NDJSON = "application/x-ndjson"
JSON = "application/json"
_ids = itertools.count(50_000_000)  # event ids no generated table uses


# -- fixtures and helpers --------------------------------------------------------------------
@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One front end for the many small cases (each uses event ids of its own)."""
    lv = Live(tmp_path_factory.mktemp("shared"))
    yield lv
    lv.close()


@pytest.fixture(scope="module")
def txns(tmp_path_factory):
    """1,200 transactions of 40 customers: the table (the oracle's input) and JSON rows."""
    path = make_transactions(tmp_path_factory.mktemp("txns") / "t.parquet", 1_200, 40)
    table = pq.read_table(path)
    rows = table.to_pylist()
    for r in rows:
        r["ts"] = r["ts"].isoformat()
    return table, rows


def fresh(rows: list[dict], n: int) -> list[dict]:
    """``n`` valid events (copies of ``rows``) with event ids never sent before."""
    return [{**rows[i % len(rows)], "event_id": next(_ids)} for i in range(n)]


def assert_profiles(got: dict[str, dict], table: pa.Table) -> None:
    want = sql_profiles(table)
    assert set(got) == set(want), f"{len(set(got) ^ set(want))} customers differ"
    for key, w in want.items():
        g = got[key]
        assert g["txn_count"] == w["txn_count"], key
        assert g["amount_max"] == w["amount_max"], key
        assert g["first_ts"] == w["first_ts"] and g["last_ts"] == w["last_ts"], key
        assert g["amount_sum"] == pytest.approx(w["amount_sum"], rel=1e-9), key


def reconciles(counts: dict) -> bool:
    parts = ("accepted", "dead_lettered", "duplicates", "filtered")
    return counts["input"] == sum(counts[k] for k in parts)


def arrow_body(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue()


def raw_exchange(port: int, request: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes on a new connection; what the server answers until it closes the
    connection, or is quiet for half a second after answering."""
    out = b""
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        try:
            while time.monotonic() < deadline:
                s.settimeout(0.5 if out else max(0.1, deadline - time.monotonic()))
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return out


def statuses(answer: bytes) -> list[int]:
    """The status codes of every response in ``answer`` (HTTP/1.0 or 1.1)."""
    codes = []
    for part in answer.split(b"HTTP/1.")[1:]:
        fields = part.split(b" ", 2)
        if len(fields) > 1 and fields[1][:3].isdigit():
            codes.append(int(fields[1][:3]))
    return codes


def cli(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "runtime.cli", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


# -- nesting ----------------------------------------------------------------------------------
DEEP = {
    "array": b"[" * 20_000 + b"]" * 20_000,  # 40 KB: Arrow's reader dies on it
    "object": b'{"a":' * 20_000 + b"1" + b"}" * 20_000,
    "in_a_field": b'{"event_id": 1, "customer_id": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",
    "unclosed": b"[" * 40_000,
}


@pytest.mark.parametrize("shape", list(DEEP))
def test_ndjson_nested_20000_deep_is_one_dead_letter_and_the_server_lives(live, txns, shape):
    _, rows = txns
    lv = live()
    good = fresh(rows, 40)
    body = ndjson(good[:20]) + b"\n" + DEEP[shape] + b"\n" + ndjson(good[20:])
    status, counts = post(lv.port, body)
    assert status == 200, counts
    assert counts["input"] == 41 and counts["accepted"] == 40 and counts["dead_lettered"] == 1
    assert list(counts["reasons"]) == ["record: malformed (nested deeper than 64 levels)"]
    assert get(lv.port)[0] == 200
    status, counts = post(lv.port, ndjson(fresh(rows, 10)))
    assert status == 200 and counts["accepted"] == 10


@pytest.mark.parametrize("opening", [b"null", b"  null", b"\nnull", b"nulll", b"null{}"])
def test_a_body_opening_with_null_does_not_kill_the_server(shared, txns, opening):
    """pyarrow's JSON reader dies (SIGSEGV) on a body whose first value is null: one such
    request took the ingest actor down with every connection it had."""
    _, rows = txns
    good = fresh(rows, 5)
    for body in (opening, opening + b"\n" + ndjson(good)):
        status, counts = post(shared.port, body)
        assert status == 200, counts
        assert counts["dead_lettered"] >= 1 and reconciles(counts), counts
    assert counts["accepted"] == 5, counts
    assert get(shared.port)[0] == 200


# -- text that is not UTF-8 -------------------------------------------------------------------
def test_invalid_utf8_in_a_string_field_is_dead_lettered_and_checkpoints_go_on(tmp_path, txns):
    table, rows = txns
    run = Driven(tmp_path / "d", http=HttpOptions(port=0))
    try:
        bad = json.dumps({**rows[0], "event_id": 90_000_001, "customer_id": "@@"}).encode()
        bad = bad.replace(b"@@", b"caf\xc3(\xff\xfe")  # a torn 2-byte sequence, then junk
        surrogate = json.dumps({**rows[1], "event_id": 90_000_002, "device_id": "\ud800"})
        body = ndjson(rows[:300]) + b"\n" + bad + b"\n" + surrogate.encode() + b"\n"
        body += ndjson(rows[300:600])
        status, counts = post(run.port, body)
        assert status == 200, counts
        assert (counts["accepted"], counts["dead_lettered"]) == (600, 2), counts
        assert all("not UTF-8" in r for r in counts["reasons"]), counts
        # a checkpoint commits the dead letters (and the events around them) ...
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if Store(tmp_path / "d").exists("dead_letters"):
                dead = Store(tmp_path / "d").read("dead_letters")
                if dead.num_rows == 2:
                    break
            time.sleep(0.1)
        else:
            raise AssertionError("no checkpoint committed the dead letters")
        # ... and the next ones go on as before
        assert post(run.port, ndjson(rows[600:]))[1]["accepted"] == 600
        time.sleep(1.2)
    finally:
        stats = run.finish()
    assert stats.checkpoints >= 2  # the one that committed the dead letters, and the last
    assert (stats.input, stats.accepted, stats.dead_lettered) == (1_202, 1_200, 2)
    assert_profiles_match(tmp_path / "d", sql_profiles(table))
    dead = Store(tmp_path / "d").read("dead_letters").to_pylist()
    assert sorted(d["reason"] for d in dead) == [
        "record: malformed (not UTF-8 (a lone surrogate))",
        "record: malformed (not UTF-8)",
    ]
    raws = " ".join(d["raw"] for d in dead)
    assert "90000001" in raws and "90000002" in raws  # the raw text, for whoever fixes it


# -- values of the wrong kind -------------------------------------------------------------
def nested(depth: int) -> list:
    value: list = [1]
    for _ in range(depth - 1):
        value = [value]
    return value


#: (field, value) -> the start of the dead letter's reason; a bytes value is spliced in raw
MISTYPED = {
    "object_in_string": ("customer_id", {"id": "c1"}, "customer_id: not a string"),
    "array_in_number": ("amount", [1, 2], "amount: not a float64"),
    "array_in_int": ("event_id", [7], "event_id: not a"),
    "deep_array_in_number": ("amount", nested(60), "amount: not a float64"),
    "deep_array_in_string": ("device_id", nested(60), "device_id: not a string"),
    "object_in_time": ("ts", {"at": 1}, "ts: not a timestamp"),
    "huge_id": ("event_id", 2**70, "event_id: not a valid int64"),
    "huge_id_in_text": ("event_id", str(2**64), "event_id: not a valid int64"),
    "huge_int_amount": ("amount", 10**400, "amount: "),
    "overflowing_float": ("amount", b"1e400", "amount: not a finite number"),
    "nan_amount": ("amount", b"NaN", "amount: not a finite number"),
    "infinite_lat": ("lat", b"Infinity", "lat: not a finite number"),
    "minus_infinite_lon": ("lon", b"-Infinity", "lon: not a finite number"),
    "nan_event_id": ("event_id", b"NaN", "event_id: not a valid int64"),
    "nan_time": ("ts", b"NaN", "ts: not a valid timestamp"),
    "true_event_id": ("event_id", True, "event_id: not a"),
    "true_amount": ("amount", True, "amount: not a"),
    "negative_amount": ("amount", -12.5, "amount: -12.5 is below the minimum 0"),
    "absurd_amount": ("amount", 1e300, "amount: 1e+300 is above the maximum 1e+06"),
    "negative_id": ("event_id", -1, "event_id: -1"),
    "fractional_id": ("event_id", 1.5, "event_id: not a valid int64"),
    "latitude_off_earth": ("lat", 91.0, "lat: 91"),
    "empty_customer": ("customer_id", "", "customer_id: empty string"),
    "null_customer": ("customer_id", None, "customer_id: missing value"),
    "id_of_200_bytes": ("customer_id", "c" * 200, "customer_id: string of 200 bytes exceeds 128"),
    "id_of_200_utf8_bytes": ("merchant_id", "é" * 100, "merchant_id: string of 200 bytes"),
    "lone_surrogate": ("device_id", b'"\\udc80x"', "record: malformed (not UTF-8"),
    "time_not_a_time": ("ts", "soon", "ts: not a valid timestamp"),
    "time_far_future": ("ts", "9999-12-31T00:00:00", "ts: 253402214400000 ms since the epoch"),
    "time_bad_offset": ("ts", "2026-01-01T00:00:00+99:00", "ts: not a valid timestamp"),
    "fraud_flag_maybe": ("is_fraud", "maybe", "is_fraud: not a valid bool"),
}


def mistyped_line(row: dict, field: str, value) -> bytes:
    if isinstance(value, bytes):
        return json.dumps({**row, field: "@@SPLICE@@"}).encode().replace(b'"@@SPLICE@@"', value)
    return json.dumps({**row, field: value}).encode()


@pytest.mark.parametrize("layout", ["alone", "ndjson", "json_array"])
@pytest.mark.parametrize("case", list(MISTYPED))
def test_a_mistyped_value_is_one_dead_letter_with_its_reason(shared, txns, case, layout):
    _, rows = txns
    field, value, reason = MISTYPED[case]
    good = fresh(rows, 0 if layout == "alone" else 30)
    bad_row = fresh(rows, 1)[0]
    bad = mistyped_line(bad_row, field, value)
    if layout == "json_array":
        body = b"[" + b",".join([*(json.dumps(r).encode() for r in good[:15]), bad])
        body += b"".join(b"," + json.dumps(r).encode() for r in good[15:]) + b"]"
        ctype = JSON
    else:
        body = ndjson(good[:15]) + b"\n" + bad + b"\n" + ndjson(good[15:])
        ctype = NDJSON
    status, counts = post(shared.port, body.strip(), ctype)
    assert status == 200, counts
    assert counts["input"] == len(good) + 1 and counts["accepted"] == len(good), counts
    assert counts["dead_lettered"] == 1 and reconciles(counts), counts
    (got,) = counts["reasons"]
    assert got.startswith(reason), (got, reason)


def test_fields_named_like_internal_marks_mark_nothing(shared, txns):
    """``_edgecore_...`` columns are the decoder's own marks (malformed, nested); a sender's
    fields of that name are dropped, in every body format, instead of marking rows or
    breaking validation (an integer there was a 500)."""
    _, rows = txns
    marks = [
        {"_edgecore_nested": 5},
        {"_edgecore_nested": "customer_id"},
        {"_edgecore_malformed": "x", "_edgecore_malformed_why": [1]},
        {"_edgecore_nested": {"deep": [1]}},
    ]

    def marked() -> list[dict]:
        return [{**r, **m} for r, m in zip(fresh(rows, 4), marks, strict=True)]

    for body, ctype, broken in (
        (ndjson(marked()), NDJSON, 0),
        (ndjson(marked()[1:2]), NDJSON, 0),
        (json.dumps(marked()).encode(), JSON, 0),
        (ndjson(marked()) + b"\n{broken", NDJSON, 1),  # the line-by-line path
    ):
        status, counts = post(shared.port, body, ctype)
        assert status == 200, counts
        assert counts["accepted"] == counts["input"] - broken, counts
        assert counts["dead_lettered"] == broken, counts
    table = pa.Table.from_pylist(fresh(rows, 3))
    table = table.append_column("_edgecore_nested", pa.array([1, 2, 3]))
    table = table.append_column("_edgecore_malformed", pa.array(["x", None, "y"]))
    status, counts = post(shared.port, arrow_body(table), ARROW)
    assert (status, counts["accepted"]) == (200, 3), counts


def test_text_that_looks_like_a_date_stays_text(shared, txns):
    """Arrow's JSON reader infers timestamps from text: without the app's types for the
    text columns a customer "2026-01-02" became "2026-01-02 00:00:00" (another customer),
    but only when some other column of the request did not fit its type."""
    _, rows = txns
    quoted = fresh(rows, 3)
    for e in quoted:
        e["customer_id"] = "2026-01-02"
        e["event_id"] = str(e["event_id"])  # quoted ids: valid, but not int64 for Arrow
    epoch = fresh(rows, 3)
    for e in epoch:
        e["customer_id"] = "2026-01-03"
        e["ts"] = 1_767_225_600_000  # epoch milliseconds: not a timestamp for Arrow
    for events in (quoted, epoch):
        status, counts = post(shared.port, ndjson(events))
        assert (status, counts["accepted"]) == (200, 3), counts
    keys = ["2026-01-02", "2026-01-03", "2026-01-02 00:00:00", "2026-01-03 00:00:00"]
    got = shared.profiles(keys)
    assert {k: v["txn_count"] for k, v in got.items()} == {"2026-01-02": 3, "2026-01-03": 3}


def test_ids_beyond_two_to_the_53_are_never_rounded_into_others(shared, txns):
    """One float among the ids of a request made Arrow read them all as doubles:
    9007199254740993 became 9007199254740992, another event's id."""
    _, rows = txns
    base = 2**53
    events = [{**r, "event_id": base + 1 + i} for i, r in enumerate(rows[:3])]
    events.append({**rows[3], "event_id": 7.5})
    status, counts = post(shared.port, ndjson(events))
    assert (status, counts["accepted"], counts["dead_lettered"]) == (200, 3, 1), counts
    status, counts = post(shared.port, ndjson(events[:3]))  # the same three again
    assert (status, counts["accepted"], counts["duplicates"]) == (200, 0, 3), counts


def test_objects_without_fields_are_counted_and_dead_lettered(shared, txns):
    """``[{}]`` was a table of no rows: 0 input for an event sent (and, over MQTT, a
    message acknowledged without a trace)."""
    _, rows = txns
    for body, ctype, n in (
        (b"[{}]", JSON, 1),
        (b"{}", JSON, 1),
        (b"{}\n{}", NDJSON, 2),
        (b'[{}, {"_edgecore_nested": 1}]', JSON, 2),
    ):
        status, counts = post(shared.port, body, ctype)
        assert status == 200, (body, counts)
        assert (counts["input"], counts["dead_lettered"]) == (n, n), (body, counts)


# -- concurrent good and bad requests ---------------------------------------------------------
def test_bodies_missing_columns_beside_concurrent_good_requests(live, txns):
    """6 threads post good events while 3 post the same events without a required column
    (and objects with nothing but an id): every good event is applied exactly once, each
    bad row is dead-lettered, and no answer is a 5xx."""
    table, rows = txns
    lv = live()
    chunks = [rows[i : i + 50] for i in range(0, len(rows), 50)]
    required = ["ts", "customer_id", "amount", "event_id", "lat"]
    bad_bodies = []
    for i, chunk in enumerate(chunks):
        drop = required[i % len(required)]
        bad_bodies.append([{k: v for k, v in r.items() if k != drop} for r in chunk])
        bad_bodies.append([{"event_id": r["event_id"]} for r in chunk[:10]])
    start = threading.Barrier(9)

    def worker(bodies: list[list[dict]], as_array: bool) -> list[tuple[int, dict, int]]:
        start.wait()
        out = []
        for b in bodies:
            body = json.dumps(b).encode() if as_array else ndjson(b)
            status, counts = post(lv.port, body, JSON if as_array else NDJSON)
            out.append((status, counts, len(b)))
        return out

    with concurrent.futures.ThreadPoolExecutor(9) as pool:
        good = [pool.submit(worker, chunks[i::6], False) for i in range(6)]
        bad = [pool.submit(worker, bad_bodies[i::3], True) for i in range(3)]
        good_answers = [a for f in good for a in f.result()]
        bad_answers = [a for f in bad for a in f.result()]
    assert all(s == 200 for s, _, _ in good_answers + bad_answers), [
        (s, c) for s, c, _ in good_answers + bad_answers if s != 200
    ]
    assert all(c["accepted"] == n and c["input"] == n for _, c, n in good_answers)
    assert all(c["dead_lettered"] == n == c["input"] for _, c, n in bad_answers)
    assert sum(c["accepted"] for _, c, _ in good_answers) == len(rows)
    assert_profiles(lv.profiles(sorted({r["customer_id"] for r in rows})), table)
    assert lv.gate.totals["accepted"] == len(rows)
    assert lv.gate.totals["dead_lettered"] == sum(n for _, _, n in bad_answers)


# -- framing: Content-Length, chunks, encodings ---------------------------------------------
HEAD = b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
ARRAY = json.dumps([{"event_id": 1}]).encode()
FRAMING = {
    "length_negative": (HEAD + b"Content-Length: -1\r\n\r\n" + ARRAY, 400),
    "length_text": (HEAD + b"Content-Length: abc\r\n\r\n" + ARRAY, 400),
    "length_hex": (HEAD + b"Content-Length: 0x10\r\n\r\n" + ARRAY, 400),
    "length_overflowing": (HEAD + b"Content-Length: " + b"9" * 40 + b"\r\n\r\n" + ARRAY, 400),
    "length_twice": (HEAD + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\n" + ARRAY, 400),
    "length_larger_than_body": (HEAD + b"Content-Length: 500\r\n\r\n" + ARRAY, 408),
    "length_smaller_than_body": (
        HEAD + b"Content-Length: %d\r\n\r\n" % (len(ARRAY) - 4) + ARRAY,
        400,
    ),
    "length_and_chunked": (
        HEAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "length_over_the_limit": (HEAD + b"Content-Length: 20000\r\n\r\n" + ARRAY, 413),
    "chunked_over_the_limit": (
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + b"1000\r\n" + b"x" * 4096 + b"\r\n" * 1,
        None,  # filled in below: 20 chunks of 4 KB
    ),
    "chunk_size_not_hex": (HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n" + ARRAY, 400),
    "gzip_that_is_not": (HEAD + b"Content-Encoding: gzip\r\nContent-Length: 5\r\n\r\nhello", 400),
    "deflate_that_is_not": (
        HEAD + b"Content-Encoding: deflate\r\nContent-Length: 5\r\n\r\nhello",
        400,
    ),
}
_chunks = b"".join(b"1000\r\n" + b"x" * 4096 + b"\r\n" for _ in range(20))
FRAMING["chunked_over_the_limit"] = (HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + _chunks, 413)
_bomb = gzip.compress(b" " * 9_000_000)  # 9 KB that is 9 MB once read
FRAMING["gzip_bomb"] = (
    HEAD + b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(_bomb) + _bomb,
    413,
)


@pytest.fixture(scope="module")
def framed(tmp_path_factory):
    lv = Live(tmp_path_factory.mktemp("framed"), max_body=10_000, body_timeout_s=1.0)
    yield lv
    lv.close()


@pytest.mark.parametrize("case", list(FRAMING))
def test_broken_framing_is_a_4xx_and_the_next_request_is_served(framed, txns, case):
    _, rows = txns
    request, want = FRAMING[case]
    assert len(_bomb) < 10_000
    answer = raw_exchange(framed.port, request)
    got = statuses(answer)
    assert got and got[0] == want, (got, answer[:300])
    assert all(400 <= s < 500 for s in got), answer[:500]
    status, counts = post(framed.port, ndjson(fresh(rows, 5)))
    assert (status, counts["accepted"]) == (200, 5)


def test_a_client_gone_mid_body_costs_nothing(framed, txns):
    """Half a body, then the client half-closes (or vanishes): aiohttp drops the connection
    (there is nobody to answer); the server goes on."""
    _, rows = txns
    for request in (
        HEAD + b"Content-Length: 500\r\n\r\n" + ARRAY,
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n10\r\nabc",
    ):
        with socket.create_connection(("127.0.0.1", framed.port), timeout=10) as s:
            s.sendall(request)
            s.shutdown(socket.SHUT_WR)
            answer = s.recv(1000)
        assert not any(c >= 500 for c in statuses(answer)), answer
    status, counts = post(framed.port, ndjson(fresh(rows, 5)))
    assert (status, counts["accepted"]) == (200, 5)


def test_a_short_content_length_neither_loses_nor_doubles_events(live, txns):
    """Content-Length covers half of an NDJSON body: the server reads that half as the
    request (its last line torn) and the rest as a broken next request. The client, seeing
    a 4xx, sends the batch again: every event is applied exactly once."""
    table, rows = txns
    lv = live()
    body = ndjson(rows[:100])
    head = b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n"
    answer = raw_exchange(lv.port, head + b"Content-Length: %d\r\n\r\n" % (len(body) // 2) + body)
    got = statuses(answer)
    assert got and all(s in (200, 400) for s in got) and 400 in got, answer[:500]
    status, counts = post(lv.port, body)
    assert status == 200 and counts["accepted"] + counts["duplicates"] == 100, counts
    keys = sorted({r["customer_id"] for r in rows[:100]})
    assert_profiles(lv.profiles(keys), table.slice(0, 100))


# -- event times out of range ---------------------------------------------------------------
def test_epoch_times_out_of_range_are_dead_letters_and_the_cli_reads_the_folder(tmp_path, txns):
    table, rows = txns
    data = tmp_path / "d"
    run = Driven(data, http=HttpOptions(port=0))
    try:
        times = table.column("ts").cast(pa.int64()).to_pylist()[:400]
        epoch = [{**r, "ts": t} for r, t in zip(rows[:400], times, strict=True)]
        bad_times = [4_611_686_018_427_387_904, -1, -(2**63), 2**63 - 1, 2**64, 10**30]
        bad = [
            {**rows[400 + i], "event_id": 91_000_000 + i, "ts": ts}
            for i, ts in enumerate(bad_times)
        ]
        status, counts = post(run.port, ndjson(epoch[:200] + bad + epoch[200:]))
        assert status == 200, counts
        assert (counts["accepted"], counts["dead_lettered"]) == (400, len(bad)), counts
        for ts in bad_times[:2]:  # alone, Arrow reads the line with the app's types
            status, counts = post(run.port, ndjson([{**bad[0], "ts": ts}]))
            assert (status, counts["dead_lettered"]) == (200, 1), counts
        # Arrow IPC times that overflow milliseconds, or are not times at all
        ipc = pa.Table.from_pylist(rows[400:403]).drop_columns(["ts"])
        ipc = ipc.set_column(0, "event_id", pa.array([91_000_100, 91_000_101, 91_000_102]))
        for ts, accepted in (
            (pa.array([2**62, 1, 2], pa.timestamp("s")), 2),  # 2**62 s wrapped around to 1970
            (pa.array([2**62, -5, 7_258_118_400_001], pa.timestamp("ms")), 0),  # was a 500
            (pa.array([2**64 - 1, 2**63, 2**63 + 5], pa.uint64()), 0),  # was a 500
        ):
            status, counts = post(run.port, arrow_body(ipc.append_column("ts", ts)), ARROW)
            assert status == 200, counts
            assert (counts["accepted"], counts["dead_lettered"]) == (accepted, 3 - accepted)
        good_ids = {r["event_id"] for r in rows[:400]} | {91_000_101, 91_000_102}
    finally:
        stats = run.finish()
    assert stats.accepted == len(good_ids)
    got = cli("sql", "SELECT count(*) AS n FROM dead_letters", "--data", str(data))
    assert got["rows"][0]["n"] == stats.dead_lettered == len(bad) + 2 + 7
    got = cli(
        "sql",
        "SELECT sum(txn_count) AS n, min(first_ts) AS lo, max(last_ts) AS hi FROM customers",
        "--data",
        str(data),
    )
    assert got["rows"][0]["n"] == len(good_ids)
    lo, hi = got["rows"][0]["lo"], got["rows"][0]["hi"]
    assert str(lo)[:4] >= "1970" and str(hi)[:4] < "2200", got
    key = rows[0]["customer_id"]
    state = cli("entity", "customer", key, "--data", str(data))
    assert state["txn_count"] >= sum(1 for r in rows[:400] if r["customer_id"] == key)
    reasons = cli("sql", "SELECT reason FROM dead_letters", "--data", str(data))["rows"]
    assert all("ts:" in r["reason"] for r in reasons), reasons


# -- Arrow IPC --------------------------------------------------------------------------------
def test_arrow_ipc_bodies_valid_truncated_garbage_nested(shared, txns):
    table, _ = txns
    events = table.slice(0, 50).set_column(
        0, "event_id", pa.array([next(_ids) for _ in range(50)], pa.int64())
    )
    body = arrow_body(events)
    status, counts = post(shared.port, body, ARROW)
    assert (status, counts["accepted"]) == (200, 50), counts
    nested_col = events.append_column("tags", pa.array([[1, 2]] * 50))
    twice = pa.Table.from_arrays(
        [*events.columns, events.column("customer_id")], names=[*events.column_names, "customer_id"]
    )
    rng = random.Random(11)
    for name, bad in {
        "truncated": body[: len(body) // 2],
        "truncated_to_the_schema": body[:200],
        "garbage": rng.randbytes(3_000),
        "garbage_after_a_valid_start": body[:8] + rng.randbytes(500),
        "nested": arrow_body(nested_col),
        "a_column_twice": arrow_body(twice),  # was a KeyError: a 500
    }.items():
        status, payload = post(shared.port, bad, ARROW)
        assert status == 400 and "error" in payload, (name, status, payload)
    assert get(shared.port)[0] == 200


def test_arrow_ipc_values_no_check_foresaw_are_dead_letters(shared, txns):
    table, _ = txns
    base = table.slice(0, 3).drop_columns(["event_id"])
    ids = lambda: pa.array([next(_ids) for _ in range(3)])  # noqa: E731
    cases = {
        "bool_ids": (pa.array([True, False, True]), "event_id", 0),
        "nan_float_ids": (pa.array([float("nan"), float(next(_ids)), 1e300]), "event_id", 1),
        "binary_customer": (pa.array([b"c1", b"\xff\xfe", b"c3"], pa.binary(2)), "customer_id", 2),
        "uint64_amount": (pa.array([2**64 - 1, 5, 6], pa.uint64()), "amount", 2),
        "decimal_amount": (pa.array([1, 2, 3], pa.decimal128(10, 2)), "amount", 3),
        "duration_time": (pa.array([1, 2, 3], pa.duration("s")), "ts", 0),
    }
    for name, (col, field, accepted) in cases.items():
        events = base if field == "event_id" else base.append_column("event_id", ids())
        if field in events.column_names:
            events = events.drop_columns([field])
        events = events.append_column(field, col)
        status, counts = post(shared.port, arrow_body(events), ARROW)
        assert status == 200, (name, counts)
        assert counts["accepted"] == accepted and reconciles(counts), (name, counts)
        assert counts["dead_lettered"] == 3 - accepted, (name, counts)


# -- MQTT -------------------------------------------------------------------------------------
@pytest.fixture
def broker(tmp_path):
    if shutil.which("mosquitto") is None:
        if os.environ.get("CI"):
            raise RuntimeError("CI must install mosquitto (see .ci/run)")
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


def mqtt_poison(rows: list[dict]) -> dict[str, tuple[bytes, str]]:
    """Poison payloads: the bytes and the start of the dead letter's reason."""
    row = rows[0]
    return {
        "not_json": (b"{not json", "record: malformed (not JSON"),
        "deep_array": (b"[" * 100_000 + b"]" * 100_000, "record: malformed (nested deeper"),
        "missing_columns": (
            json.dumps({"event_id": 92_000_001, "amount": 3.5}).encode(),
            "ts: missing value",
        ),
        "object_in_string": (
            json.dumps({**row, "event_id": 92_000_002, "customer_id": {"id": "c1"}}).encode(),
            "customer_id: not a string",
        ),
        "invalid_utf8": (
            b'{"event_id": 92000003, "customer_id": "\xff\xfe", "ts": "2026-01-01"}',
            "record: malformed (not UTF-8)",
        ),
        "lone_surrogate": (  # was a UnicodeEncodeError that killed the listener's pump
            json.dumps({**row, "event_id": 92_000_004, "customer_id": "\udc00"}).encode(),
            "record: malformed (not UTF-8 (a lone surrogate))",
        ),
        "binary_blob": (random.Random(5).randbytes(2_000), "record: malformed ("),
        "empty_payload": (b"", "record: malformed (not JSON"),
        "empty_object": (b"{}", "event_id: missing value"),  # was no row at all
        "empty_array": (b"[]", "record: malformed (empty array)"),
        "a_number": (b"42", "record: malformed (not a JSON object)"),
        "nan_id": (
            json.dumps({**row, "event_id": float("nan")}).encode(),
            "event_id: not a valid int64",
        ),
    }


def test_mqtt_poison_is_dead_lettered_with_its_payload_and_acknowledged(broker, txns, tmp_path):
    table, rows = txns
    data = tmp_path / "d"
    url = f"mqtt://127.0.0.1:{broker.port}/cards/+/txn"
    run = Driven(data, mqtt=url)
    poison = mqtt_poison(rows)
    pub = mqtt_client(broker.port)
    try:
        publish(pub, rows[:300])
        n = 300
        run.wait_input(n)
        for payload, _ in poison.values():  # one at a time: each its own pump round
            pub.publish("cards/eu-1/txn", payload, qos=1).wait_for_publish(timeout=30)
            n += 1
            run.wait_input(n, timeout=20)
        # a message with an array of events, one of them poison, beside good ones
        mixed = [*rows[300:305], {**rows[305], "event_id": 92_000_100, "amount": -1}]
        pub.publish("cards/eu-1/txn", json.dumps(mixed), qos=1).wait_for_publish(timeout=30)
        publish(pub, rows[305:])
        n += len(mixed) + len(rows) - 305
        run.wait_input(n)
    finally:
        stats = run.finish()
    assert run.gate.totals["input"] == n  # nothing twice
    assert (stats.accepted, stats.dead_lettered) == (len(rows), len(poison) + 1)
    assert_profiles_match(data, sql_profiles(table))
    dead = Store(data).read("dead_letters").to_pylist()
    assert len(dead) == len(poison) + 1
    for name, (payload, reason) in poison.items():
        hits = [d for d in dead if d["reason"].startswith(reason)]
        assert hits, (name, reason, [d["reason"] for d in dead])
        if name == "lone_surrogate":  # kept as JSON text (which escapes the surrogate)
            assert any("92000004" in d["raw"] for d in hits)
        elif reason.startswith("record: malformed"):  # the raw payload, as text
            text = payload[:4096].decode("utf-8", errors="replace")
            assert any(json.dumps(text, ensure_ascii=False)[1:1000] in d["raw"] for d in hits)
        else:  # a record: its fields
            sent = json.loads(payload)
            assert any(set(sent) <= set(json.loads(d["raw"])) for d in hits), name
    # every message was acknowledged: the same client id gets nothing again
    again = Driven(data, mqtt=url)
    time.sleep(1.5)
    stats = again.finish()
    pub.loop_stop()
    assert stats.input == 0
    assert Store(data).read("dead_letters").num_rows == len(poison) + 1
