"""HTTP ingest through a real client against the aiohttp front end of a live gate
(in-process here; ``test_live_serve.py`` runs ``edgecore serve`` as users do)."""

from __future__ import annotations

import io
import json
import socket
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_transactions, sql_profiles
from live_helpers import FrontEnd as Live
from live_helpers import get, ndjson, post

from runtime import ConfigError
from runtime.ingest.http import ARROW, HttpOptions


@pytest.fixture
def events(tmp_path):
    table = pq.read_table(make_transactions(tmp_path / "t.parquet", 3_000, 100))
    rows = table.to_pylist()
    for r in rows:
        r["ts"] = r["ts"].isoformat()
    return table, rows


def total_applied(lv: Live) -> int:
    lv.gate.cut()
    lv.gate.resume()
    return sum(int(s.handle.target.counters["rows"]) for s in lv.rt.shards_of("customers"))


def test_events_in_counts_out_in_every_body_format(live, events):
    table, rows = events
    lv = live()
    assert get(lv.port)[0] == 200
    assert post(lv.port, ndjson(rows[:1_000])) == (
        200,
        {"input": 1_000, "accepted": 1_000, "dead_lettered": 0, "duplicates": 0, "filtered": 0},
    )
    # a JSON array with redeliveries and bad rows: the answer names what to fix
    bad = [
        {**rows[0], "event_id": 99_999_999, "amount": "lots"},
        {**rows[1], "event_id": 99_999_998, "ts": "soon"},
    ]
    status, counts = post(
        lv.port, json.dumps(rows[1_000:2_000] + rows[:5] + bad).encode(), "application/json"
    )
    assert status == 200
    assert {k: counts[k] for k in ("input", "accepted", "dead_lettered", "duplicates")} == {
        "input": 1_007,
        "accepted": 1_000,
        "dead_lettered": 2,
        "duplicates": 5,
    }
    assert any("amount" in r for r in counts["reasons"]) and any(
        "ts" in r for r in counts["reasons"]
    )
    # an Arrow IPC stream, typed as the producer has it
    arrow = table.slice(2_000)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, arrow.schema) as w:
        w.write_table(arrow)
    assert post(lv.port, sink.getvalue(), ARROW)[1]["accepted"] == 1_000
    assert total_applied(lv) == 3_000
    status, counts = post(lv.port, b'{"event_id": 1}\n{broken')
    assert status == 200 and counts["dead_lettered"] == 2


@pytest.mark.parametrize(
    ("body", "ctype", "status"),
    [
        (b"not json", "application/json", 400),
        (b"[]", "application/json", 400),
        (b"", "application/x-ndjson", 400),
        (b"\xff\xfe[]", "application/json", 400),
        (b"[" * 20_000 + b"]" * 20_000, "application/json", 400),
        (b"arrow? no", ARROW, 400),
        (b"a,b\n1,2", "text/csv", 415),
    ],
)
def test_bodies_that_are_not_what_they_claim_get_a_4xx(live, body, ctype, status):
    lv = live()
    got, payload = post(lv.port, body, ctype)
    assert got == status and "error" in payload, payload
    assert get(lv.port)[0] == 200  # and the server is fine


def test_body_limit_holds_whatever_the_request_declares(live, events):
    _, rows = events
    lv = live(max_body=10_000)
    assert post(lv.port, ndjson(rows[:200]))[0] == 413
    for declared in (b"-1", b"abc", b"99999999999999999999"):
        with socket.create_connection(("127.0.0.1", lv.port), timeout=10) as s:
            s.sendall(
                b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n"
                b"Content-Length: " + declared + b"\r\n\r\n" + b"x" * 100
            )
            head = s.recv(200)
        assert head.split(b" ")[1].startswith(b"4"), (declared, head)
    # chunked, declaring nothing: cut off as soon as it passes the limit
    with socket.create_connection(("127.0.0.1", lv.port), timeout=10) as s:
        s.sendall(
            b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for _ in range(20):
            s.sendall(b"1000\r\n" + b"x" * 4096 + b"\r\n")
        assert s.recv(200).startswith(b"HTTP/1.1 413")
    assert get(lv.port)[0] == 200


def test_non_loopback_needs_a_token_which_is_checked_and_guards_health(live, events):
    _, rows = events
    with pytest.raises(ConfigError, match="token"):
        HttpOptions(host="0.0.0.0", port=0).check()
    lv = live(token="s3cret")
    assert post(lv.port, ndjson(rows[:3]))[0] == 401
    assert post(lv.port, ndjson(rows[:3]), token="wrong")[0] == 401
    assert post(lv.port, ndjson(rows[:3]), token="s3cret")[1]["accepted"] == 3
    assert get(lv.port) == (200, {"status": "ok"})  # liveness only, without the token
    assert get(lv.port, token="s3cret")[1]["accepted"] == 3


def test_backpressure_is_a_429_with_retry_after_and_stopping_a_503(live, events):
    _, rows = events
    lv = live()
    lv.gate.max_pending_rows = 100
    lv.gate.cut()  # the dispatcher pauses: logged rows wait for the shards
    assert post(lv.port, ndjson(rows[:100]))[0] == 200
    status, payload = post(lv.port, ndjson(rows[100:150]))
    assert status == 429 and payload["retry_after_s"] == 1
    lv.gate.resume()
    assert post(lv.port, ndjson(rows[100:150]))[0] == 200
    lv.ingest.http.stop_intake()
    req = socket.create_connection(("127.0.0.1", lv.port), timeout=10)
    body = ndjson(rows[150:160])
    req.sendall(
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    head = req.recv(500)
    req.close()
    assert head.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in head


def test_idle_and_slow_connections_are_closed_and_do_not_hold_others(live, events):
    _, rows = events
    lv = live(keepalive_s=1.0, body_timeout_s=1.0)
    idle = [socket.create_connection(("127.0.0.1", lv.port)) for _ in range(50)]
    slow_head = socket.create_connection(("127.0.0.1", lv.port))
    slow_head.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n")
    slow_body = socket.create_connection(("127.0.0.1", lv.port))
    slow_body.sendall(
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    t0 = time.monotonic()
    assert post(lv.port, ndjson(rows[:10]))[0] == 200  # served beside them at once
    assert time.monotonic() - t0 < 2
    for s in (slow_head, *idle[:3]):  # trickling a header byte a second does not help
        deadline = time.monotonic() + 5
        s.settimeout(5)
        try:
            while time.monotonic() < deadline:
                s.sendall(b"X")
                if s.recv(1000) == b"":
                    break
        except (TimeoutError, ConnectionError, OSError):
            pass
        assert time.monotonic() < deadline, "a slow client was never cut off"
    slow_body.settimeout(5)
    assert slow_body.recv(200).startswith(b"HTTP/1.1 408")
    for s in (*idle, slow_head, slow_body):
        s.close()


def test_profiles_equal_the_reference_after_concurrent_clients(live, events):
    import concurrent.futures

    table, rows = events
    lv = live()
    chunks = [rows[i : i + 100] for i in range(0, len(rows), 100)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda c: post(lv.port, ndjson(c)), chunks))
    assert all(s == 200 for s, _ in answers)
    assert sum(a["accepted"] for _, a in answers) == 3_000
    lv.gate.cut()
    lv.gate.resume()
    want = {k: v["txn_count"] for k, v in sql_profiles(table).items()}
    got = lv.rt.lookup("customers", pa.array(list(want))).to_pylist()
    assert {r["customer_id"]: r["txn_count"] for r in got} == want
