"""HTTP ingest with a real HTTP client against the real server (in-process runtime)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from urllib.error import HTTPError

import pyarrow.parquet as pq
import pytest
from conftest import make_transactions, sql_profiles

from actors.fraud import fraud_app
from runtime import ConfigError, Runtime
from runtime.http import IngestServer
from runtime.store import Store


def post(
    port: int,
    body: bytes,
    ctype: str = "application/x-ndjson",
    token: str | None = None,
    host: str = "127.0.0.1",
):
    req = urllib.request.Request(f"http://{host}:{port}/v1/events", data=body, method="POST")
    req.add_header("Content-Type", ctype)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except HTTPError as err:
        return err.code, json.loads(err.read())


def ndjson(rows: list[dict]) -> bytes:
    return "\n".join(json.dumps(r, default=str) for r in rows).encode()


@pytest.fixture
def events(tmp_path):
    table = pq.read_table(make_transactions(tmp_path / "t.parquet", 3_000, 100))
    rows = table.to_pylist()
    for r in rows:
        r["ts"] = r["ts"].isoformat()
    return table, rows


def test_events_in_counts_out_and_profiles_right(tmp_path, events):
    table, rows = events
    with Runtime(data_dir=str(tmp_path / "d"), mode="local", shards=2) as rt:
        server = IngestServer(rt, fraud_app, port=0).start()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=10) as r:
                assert r.status == 200
            assert post(server.port, ndjson(rows[:2_000]))[1] == {
                "input": 2_000,
                "accepted": 2_000,
                "dead_lettered": 0,
                "duplicates": 0,
                "filtered": 0,
            }
            # the rest as a JSON array, with redeliveries, bad rows and a broken line
            bad = [
                {**rows[0], "event_id": 99_999_999, "amount": "lots"},
                {**rows[1], "event_id": 99_999_998, "ts": "soon"},
            ]
            status, counts = post(
                server.port, json.dumps(rows[2_000:] + rows[:5] + bad).encode(), "application/json"
            )
            assert status == 200
            assert counts == {
                "input": 1_007,
                "accepted": 1_000,
                "dead_lettered": 2,
                "duplicates": 5,
                "filtered": 0,
            }
            status, counts = post(server.port, b'{"event_id": 1}\n{broken')
            assert status == 200 and counts["dead_lettered"] == 2
            assert post(server.port, b"not json", "application/json")[0] == 400
            assert post(server.port, b"[]", "application/json")[0] == 400
            server.max_body = 100
            assert post(server.port, ndjson(rows[:10]))[0] == 413
        finally:
            server.stop()
    store = Store(tmp_path / "d")
    got = {r["customer_id"]: r["txn_count"] for r in store.read("customers").to_pylist()}
    assert got == {k: v["txn_count"] for k, v in sql_profiles(table).items()}
    reasons = store.read("dead_letters").column("reason").to_pylist()
    assert any("amount" in r for r in reasons) and any("malformed" in r for r in reasons)


def test_non_loopback_bind_needs_a_token_and_checks_it(tmp_path, events):
    _, rows = events
    with Runtime(data_dir=str(tmp_path), mode="local", shards=1) as rt:
        with pytest.raises(ConfigError, match="token"):
            IngestServer(rt, fraud_app, host="0.0.0.0", port=0)
        server = IngestServer(rt, fraud_app, host="0.0.0.0", port=0, token="s3cret").start()
        try:
            assert post(server.port, ndjson(rows[:3]))[0] == 401
            assert post(server.port, ndjson(rows[:3]), token="wrong")[0] == 401
            assert post(server.port, ndjson(rows[:3]), token="s3cret") == (
                200,
                {"input": 3, "accepted": 3, "dead_lettered": 0, "duplicates": 0, "filtered": 0},
            )
        finally:
            server.stop()


def test_serve_runs_until_sigterm_and_commits(tmp_path, events):
    table, rows = events
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tmp_path / "d"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runtime.cli",
            "serve",
            "--http",
            f"127.0.0.1:{port}",
            "--data",
            str(data),
            "--local",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(200):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        assert post(port, ndjson(rows))[1]["accepted"] == 3_000
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
    got = {r["customer_id"]: r["txn_count"] for r in Store(data).read("customers").to_pylist()}
    assert sum(got.values()) == 3_000 and Store(data).last_checkpoint().epoch >= 1
    assert os.path.isdir(data)
