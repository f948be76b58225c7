"""HTTP ingest: POST events as NDJSON or a JSON array, get back what happened to them.

``POST /v1/events`` answers ``{"accepted", "dead_lettered", "duplicates", "input"}``;
bad rows become dead letters with reasons (never a silent drop), a body that is not
JSON at all is a 400 with the reason. ``GET /healthz`` answers once the runtime is
ready. Bound to 127.0.0.1 by default; any other bind address requires a bearer
token. Bodies above ``max_body`` bytes get a 413, and while the shards are saturated
requests get a 429 with ``Retry-After`` instead of queuing without bound.
"""

from __future__ import annotations

import hmac
import io
import ipaddress
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pyarrow as pa
import pyarrow.json as pajson

from runtime.core import Runtime
from runtime.errors import ConfigError
from runtime.pipeline import App, ingest_many, new_counts, setup
from runtime.schema import MALFORMED
from runtime.sources import rows_to_table

MAX_BODY = 8 * 2**20


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class IngestServer:
    """Serve ``app`` over HTTP on ``host:port`` (port 0: any free port, see ``.port``)."""

    def __init__(
        self,
        rt: Runtime,
        app: App,
        host: str = "127.0.0.1",
        port: int = 8080,
        token: str | None = None,
        max_body: int = MAX_BODY,
    ) -> None:
        if not is_loopback(host) and not token:
            raise ConfigError(
                f"binding HTTP ingest to {host} exposes it beyond this machine: pass a bearer token (--token)"
            )
        self.rt, self.app, self.token, self.max_body = rt, app, token, max_body
        self.wait_s = 0.05  # how long a request may wait for a free shard before a 429
        self.lock = threading.Lock()  # the runtime is driven from one thread at a time
        self._queue_lock = threading.Lock()
        self._queue: list[_Waiting] = []
        self.source_id = f"http:{host}:{port}:{int(time.time())}"
        self.received = 0
        self.totals = new_counts()
        self._json_schema = _parse_schema(app.schema.arrow_schema)
        setup(rt, app)
        self.server = ThreadingHTTPServer((host, port), _handler(self))
        self.port = self.server.server_address[1]
        self._thread: threading.Thread | None = None

    def start(self) -> IngestServer:
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def checkpoint(self) -> None:
        with self.lock:
            self.rt.drain_inflight()
            self.rt.checkpoint()

    def handle_events(self, body: bytes, content_type: str) -> tuple[int, dict[str, Any]]:
        table = _fast_ndjson(body, content_type, self._json_schema)
        if table is None:
            rows, error = _parse(body, content_type)
            if error:
                return 400, {"error": error}
            table = rows_to_table(rows)
        # Flat combining: a request queues its rows, then whoever holds the runtime takes
        # every queued request at once, so concurrent requests share one call per shard.
        mine = _Waiting(table)
        with self._queue_lock:
            self._queue.append(mine)
        deadline = time.monotonic() + self.wait_s
        with self.lock:
            if mine.status is None:
                with self._queue_lock:
                    group, self._queue = self._queue, []
                try:
                    self._ingest(group, deadline)
                except Exception as err:  # the runtime failed: every request taken hears it
                    for w in group:
                        if w.status is None:
                            w.status, w.payload = 503, {"error": f"runtime unavailable: {err}"}
        assert mine.status is not None
        return mine.status, mine.payload

    def _ingest(self, group: list[_Waiting], deadline: float) -> None:
        router = self.rt.kinds[self.app.kind.name].router
        while router.saturated():  # wait a little for the shards before refusing
            self.rt.poll()
            if not router.saturated():
                break
            if time.monotonic() > deadline:
                for w in group:
                    w.status = 429
                    w.payload = {
                        "error": "ingest is backpressured; retry later",
                        "retry_after_s": 1,
                    }
                return
            time.sleep(0.001)
        batches = []
        for w in group:
            batches.append((w.table, self.source_id, self.received))
            self.received += w.table.num_rows
        for w, counts in zip(group, ingest_many(self.rt, self.app, batches), strict=True):
            w.status, w.payload = 200, counts
            for k, v in counts.items():
                self.totals[k] += v
        self.rt.poll()


