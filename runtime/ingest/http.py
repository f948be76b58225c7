"""HTTP ingest: POST events, get back what happened to them once they are durable.

Served by aiohttp (already in the process through Ray's own dashboard dependency; a C
HTTP parser, asyncio so that idle and slow connections cost no thread) inside a live
ingest actor, on the node where the traffic arrives (:mod:`runtime.ingest.live`).

``POST /v1/events`` takes NDJSON (``application/x-ndjson``), a JSON array or object
(``application/json``) or an Arrow IPC stream (``application/vnd.apache.arrow.stream``,
for high-rate producers). The answer comes after the events are in the write-ahead log:
``200 {"input", "accepted", "dead_lettered", "duplicates", "filtered"}`` (plus the most
common ``reasons`` when rows were refused). Malformed input is a 4xx, never a 5xx:

====  ==========================================================================
400   the body is not what its content type says (not JSON, not Arrow, empty)
401   a bearer token is configured and the request lacks it (compared in constant time)
408   the body did not arrive within ``body_timeout_s``
413   the body is over ``max_body`` bytes (refused before it is read when declared)
415   a content type other than the three above
429   ingest is backpressured: ``Retry-After`` says when to try again
503   ingest is stopping (or restarting after a failure): ``Retry-After`` as well
====  ==========================================================================

``GET /healthz`` answers ``{"status": "ok"}`` to anyone; with the token (or when none is
configured) it adds the counts. Connections idle for ``keepalive_s`` are closed, and so
are ones that do not complete a request's headers within that time (aiohttp's keep-alive
timer is not reset by partial data), so slow or idle clients cannot pin the server.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import hmac
import ipaddress
import json
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runtime.errors import ConfigError, EdgecoreError
from runtime.ingest.decode import BadInput, decode_arrow, decode_json_records, json_schema
from runtime.ingest.gate import Backpressure, Closed, Gate
from runtime.ingest.queries import BadQuery, QueryBatcher
from runtime.observe.raymirror import RayCounters

MAX_BODY = 8 * 2**20
ARROW = "application/vnd.apache.arrow.stream"
RETRY = {"Retry-After": "1"}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class HttpOptions:
    """Where and how the HTTP front end listens."""

    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    max_body: int = MAX_BODY
    tls_cert: str | None = None
    tls_key: str | None = None
    keepalive_s: float = 15.0
    body_timeout_s: float = 30.0
    backlog: int = 1024
    #: how long a request may wait for room in the gate before a 429
    wait_s: float = 0.05

    def check(self) -> None:
        """Refuse unsafe or impossible settings before anything starts."""
        if not is_loopback(self.host) and not self.token:
            raise ConfigError(
                f"binding HTTP ingest to {self.host} exposes it beyond this machine: give a "
                "bearer token (--token or the EDGECORE_TOKEN environment variable)"
            )
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("TLS needs both --tls-cert and --tls-key")
        if not 0 <= self.port <= 65_535:
            raise ConfigError(f"HTTP port must be 0..65535, not {self.port}")
        if self.tls_cert:
            self.ssl_context()  # a clear error now for a missing or mismatched file

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls_cert:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(
                f"cannot load the TLS certificate {self.tls_cert} and key {self.tls_key}: {err}"
            ) from err
        return ctx


class HttpListener:
    """The HTTP front end of one gate, on its own event loop thread."""

    def __init__(self, gate: Gate, options: HttpOptions) -> None:
        options.check()
        self.gate, self.options = gate, options
        self.port: int | None = None
        self.closing = False
        feedback = gate.app.kind.feedback
        self._schemas = {
            False: json_schema(gate.app.schema.arrow_schema),
            True: json_schema(feedback.arrow_schema) if feedback is not None else None,
        }
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: Any = None
        self._thread: threading.Thread | None = None
        self._token = options.token.encode() if options.token else None
        self._commit_scheduled = False
        self._codes = RayCounters(
            "edgecore_http_requests_total",
            "HTTP ingest requests by status code.",
            ("app", "site", "code"),
        )

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> int:
        """Bind and serve in a thread; returns the bound port (for port 0: the one chosen)."""
        ready: list[Any] = []
        started = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                ready.append(loop.run_until_complete(self._serve()))
            except BaseException as err:  # bind errors reach the caller
                ready.append(err)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        deadline = time.monotonic() + 10
        while True:
            self._thread = threading.Thread(target=main, name="http-ingest", daemon=True)
            self._thread.start()
            started.wait(30)
            # the ingest actor this one replaces after a restart may still hold the port
            in_use = ready and isinstance(ready[0], OSError) and ready[0].errno == errno.EADDRINUSE
            if not in_use or time.monotonic() > deadline:
                break
            ready.clear()
            started.clear()
            time.sleep(0.2)
        if not ready or isinstance(ready[0], BaseException):
            err = ready[0] if ready else TimeoutError("the HTTP server did not start")
            raise ConfigError(
                f"cannot serve HTTP on {self.options.host}:{self.options.port}: {err}"
            ) from None
        self.port = int(ready[0])
        return self.port

    async def _serve(self) -> int:
        import logging

        from aiohttp import web

        # a malformed request line or header is answered 400 by aiohttp, which also logs
        # it with a traceback: a client's mistake, not the server's
        logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)

        @web.middleware
        async def count(request: Any, handler: Any) -> Any:
            return await self._count_request(request, handler)

        app = web.Application(middlewares=[count])
        app.router.add_post("/v1/events", self._events)
        app.router.add_post("/v1/labels", self._labels)
        app.router.add_get("/healthz", self._health)
        for name, query in self.gate.app.queries.items():
            batcher = QueryBatcher(query, self.gate.router.shards)
            app.router.add_get(f"/v1/{name}", functools.partial(self._query, batcher))
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            keepalive_timeout=self.options.keepalive_s,
            shutdown_timeout=2.0,
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            self.options.host,
            self.options.port,
            ssl_context=self.options.ssl_context(),
            backlog=self.options.backlog,
            reuse_address=True,
        )
        await site.start()
        return int(self._runner.addresses[0][1])

    def stop_intake(self) -> None:
        """New requests get 503 with Retry-After; requests already taken are answered."""
        self.closing = True

    def close(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    # -- requests --------------------------------------------------------------------------
    async def _count_request(self, request: Any, handler: Any) -> Any:
        """Requests by status code, to Ray's metrics (added up, handed over once a second)."""
        tags = {"app": self.gate.app.name, "site": self.gate.site or "-"}
        try:
            resp = await handler(request)
        except Exception as err:  # aiohttp raises its 404/405: the status is on the exception
            self._codes.add(1, code=getattr(err, "status", 500), **tags)
            raise
        self._codes.add(1, code=resp.status, **tags)
        return resp

    def _authorized(self, request: Any) -> bool:
        if self._token is None:
            return True
        given = request.headers.get("Authorization", "").encode()
        return hmac.compare_digest(given, b"Bearer " + self._token)

    async def _health(self, request: Any) -> Any:
        body: dict[str, Any] = {"status": "stopping" if self.closing else "ok"}
        if self._authorized(request):
            body.update(app=self.gate.app.name, **self.gate.totals)
        return _reply(200, body)

    async def _query(self, batcher: QueryBatcher, request: Any) -> Any:
        """An app's query: the entity's handler answers, batched with its neighbours."""
        if not self._authorized(request):
            return _reply(
                401, {"error": "missing or wrong bearer token"}, {"WWW-Authenticate": "Bearer"}
            )
        try:
            key, kwargs = batcher.query.parse(request.query)
            result = await batcher.ask(key, kwargs)
        except (BadQuery, ConfigError) as err:  # the caller's mistake, named
            return _reply(400, {"error": str(err)})
        except EdgecoreError as err:
            return _reply(503, {"error": str(err)}, RETRY)
        body = result if isinstance(result, dict) else {"result": result}
        return _reply(200, {batcher.query.key: key, **body})

    async def _events(self, request: Any) -> Any:
        return await self._ingest(request, feedback=False)

    async def _labels(self, request: Any) -> Any:
        """Labels of events scored before (or still to come): logged like events, then
        joined to what the kind logged when it scored them."""
        if self.gate.app.kind.feedback is None:
            return _reply(404, {"error": f"app {self.gate.app.name!r} takes no labels"})
        return await self._ingest(request, feedback=True)

    async def _ingest(self, request: Any, feedback: bool) -> Any:
        if not self._authorized(request):
            return _reply(
                401, {"error": "missing or wrong bearer token"}, {"WWW-Authenticate": "Bearer"}
            )
        if self.closing:
            return _reply(503, {"error": "ingest is stopping; retry shortly"}, RETRY, close=True)
        ctype = request.content_type
        decoder = self._decoder(ctype, feedback)
        if decoder is None:
            return _reply(
                415,
                {
                    "error": f"unsupported content type {ctype!r}: send application/x-ndjson, "
                    f"application/json or {ARROW}"
                },
            )
        limit = self.options.max_body
        declared = request.content_length
        if declared is not None and declared > limit:
            return _reply(
                413, {"error": f"body of {declared} bytes is over the limit of {limit}"}, close=True
            )
        from aiohttp.web import RequestPayloadError

        try:
            body = await asyncio.wait_for(_read(request, limit), self.options.body_timeout_s)
        except _TooLarge:
            return _reply(413, {"error": f"body is over the limit of {limit} bytes"}, close=True)
        except TimeoutError:
            return _reply(
                408,
                {"error": f"body not received within {self.options.body_timeout_s:g} s"},
                close=True,
            )
        except RequestPayloadError as err:  # e.g. Content-Encoding: gzip on bytes that are not
            return _reply(400, {"error": f"body cannot be read: {err}"}, close=True)
        except ConnectionError:  # the client went away mid-body: nobody reads an answer
            return _reply(400, {"error": "connection lost before the body ended"}, close=True)
        try:
            table = decoder(body)
        except BadInput as err:
            return _reply(400, {"error": str(err)})
        deadline = asyncio.get_running_loop().time() + self.options.wait_s
        try:
            prepared = self.gate.prepare(table, "http", feedback=feedback)
            while True:
                try:
                    future = self.gate.enqueue(prepared)
                    self._commit_soon()
                    break
                except Backpressure as err:
                    if asyncio.get_running_loop().time() >= deadline:
                        return _reply(
                            429, {"error": f"{err}; retry later", "retry_after_s": 1}, RETRY
                        )
                    await asyncio.sleep(0.002)
            counts = await asyncio.wrap_future(future)
        except Closed as err:
            return _reply(503, {"error": str(err)}, RETRY)
        return _reply(200, counts)

    def _commit_soon(self) -> None:
        """Commit once the requests ready now have queued theirs: one flush for all of
        them, done in this thread (a hand-off to another costs milliseconds under the GIL)."""
        if not self._commit_scheduled:
            self._commit_scheduled = True
            asyncio.get_running_loop().call_soon(self._commit)

    def _commit(self) -> None:
        self._commit_scheduled = False
        self.gate.commit()

    def _decoder(self, ctype: str, feedback: bool = False) -> Callable[[bytes], Any] | None:
        if ctype in (
            "application/x-ndjson",
            "application/ndjson",
            "application/jsonl",
            "application/x-jsonlines",
        ):
            schema = self._schemas[feedback]
            return lambda body: decode_json_records(body, ndjson=True, schema=schema)
        if ctype in ("application/json", "", "application/octet-stream") or ctype.endswith("+json"):
            return lambda body: decode_json_records(body, ndjson=False)
        if ctype == ARROW:
            return decode_arrow
        return None


class _TooLarge(Exception):
    pass


async def _read(request: Any, limit: int) -> bytes:
    """The body, refused as soon as it grows over ``limit`` (whatever it declared)."""
    parts, size = [], 0
    while True:
        chunk = await request.content.readany()
        if not chunk:
            return b"".join(parts)
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        parts.append(chunk)


def _reply(
    status: int, payload: dict[str, Any], headers: dict[str, str] | None = None, close: bool = False
) -> Any:
    from aiohttp import web

    resp = web.Response(
        status=status,
        body=json.dumps(payload).encode(),
        content_type="application/json",
        headers=headers,
    )
    if close:  # the rest of an unread body is not worth reading
        resp.force_close()
    return resp
