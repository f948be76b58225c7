"""ParquetSink (Hive partitions) and WebhookSink (retries, then failed rows stored) against real files and a real HTTP server."""

from __future__ import annotations

import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import duckdb
import pyarrow as pa

from runtime.state.store import Store
from runtime.streams.sinks import ParquetSink, WebhookSink


def test_parquet_sink_writes_hive_partitions_duckdb_reads(tmp_path):
    sink = ParquetSink(str(tmp_path / "alerts"), flush_rows=3)
    days = [dt.datetime(2026, 1, d, 12) for d in (1, 1, 2, 3)]
    sink.on_batch(pa.table({"ts": days, "event_id": [1, 2, 3, 4], "_offset": [0, 1, 2, 3]}))
    sink.on_batch(pa.table({"ts": [dt.datetime(2026, 1, 3, 1)], "event_id": [5], "_offset": [4]}))
    assert sink.flush() == 5
    parts = sorted(p.name for p in (tmp_path / "alerts").iterdir())
    assert parts == ["date=2026-01-01", "date=2026-01-02", "date=2026-01-03"]
    rows = duckdb.sql(
        f"SELECT date, count(*) AS n FROM read_parquet('{tmp_path}/alerts/**/*.parquet', hive_partitioning=true) GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert [(str(d), n) for d, n in rows] == [
        ("2026-01-01", 2),
        ("2026-01-02", 1),
        ("2026-01-03", 2),
    ]


class _Flaky(BaseHTTPRequestHandler):
    fail_first = 2
    calls = 0
    received: list = []

    def log_message(self, *a):
        pass

    def do_POST(self):  # noqa: N802
        type(self).calls += 1
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if type(self).calls <= type(self).fail_first:
            self.send_response(503)
            self.end_headers()
            return
        type(self).received.extend(json.loads(body))
        self.send_response(204)
        self.end_headers()


def test_webhook_retries_then_delivers_or_stores_failures(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        sink = WebhookSink(url, str(tmp_path), retries=3, backoff_s=0.01)
        sink.on_batch(pa.table({"event_id": [1, 2]}))  # 2 failures, then delivered
        assert sink.flush() == {"delivered": 2, "failed": 0}
        assert [r["event_id"] for r in _Flaky.received] == [1, 2]
        _Flaky.calls, _Flaky.fail_first = 0, 100  # down for good
        sink.on_batch(pa.table({"event_id": [3]}))
        assert sink.flush() == {"delivered": 2, "failed": 1}
        failed = Store(tmp_path).read("webhook_failed").to_pylist()
        assert "HTTP" in failed[0]["reason"] or "503" in failed[0]["reason"]
        assert json.loads(failed[0]["payload"])["event_id"] == 3
    finally:
        server.shutdown()
    refused = WebhookSink(
        "http://127.0.0.1:9/nothing", str(tmp_path), name="gone", retries=1, backoff_s=0.01
    )
    refused.on_batch(pa.table({"event_id": [9]}))
    assert refused.flush()["failed"] == 1
    assert Store(tmp_path).read("gone_failed").num_rows == 1
