"""``edgecore serve`` as users run it: a subprocess on the embedded Ray, stopped by signals
to it or to its whole process group, and killed with SIGKILL right after acknowledgements."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import assert_profiles_match, make_transactions, sql_profiles
from live_helpers import Serve, free_port, get, ndjson, post

from runtime.state.store import Store


@pytest.fixture
def rows(tmp_path):
    table = pq.read_table(make_transactions(tmp_path / "t.parquet", 4_000, 150))
    out = table.to_pylist()
    for r in out:
        r["ts"] = r["ts"].isoformat()
    return table, out


def acked_table(table: pa.Table, rows: list[dict], n: int) -> pa.Table:
    """The rows of the first ``n`` events as the reference sees them."""
    return table.slice(0, n)


@pytest.mark.parametrize("group", [False, True], ids=["process", "process-group"])
def test_sigterm_stops_intake_commits_and_exits_0(tmp_path, rows, group):
    table, events = rows
    data = tmp_path / "d"
    serve = Serve(data)
    try:
        port = serve.wait_http()
        for i in range(0, 2_000, 500):
            assert post(port, ndjson(events[i : i + 500]))[1]["accepted"] == 500
        t0 = time.monotonic()
        serve.signal(signal.SIGTERM, group=group)
        rc = serve.wait(timeout=30)
        took = time.monotonic() - t0
    finally:
        serve.stop()
    assert rc == 0, serve.stderr[-3000:]
    assert took < 10, f"stopping took {took:.1f} s"
    assert "stopped after 2,000 events" in serve.stderr
    assert_profiles_match(data, sql_profiles(table.slice(0, 2_000)))


def test_kill_9_right_after_200s_loses_nothing_and_applies_once(tmp_path, rows):
    """Every process of the service is SIGKILLed the moment the last 200 arrives (no
    checkpoint has covered most of it); the next start replays the write-ahead log.
    Clients that retry acknowledged batches get them counted as duplicates."""
    table, events = rows
    data = tmp_path / "d"
    first = Serve(data, "--checkpoint-seconds", "3600")
    try:
        port = first.wait_http()
        for i in range(0, 3_000, 250):
            assert post(port, ndjson(events[i : i + 250]))[1]["accepted"] == 250
    finally:
        first.kill_everything()
    second = Serve(data)
    try:
        port = second.wait_http()
        assert "replayed" in second.stderr
        # a client that never saw its answers sends the last batches again
        status, counts = post(port, ndjson(events[2_500:3_500]))
        assert status == 200 and counts["duplicates"] == 500 and counts["accepted"] == 500
        second.signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0, second.stderr[-3000:]
    finally:
        second.stop()
    assert_profiles_match(data, sql_profiles(table.slice(0, 3_500)))
    # the log segments the last commit covered are gone
    segments = list((data / "_wal").rglob("*.wal"))
    assert len(segments) == 1


def test_a_second_signal_exits_at_once_and_the_log_covers_it(tmp_path, rows):
    table, events = rows
    data = tmp_path / "d"
    serve = Serve(data, "--checkpoint-seconds", "3600")
    try:
        port = serve.wait_http()
        assert post(port, ndjson(events[:1_000]))[1]["accepted"] == 1_000
        serve.signal(signal.SIGTERM)
        time.sleep(0.3)  # (two signals at once are one: the kernel keeps one pending)
        serve.signal(signal.SIGTERM)
        rc = serve.wait(timeout=30)
    finally:
        serve.kill_everything()  # what the second signal left behind, if anything
    assert rc != 0
    again = Serve(data)
    try:
        again.wait_http()
        again.signal(signal.SIGINT)
        assert again.wait(timeout=30) == 0, again.stderr[-3000:]
    finally:
        again.stop()
    assert_profiles_match(data, sql_profiles(table.slice(0, 1_000)))


def test_token_from_the_environment_and_refusals_before_ray_starts(tmp_path, rows):
    _, events = rows
    port = free_port()
    t0 = time.monotonic()
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime.cli",
            "serve",
            "--http",
            f"0.0.0.0:{port}",
            "--data",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "EDGECORE_TOKEN": ""},
        timeout=60,
    )
    assert refused.returncode == 1 and "token" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert time.monotonic() - t0 < 10  # refused before Ray started
    serve = Serve(tmp_path / "d", "--http", f"0.0.0.0:{port}", env={"EDGECORE_TOKEN": "s3cret"})
    try:
        serve.wait_http()
        assert post(port, ndjson(events[:10]))[0] == 401
        assert post(port, ndjson(events[:10]), token="s3cret")[1]["accepted"] == 10
        assert get(port) == (200, {"status": "ok"})
        serve.signal(signal.SIGTERM)
        assert serve.wait(timeout=30) == 0
    finally:
        serve.stop()
    assert "s3cret" not in " ".join(serve.proc.args)


def test_https_with_a_certificate(tmp_path, rows):
    import shutil
    import ssl
    import urllib.request

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    _, events = rows
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    serve = Serve(tmp_path / "d", "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        m = serve.wait_for(r"on https://[^:]+:(\d+)/v1/events")
        port = int(m.group(1))
        ctx = ssl.create_default_context(cafile=str(cert))
        req = urllib.request.Request(
            f"https://127.0.0.1:{port}/v1/events",
            data=ndjson(events[:20]),
            headers={"Content-Type": "application/x-ndjson"},
            method="POST",
        )
        with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
            assert resp.status == 200
        with pytest.raises(OSError):  # plain HTTP to the TLS port gets nowhere
            post(port, ndjson(events[:1]), timeout=5)
        serve.signal(signal.SIGTERM)
        assert serve.wait(timeout=30) == 0
    finally:
        serve.stop()
    assert Store(tmp_path / "d").read("customers").num_rows > 0


def test_tail_follows_alerts_that_live_in_the_shards(tmp_path, rows):
    """The alerts topic is hosted by the customer shards (a partition each); `edgecore tail`
    attaching from another process finds it there."""
    import json

    _, events = rows
    serve = Serve(tmp_path / "d")
    try:
        port = serve.wait_http()
        assert post(port, ndjson(events))[1]["accepted"] == len(events)
        time.sleep(1.5)  # the status board lists the hosted topics at least once a second
        tail = subprocess.run(
            [
                sys.executable,
                "-m",
                "runtime.cli",
                "tail",
                "alerts",
                "--from-beginning",
                "--limit",
                "2",
                "--idle-timeout",
                "10",
                "--json",
                "--address",
                "auto",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        serve.signal(signal.SIGTERM)
        assert serve.wait(timeout=30) == 0
    finally:
        serve.stop()
    assert tail.returncode == 0, tail.stderr[-2000:]
    got = [json.loads(line) for line in tail.stdout.splitlines()]
    assert len(got) == 2 and all("_partition" in r and "detected_at" in r for r in got)
