"""Fuzzing the live endpoints: generated bodies (hypothesis) against the in-process HTTP
front end, then a seeded mix of good and hostile traffic on both endpoints of a real
``edgecore serve``.

Every answer must be a 200 or a 4xx (never a 5xx, never a dropped connection), every 200
must reconcile (input = accepted + dead_lettered + duplicates + filtered), the gate's
totals must be the sum of the answers, and the profiles must be exactly those of the good
events that were acknowledged.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import random
import shutil
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import assert_profiles_match, make_transactions, sql_profiles
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from live_helpers import Broker, Serve, get, mqtt_client, post
from live_helpers import FrontEnd as Live

from runtime.dataflow.app import new_counts
from runtime.ingest.http import ARROW

NDJSON = "application/x-ndjson"
JSON = "application/json"
FIELDS = [
    "event_id",
    "ts",
    "customer_id",
    "device_id",
    "merchant_id",
    "category",
    "amount",
    "lat",
    "lon",
    "is_fraud",
]
COUNTS = ("input", "accepted", "dead_lettered", "duplicates", "filtered")


def reconciles(counts: dict) -> bool:
    return counts["input"] == sum(counts[k] for k in COUNTS[1:])


@pytest.fixture(scope="module")
def txns(tmp_path_factory):
    """3,000 transactions of 60 customers, each row with datetime times (for the oracle)."""
    path = make_transactions(tmp_path_factory.mktemp("txns") / "t.parquet", 3_000, 60)
    return pq.read_table(path).to_pylist()


def as_json(event: dict) -> dict:
    return {**event, "ts": event["ts"].isoformat()}


def oracle(events: list[dict]) -> dict[str, dict]:
    return sql_profiles(pa.Table.from_pylist(events))


class Goods:
    """Good events, each a transaction under a customer and an id of its own ("good-" ids),
    and the record of which were acknowledged."""

    def __init__(self, rows: list[dict], first_id: int) -> None:
        self.rows = rows
        self.ids = itertools.count(first_id)
        self.sent: list[dict] = []
        self.acked: dict[int, dict] = {}
        self.lock = threading.Lock()

    def new(self, i: int) -> dict:
        row = self.rows[i % len(self.rows)]
        with self.lock:
            event = {**row, "event_id": next(self.ids), "customer_id": f"good-{row['customer_id']}"}
            self.sent.append(event)
        return event

    def again(self, i: int) -> dict | None:
        """An event sent before (a redelivery: the same event, the same id)."""
        with self.lock:
            return self.sent[i % len(self.sent)] if self.sent else None

    def ack(self, events: list[dict]) -> None:
        with self.lock:
            for e in events:
                self.acked[e["event_id"]] = e


HOSTILE_IDS = itertools.count(10**15)  # ids of hostile records: never a good event's


def hostile_base(row: dict) -> dict:
    """A transaction under a customer no good event has, so a record that is valid by
    chance changes no profile the oracle checks."""
    return {**as_json(row), "event_id": next(HOSTILE_IDS), "customer_id": "hostile"}


def splice(record: dict, name: str, raw: bytes) -> bytes:
    return json.dumps({**record, name: "@@RAW@@"}).encode().replace(b'"@@RAW@@"', raw)


# -- the in-process front end under hypothesis -------------------------------------------------
@pytest.fixture(scope="module")
def live(tmp_path_factory):
    lv = Live(tmp_path_factory.mktemp("fuzz"))
    yield lv
    lv.close()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)

#: one record of a body: what it is and what it is made from
good_items = st.tuples(st.just("good"), st.integers(0, 10**6))
items = st.one_of(
    good_items,
    st.tuples(st.just("again"), st.integers(0, 10**6)),
    st.tuples(st.just("mistyped"), st.integers(0, 10**6), st.sampled_from(FIELDS), json_values),
    st.tuples(st.just("missing"), st.integers(0, 10**6), st.sets(st.sampled_from(FIELDS))),
    st.tuples(st.just("nested"), st.integers(65, 30_000), st.booleans()),
    st.tuples(
        st.just("not_utf8"),
        st.integers(0, 10**6),
        st.sampled_from(FIELDS[2:6]),
        st.binary(min_size=1, max_size=6).map(
            lambda b: b"\xff" + b.replace(b"\n", b"").replace(b"\r", b"")
        ),
    ),
    st.tuples(st.just("surrogate"), st.integers(0, 10**6), st.sampled_from(FIELDS[2:6])),
    st.tuples(st.just("truncated"), st.integers(0, 10**6), st.floats(0.0, 0.99)),
    st.tuples(
        st.just("huge_string"),
        st.integers(0, 10**6),
        st.sampled_from(FIELDS[1:7]),
        st.integers(1_000, 400_000),
    ),
    st.tuples(st.just("random"), st.binary(max_size=200)),
    st.tuples(st.just("not_an_object"), json_values),
)
LAYOUTS = ["ndjson", "ndjson", "json_array", "arrow", "arrow_truncated", "random", "empty"]
CTYPES = {
    "ndjson": NDJSON,
    "json": JSON,
    "arrow": ARROW,
    "other": "text/plain",
}


@st.composite
def mixed_items(draw) -> list[tuple]:
    """Good events and hostile records, in any order."""
    mixed = draw(st.lists(items, max_size=12)) + draw(st.lists(good_items, max_size=20))
    return draw(st.permutations(mixed))


plans = st.fixed_dictionaries(
    {
        "items": mixed_items(),
        "layout": st.sampled_from(LAYOUTS),
        # mostly the content type the layout is, sometimes any other
        "ctype": st.sampled_from(["match"] * 4 + ["ndjson", "json", "arrow", "other", "odd"]),
        "odd_ctype": st.sampled_from(
            [
                "",
                "application/octet-stream",
                "application/vnd.edge+json",
                "APPLICATION/X-NDJSON",
                "application/x-ndjson; charset=latin-1",
                "multipart/form-data; boundary=x",
                "application/jsonl",
                "text/csv",
            ]
        ),
        "crlf": st.booleans(),
        "random_body": st.binary(max_size=2_000),
    }
)


@dataclass
class Body:
    data: bytes
    ctype: str
    decoder: str  # ndjson, json, arrow or none (415)
    layout: str
    goods: list[dict] = field(default_factory=list)
    records: int = 0  # non-blank lines or array items (what ``input`` must be)


def line_of(item: tuple, goods: Goods) -> tuple[bytes, dict | None]:
    """The bytes of one record, and the good event it is (or None)."""
    kind = item[0]
    rows = goods.rows
    if kind in ("good", "again"):
        event = goods.again(item[1]) if kind == "again" else None
        event = event or goods.new(item[1])
        return json.dumps(as_json(event)).encode(), event
    if kind == "mistyped":
        _, i, name, value = item
        record = {**hostile_base(rows[i % len(rows)]), name: value}
        if name == "customer_id" and isinstance(value, str) and value.startswith("good-"):
            record[name] = "x" + value
        return json.dumps(record).encode(), None
    if kind == "missing":
        _, i, names = item
        record = {k: v for k, v in hostile_base(rows[i % len(rows)]).items() if k not in names}
        return json.dumps(record).encode(), None
    if kind == "nested":
        _, depth, as_object = item
        if as_object:
            return b'{"a":' * depth + b"1" + b"}" * depth, None
        return b"[" * depth + b"]" * depth, None
    if kind == "not_utf8":
        _, i, name, junk = item
        return splice(hostile_base(rows[i % len(rows)]), name, b'"' + junk + b'"'), None
    if kind == "surrogate":
        _, i, name = item
        return splice(hostile_base(rows[i % len(rows)]), name, b'"\\ud83d"'), None
    if kind == "truncated":
        _, i, at = item
        text = json.dumps(hostile_base(rows[i % len(rows)])).encode()
        return text[: max(1, int(len(text) * at))], None
    if kind == "huge_string":
        _, i, name, size = item
        return json.dumps({**hostile_base(rows[i % len(rows)]), name: "x" * size}).encode(), None
    if kind == "random":
        return item[1].replace(b"\n", b"").replace(b"\r", b""), None
    return json.dumps(item[1]).encode(), None  # not_an_object


def arrow_of(events: list[dict]) -> bytes:
    table = pa.Table.from_pylist([as_json(e) for e in events]) if events else pa.table({})
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue()


def build(plan: dict, goods: Goods) -> Body:
    layout = plan["layout"]
    lines, found = [], []
    for item in plan["items"]:
        line, good = line_of(item, goods)
        lines.append(line)
        if good is not None:
            found.append(good)
    blank = sum(1 for ln in lines if not ln.strip())
    if layout == "ndjson":
        data = (b"\r\n" if plan["crlf"] else b"\n").join(lines)
        records, own = len(lines) - blank, "ndjson"
    elif layout == "json_array":
        data = b"[" + b",".join(ln if ln.strip() else b"null" for ln in lines) + b"]"
        records, own = len(lines), "json"
    elif layout == "arrow":
        data, records, own = arrow_of(found), len(found), "arrow"
    elif layout == "arrow_truncated":
        data = arrow_of(found)
        data, records, own = data[: len(data) // 2], 0, "none"
    elif layout == "random":
        data, records, own = plan["random_body"], 0, "none"
    else:
        data, records, own = b"", 0, "none"
    choice = plan["ctype"]
    if choice == "match":
        ctype = CTYPES["json" if own == "none" else own]
    elif choice == "odd":
        ctype = plan["odd_ctype"]
    else:
        ctype = CTYPES[choice]
    decoder = decoder_of(ctype)
    applied = found if decoder == own else []
    if decoder == "json" and layout == "ndjson" and records == 1:  # one line: one document
        return Body(data, ctype, decoder, layout, found, 1 if found else -1)
    return Body(data, ctype, decoder, layout, applied, records if decoder == own else -1)


def decoder_of(ctype: str) -> str:
    """What the front end reads a content type as (see HttpListener._decoder)."""
    base = ctype.split(";")[0].strip().lower()
    if base in ("application/x-ndjson", "application/ndjson", "application/jsonl"):
        return "ndjson"
    if base in ("application/x-jsonlines",):
        return "ndjson"
    if base in ("application/json", "", "application/octet-stream") or base.endswith("+json"):
        return "json"
    if base == ARROW:
        return "arrow"
    return "none"


class Ledger:
    """The answers so far, summed."""

    def __init__(self) -> None:
        self.totals = new_counts()
        self.statuses: dict[int, int] = {}

    def add(self, status: int, counts: dict) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status == 200:
            for k in COUNTS:
                self.totals[k] += counts[k]


def check_answer(body: Body, status: int, counts: dict) -> None:
    assert status == 200 or 400 <= status < 500, (status, counts, body.ctype, body.layout)
    if body.decoder == "none":
        assert status == 415, (status, counts)
    if status != 200:
        assert "error" in counts, counts
        return
    assert reconciles(counts), counts
    if body.records >= 0:
        assert counts["input"] == body.records, (counts, body.layout, body.ctype)
    # every good event is accepted now or was before (a redelivery)
    assert counts["accepted"] + counts["duplicates"] >= len(body.goods), counts


def test_generated_bodies_never_get_a_5xx_and_counts_reconcile(live, txns):
    goods = Goods(txns, first_id=1_000_000)
    ledger = Ledger()

    @settings(
        max_examples=150,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(plan=plans)
    def one_request(plan: dict) -> None:
        body = build(plan, goods)
        status, counts = post(live.port, body.data, body.ctype)  # raises if dropped
        ledger.add(status, counts)
        check_answer(body, status, counts)
        up, health = get(live.port)  # the server is up, and its totals are the answers'
        assert (up, health["status"]) == (200, "ok"), health
        assert {k: health[k] for k in COUNTS} == ledger.totals, (health, ledger.totals)
        if status == 200:
            goods.ack(body.goods)

    one_request()
    assert get(live.port)[0] == 200
    # the gate counted exactly what the answers said
    assert {k: live.gate.totals[k] for k in COUNTS} == ledger.totals
    assert sum(ledger.statuses.values()) >= 150, ledger.statuses
    assert ledger.statuses.get(200, 0) > 50, ledger.statuses  # most requests got through
    acked = list(goods.acked.values())
    assert acked
    want = oracle(acked)
    got = live.profiles(sorted(want) + ["hostile"])
    got.pop("hostile", None)
    assert {k: v["txn_count"] for k, v in got.items()} == {
        k: v["txn_count"] for k, v in want.items()
    }
    for k, w in want.items():
        assert got[k]["amount_sum"] == pytest.approx(w["amount_sum"], rel=1e-9), k
        assert got[k]["first_ts"] == w["first_ts"] and got[k]["last_ts"] == w["last_ts"], k


# -- a seeded run against edgecore serve, both endpoints ---------------------------------------
HEAD = b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


def raw_status(port: int, request: bytes) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        head = s.recv(200)
    return int(head.split(b" ")[1])


class HttpClient:
    """A thread posting a seeded mix of good and hostile bodies; it keeps every answer."""

    def __init__(self, port: int, goods: Goods, seed: int, stop: threading.Event) -> None:
        self.port, self.goods, self.stop = port, goods, stop
        self.rng = random.Random(seed)
        self.answers: list[tuple[int, dict, int]] = []  # status, counts, good events in it
        self.failures: list[str] = []
        self.sent_ok: list[bytes] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def hostile_line(self) -> bytes:
        rng, rows = self.rng, self.goods.rows
        base = hostile_base(rows[rng.randrange(len(rows))])
        kind = rng.randrange(9)
        if kind == 0:
            d = rng.randrange(65, 20_000)
            return b"[" * d + b"]" * d
        if kind == 1:
            return json.dumps({**base, "customer_id": {"id": rng.random()}}).encode()
        if kind == 2:
            return json.dumps({**base, "amount": rng.choice([-1, 1e300, "lots", [1]])}).encode()
        if kind == 3:
            return splice(base, "device_id", b'"\xff\xfe' + rng.randbytes(3) + b'"')
        if kind == 4:
            text = json.dumps(base).encode()
            return text[: rng.randrange(1, len(text))]
        if kind == 5:
            return splice(base, "merchant_id", b'"\\udfff"')
        if kind == 6:
            return rng.randbytes(rng.randrange(1, 100)).replace(b"\n", b"").replace(b"\r", b"")
        if kind == 7:
            return json.dumps({**base, "ts": rng.choice([2**64, -1, 4611686018427387904])}).encode()
        return json.dumps({k: v for k, v in base.items() if k != "ts"}).encode()

    def request(self) -> tuple[bytes, str, list[dict], bool]:
        """(body, content type, the good events a 200 applies, whether it must be a 200);
        a body sent again has the type "again"."""
        rng = self.rng
        kind = rng.randrange(10)
        goods = [self.goods.new(rng.randrange(10**6)) for _ in range(rng.randrange(1, 40))]
        if kind <= 3:  # NDJSON, good and hostile lines shuffled
            lines = [json.dumps(as_json(g)).encode() for g in goods]
            lines += [self.hostile_line() for _ in range(rng.randrange(0, 6))]
            rng.shuffle(lines)
            return b"\n".join(lines), NDJSON, goods, True
        if kind == 4:  # a JSON array with mistyped records
            records = [as_json(g) for g in goods]
            records += [
                {**hostile_base(g), "lat": rng.choice([91, "north", None])} for g in goods[:3]
            ]
            rng.shuffle(records)
            return json.dumps(records).encode(), JSON, goods, True
        if kind == 5:  # a JSON array nested too deep: nothing of it is taken
            d = rng.randrange(70, 5_000)
            body = json.dumps([as_json(g) for g in goods])[:-1] + "," + "[" * d + "]" * d + "]"
            return body.encode(), JSON, [], False
        if kind == 6:  # Arrow IPC, whole or torn
            data = arrow_of(goods)
            if rng.random() < 0.5:
                return data, ARROW, goods, True
            return data[: rng.randrange(1, len(data))], ARROW, [], False
        if kind == 7:  # a redelivery of a body acknowledged before: all duplicates
            if self.sent_ok:
                return self.sent_ok[rng.randrange(len(self.sent_ok))], "again", [], True
            return b"[]", JSON, [], False
        if kind == 8:  # bytes, with some content type
            ctype = rng.choice([NDJSON, JSON, ARROW, "text/plain", "application/octet-stream"])
            return rng.randbytes(rng.randrange(1, 3_000)), ctype, [], False
        return b"", "frame", [], False  # broken framing, below

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self._one()
            except Exception as err:  # a dropped connection, a garbled answer: fails the test
                self.failures.append(f"{type(err).__name__}: {err}")

    def _one(self) -> None:
        body, ctype, goods, must = self.request()
        if ctype == "frame":
            request = self.rng.choice(
                [
                    HEAD + b"Content-Length: -1\r\n\r\n[]",
                    HEAD + b"Content-Encoding: gzip\r\nContent-Length: 5\r\n\r\nhello",
                    HEAD + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\n[]",
                ]
            )
            status, counts = raw_status(self.port, request), {"error": "framing"}
        else:
            status, counts = post(self.port, body, NDJSON if ctype == "again" else ctype)
        if status != 200 and (must or status >= 500):
            self.failures.append(f"{status} {counts} for {ctype}")
        if status == 200:
            if not reconciles(counts):
                self.failures.append(f"does not reconcile: {counts}")
            if ctype == "again" and counts["accepted"]:
                self.failures.append(f"a body sent again was accepted again: {counts}")
            self.goods.ack(goods)
            if ctype == NDJSON and goods:
                self.sent_ok.append(body)
        self.answers.append((status, counts, len(goods)))


MQTT_POISON = [
    b"{not json",
    b"[" * 50_000 + b"]" * 50_000,
    b"",
    b"{}",
    b"[]",
    b"42",
    b'{"event_id": 5, "customer_id": "\xff\xfe"}',
    b'{"event_id": 5, "customer_id": "\\ud800"}',
    b'{"event_id": 6, "amount": 3.5}',
]


def test_seeded_mix_on_both_endpoints_of_edgecore_serve(txns, tmp_path):
    if shutil.which("mosquitto") is None:
        if os.environ.get("CI"):
            raise RuntimeError("CI must install mosquitto (see .ci/run)")
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    broker = Broker(tmp_path / "broker").start()
    data = tmp_path / "d"
    url = f"mqtt://127.0.0.1:{broker.port}/cards/#"
    serve = Serve(data, "--mqtt", url, "--json")
    http_goods, mqtt_goods = Goods(txns, 1_000_000), Goods(txns, 5_000_000)
    rng = random.Random(1130)
    mqtt_rows, mqtt_infos = 0, []
    deaths: list[str] = []
    try:
        port = serve.wait_http()
        serve.wait_for("subscribed to")
        pub = mqtt_client(broker.port)
        stop = threading.Event()
        clients = [HttpClient(port, http_goods, seed, stop) for seed in (1, 2)]
        for c in clients:
            c.thread.start()
        deadline = time.monotonic() + 12
        last_health = 0.0
        while time.monotonic() < deadline:
            if rng.random() < 0.75:  # 1-10 good events in one message
                events = [mqtt_goods.new(rng.randrange(10**6)) for _ in range(rng.randrange(1, 11))]
                payload = [as_json(e) for e in events]
                body = json.dumps(payload[0] if len(payload) == 1 else payload)
                mqtt_infos.append(pub.publish("cards/eu-1/txn", body, qos=1))
                mqtt_rows += len(events)
            else:
                mqtt_infos.append(pub.publish("cards/eu-9/txn", rng.choice(MQTT_POISON), qos=1))
                mqtt_rows += 1
            time.sleep(0.004)
            if serve.proc.poll() is not None:
                deaths.append(f"serve exited {serve.proc.returncode} during the run")
                break
            if time.monotonic() - last_health > 1.0:
                last_health = time.monotonic()
                try:
                    if get(port)[0] != 200:
                        deaths.append("healthz did not answer 200")
                except OSError as err:
                    deaths.append(f"healthz: {err} (serve: {serve.proc.poll()})")
                    break
        stop.set()
        for c in clients:
            c.thread.join(60)
        for info in mqtt_infos:
            info.wait_for_publish(timeout=30)
        http_input = sum(c["input"] for c2 in clients for s, c, _ in c2.answers if s == 200)
        want_input = http_input + mqtt_rows
        wait_until = time.monotonic() + 90
        health: dict[str, Any] = {}
        while time.monotonic() < wait_until:
            health = get(port)[1]
            if health.get("input", 0) >= want_input:
                break
            time.sleep(0.2)
        assert serve.proc.poll() is None, serve.stderr[-3000:]
        serve.signal(signal.SIGTERM)
        rc = serve.wait(timeout=60)
        out = serve.proc.stdout.read().decode().splitlines()
        summary = json.loads(next(ln for ln in reversed(out) if ln.startswith("{")))
        pub.loop_stop()
    except Exception as err:  # with what serve said: the run's only witness
        raise AssertionError(f"{type(err).__name__}: {err}\n{serve.stderr[-5000:]}") from err
    finally:
        serve.stop()
        broker.stop()
    assert not deaths, (deaths, serve.stderr[-3000:])
    assert rc == 0, serve.stderr[-3000:]
    assert summary["restarts"] == 0, serve.stderr[-5000:]  # no actor died of what it was sent
    failures = [f for c in clients for f in c.failures]
    assert not failures, failures[:10]
    answers = [a for c in clients for a in c.answers]
    assert sum(1 for s, _, _ in answers if s == 200) > 20, len(answers)
    http_totals = {k: sum(c[k] for s, c, _ in answers if s == 200) for k in COUNTS}
    # (an MQTT redelivery, should the broker make one, is a duplicate: nothing else is)
    assert health["input"] - health["duplicates"] == want_input - http_totals["duplicates"]
    assert summary["input"] == health["input"], (summary, health)
    good_mqtt = len(mqtt_goods.sent)
    assert summary["accepted"] == http_totals["accepted"] + good_mqtt, (summary, http_totals)
    assert summary["dead_lettered"] == http_totals["dead_lettered"] + mqtt_rows - good_mqtt
    acked = list(http_goods.acked.values()) + mqtt_goods.sent
    assert_profiles_match(data, oracle(acked))
