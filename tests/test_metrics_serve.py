"""``edgecore serve --metrics`` as users run it: scraped during a run, the event counters
reconcile with what was posted; hostile requests to the metrics port do not hurt it."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from urllib.error import HTTPError

import pyarrow.parquet as pq
from conftest import make_transactions
from live_helpers import Serve, free_port, ndjson, post
from prometheus_client.parser import text_string_to_metric_families

from runtime.observe.server import CONTENT_TYPE

LAT = "edgecore_ingest_latency_seconds"


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == CONTENT_TYPE
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def events(got: dict, outcome: str) -> float:
    return got.get(("edgecore_events_total", (("app", "fraud"), ("outcome", outcome))), -1)


def raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        try:
            return s.recv(200)
        except (ConnectionResetError, TimeoutError):
            return b""


def test_scraped_counters_reconcile_with_what_was_posted(tmp_path):
    table = pq.read_table(make_transactions(tmp_path / "t.parquet", 900, 60))
    rows = table.to_pylist()
    for r in rows:
        r["ts"] = r["ts"].isoformat()
    bad = [dict(r, customer_id=None) for r in rows[600:620]]  # dead letters
    bad += [dict(r, amount="lots") for r in rows[620:630]]
    mport = free_port()
    serve = Serve(tmp_path / "d", "--metrics", f"127.0.0.1:{mport}")
    try:
        port = serve.wait_http()
        posted = {"input": 0, "accepted": 0, "dead_lettered": 0, "duplicates": 0, "filtered": 0}
        for body in (rows[:300], rows[300:600] + bad, rows[250:350], rows[630:900]):
            status, counts = post(port, ndjson(body))
            assert status == 200, counts
            for k in posted:
                posted[k] += counts[k]
        assert posted["input"] == 300 + 330 + 100 + 270
        assert posted["dead_lettered"] == 30 and posted["duplicates"] == 100
        # hostile requests to the metrics port, between good scrapes
        assert raw(mport, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 404")
        assert (
            raw(mport, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")[:12]
            == b"HTTP/1.1 405"
        )
        huge = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n"
        assert not raw(mport, huge).startswith(b"HTTP/1.1 200")
        assert not raw(mport, b"\x16\x03\x01garbage\r\n\r\n").startswith(b"HTTP/1.1 200")
        req = urllib.request.Request(f"http://127.0.0.1:{mport}/metrics", method="DELETE")
        try:
            urllib.request.urlopen(req, timeout=10)
            raise AssertionError("DELETE /metrics was answered 200")
        except HTTPError as err:
            assert err.code == 405
        deadline = time.monotonic() + 60
        while True:  # the driver ticks the counts in within a second or two
            got = scrape(mport)
            dead = sum(v for k, v in got.items() if k[0] == "edgecore_dead_letters_total")
            cps = got.get(("edgecore_checkpoints_total", (("app", "fraud"),)), 0)
            applied = got.get((f"{LAT}_count", (("app", "fraud"), ("stage", "applied"))), 0)
            if (
                events(got, "input") == posted["input"]
                and dead == 30
                and cps >= 1
                and applied == posted["accepted"]  # each accepted row applied once
            ):
                break  # dead letters by reason arrive with a checkpoint (every 2 s here)
            assert time.monotonic() < deadline, (got, posted)
            time.sleep(0.5)
        assert events(got, "accepted") == posted["accepted"]
        assert events(got, "dead_lettered") == posted["dead_lettered"]
        assert events(got, "duplicate") == posted["duplicates"]
        assert events(got, "filtered") == posted["filtered"]
        assert events(got, "accepted") + events(got, "dead_lettered") + events(
            got, "duplicate"
        ) + events(got, "filtered") == events(got, "input")
        fields = {
            dict(k[1])["field"]: v for k, v in got.items() if k[0] == "edgecore_dead_letters_total"
        }
        assert fields == {"customer_id": 20, "amount": 10}
        assert any(k[0] == "edgecore_entities_active" for k in got)
        # ingest -> applied latency: every row in some bucket, none negative, and the
        # bucket counts cumulative up to the count
        lat = {k: v for k, v in got.items() if k[0].startswith(LAT)}
        applied_labels = (("app", "fraud"), ("stage", "applied"))
        buckets = sorted(
            (float(dict(k[1])["le"]), v)
            for k, v in lat.items()
            if k[0] == f"{LAT}_bucket" and dict(k[1])["stage"] == "applied"
        )
        assert buckets[-1] == (float("inf"), posted["accepted"])
        assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:], strict=False))
        assert 0 < lat[(f"{LAT}_sum", applied_labels)] < 60 * posted["accepted"]
        serve.signal(signal.SIGTERM)
        assert serve.wait(timeout=60) == 0, serve.stderr[-3000:]
    finally:
        serve.stop()
    assert "metrics on http://127.0.0.1:" in serve.stderr


def test_metrics_off_loopback_without_a_token_is_refused_before_ray_starts(tmp_path):
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "serve", "--data", str(tmp_path / "d")]
        + ["--metrics", "0.0.0.0:9464"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "--token" in done.stderr and "Traceback" not in done.stderr
    assert time.monotonic() - t0 < 30