class _Waiting:
    """A request's rows waiting for the runtime, and then its answer."""

    __slots__ = ("payload", "status", "table")

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self.status: int | None = None
        self.payload: dict[str, Any] = {}


_ONE_THREAD = pajson.ReadOptions(use_threads=False)  # a request is small: threads cost more


def _fast_ndjson(
    body: bytes, content_type: str, schema: pa.Schema | None = None
) -> pa.Table | None:
    """Well-formed NDJSON parsed by Arrow in one pass, with the app's types when every value
    fits them (no type inference: a quarter faster), else with inferred types; None to fall
    back to line by line (broken lines), which turns each bad line into a dead letter."""
    if not ("ndjson" in content_type or "jsonl" in content_type):
        return None
    typed = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="infer")
    for parse in (typed, None) if schema is not None else (None,):
        try:
            return pajson.read_json(io.BytesIO(body), read_options=_ONE_THREAD, parse_options=parse)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            continue
    return None


def _parse_schema(schema: pa.Schema) -> pa.Schema:
    """The app's types as Arrow's JSON reader can take them (timestamps to the microsecond;
    validation then brings them to milliseconds)."""
    return pa.schema(
        [
            pa.field(f.name, pa.timestamp("us") if pa.types.is_timestamp(f.type) else f.type)
            for f in schema
        ]
    )


def _parse(body: bytes, content_type: str) -> tuple[list[dict[str, Any]], str | None]:
    """NDJSON (one event per line; a broken line becomes a malformed record) or a JSON array."""
    text = body.decode("utf-8", errors="replace")
    if "ndjson" in content_type or "jsonl" in content_type:
        rows = []
        for line in text.splitlines():
            if line.strip():
                try:
                    obj = json.loads(line)
                    rows.append(obj if isinstance(obj, dict) else {MALFORMED: line[:4096]})
                except json.JSONDecodeError:
                    rows.append({MALFORMED: line[:4096]})
        return (rows, None) if rows else ([], "empty body: send NDJSON lines or a JSON array")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        return (
            [],
            f"body is not JSON ({err.msg} at {err.pos}); send a JSON array or NDJSON (application/x-ndjson)",
        )
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not data:
        return [], "expected a non-empty JSON array of event objects"
    return [r if isinstance(r, dict) else {MALFORMED: json.dumps(r)[:4096]} for r in data], None


def _handler(server: IngestServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # one segment per response, sent at once: with headers and body written apart,
        # Nagle and delayed ACKs add ~40 ms to every request
        disable_nagle_algorithm = True
        wbufsize = 64 * 1024
        protocol_version = "HTTP/1.1"  # keep-alive: clients reuse the connection

        def log_message(self, *args: Any) -> None:  # quiet: counts go to the summary instead
            pass

        def _reply(
            self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
        ) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path == "/healthz":
                self._reply(200, {"status": "ok", "app": server.app.name, **server.totals})
            else:
                self._reply(
                    404, {"error": f"no route {self.path}; use POST /v1/events or GET /healthz"}
                )

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/v1/events":
                self._reply(404, {"error": f"no route {self.path}; use POST /v1/events"})
                return
            if server.token:
                given = self.headers.get("Authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {server.token}".encode()):
                    self._reply(
                        401,
                        {"error": "missing or wrong bearer token"},
                        {"WWW-Authenticate": "Bearer"},
                    )
                    return
            length = self.headers.get("Content-Length")
            if length is None:
                self._reply(411, {"error": "Content-Length is required"})
                return
            if int(length) > server.max_body:
                self._reply(
                    413, {"error": f"body of {length} bytes is over the limit of {server.max_body}"}
                )
                return
            body = self.rfile.read(int(length))
            try:
                status, payload = server.handle_events(body, self.headers.get("Content-Type", ""))
            except Exception as err:  # the runtime failed: say so, keep serving
                status, payload = 503, {"error": f"runtime unavailable: {err}"}
            headers = {"Retry-After": "1"} if status == 429 else None
            self._reply(status, payload, headers)

    return Handler
