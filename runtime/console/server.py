"""The console's HTTP server: one page, its static files, a JSON API and a live stream.

aiohttp on an event loop thread of its own (as :mod:`runtime.ingest.http`), beside
whatever else the process does (``edgecore serve`` drives the app in its main thread).

======================  =============================================================
``GET /``               the page (``?token=`` once off loopback: sets a cookie, redirects)
``GET /static/...``     its script and style sheet, shipped in the package
``GET /api/status``     the latest frame: state, events/s, totals, latency, placement...
``GET /api/stream``     server-sent events: ``hello`` (history and feed), then a
                        ``status`` frame every second and ``feed`` rows as they arrive
``GET /api/entity``     ``?kind=&key=``: one live profile
``POST /api/sql``       ``{"sql": "..."}`` (application/json): columns and rows
======================  =============================================================

Off loopback a token is required (``--token`` or ``EDGECORE_TOKEN``): API clients send
``Authorization: Bearer``; a browser opens ``/?token=...`` once and gets an HttpOnly,
SameSite=Strict cookie. On loopback without a token the Host header must name this
machine (a page elsewhere cannot reach the console by rebinding its DNS name to
127.0.0.1). Every page is served with a Content-Security-Policy of ``'self'`` only.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from runtime.console.data import ConsoleData
from runtime.errors import ConfigError, EdgecoreError, UnknownEntityError
from runtime.ingest.http import is_loopback
from runtime.ingest.threaded import ThreadedServer, start_site

COOKIE = "edgecore_console"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
STATIC_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
MAX_STREAMS = 32  # open consoles at once: each costs a connection and a coroutine
MAX_BODY = 64 * 1024
SQL_TIMEOUT_S = 60.0


def static_files() -> dict[str, bytes]:
    """The page's files, read from the installed package (not the source tree)."""
    root = resources.files("runtime.console") / "static"
    return {p.name: p.read_bytes() for p in root.iterdir() if Path(p.name).suffix in STATIC_TYPES}


@dataclass(frozen=True)
class ConsoleOptions:
    host: str = "127.0.0.1"
    port: int = 8090
    token: str | None = None

    def check(self) -> None:
        if not is_loopback(self.host) and not self.token:
            raise ConfigError(
                f"serving the console on {self.host} exposes it beyond this machine: give a "
                "token (--token or the EDGECORE_TOKEN environment variable)"
            )
        if not 0 <= self.port <= 65_535:
            raise ConfigError(f"console port must be 0..65535, not {self.port}")

    @classmethod
    def parse(cls, text: str, token: str | None, option: str = "--console") -> ConsoleOptions:
        host, _, port = text.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"{option} must be HOST:PORT (e.g. 127.0.0.1:8090), not {text!r}")
        opts = cls(host.strip("[]"), int(port), token or None)
        opts.check()
        return opts


class ConsoleServer:
    """Serves ``data`` to browsers; ``start()`` returns the bound port."""

    def __init__(self, data: ConsoleData, options: ConsoleOptions) -> None:
        options.check()
        self.data, self.options = data, options
        self.files = static_files()
        self.port: int | None = None
        self._token = options.token.encode() if options.token else None
        # the cookie carries a value derived from the token, never the token itself
        self._session = (
            hmac.new(self._token, b"edgecore-console-session", hashlib.sha256).hexdigest()
            if self._token
            else None
        )
        self._server = ThreadedServer("console")
        self._streams = 0
        self._sql_busy: asyncio.Semaphore | None = None

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> int:
        self.port = self._server.start(self._serve, self.options.host, self.options.port)
        return self.port

    def close(self) -> None:
        self._server.close()

    async def _serve(self) -> Any:
        from aiohttp import web

        self._sql_busy = asyncio.Semaphore(2)
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_BODY)
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/api/status", self._status)
        app.router.add_get("/api/stream", self._stream)
        app.router.add_get("/api/entity", self._entity)
        app.router.add_post("/api/sql", self._sql)
        return await start_site(
            app, self.options.host, self.options.port, keepalive_s=15, shutdown_timeout=1
        )

    # -- security --------------------------------------------------------------------------
    def _authorized(self, request: Any) -> bool:
        if self._token is None:
            return True
        given = request.headers.get("Authorization", "").encode()
        if hmac.compare_digest(given, b"Bearer " + self._token):
            return True
        cookie = request.cookies.get(COOKIE, "").encode()
        return hmac.compare_digest(cookie, (self._session or "").encode())

    def _host_ok(self, request: Any) -> bool:
        """Without a token, only names of this machine may be in Host (DNS rebinding)."""
        if self._token is not None:
            return True
        host = request.host or ""
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        name = name.strip("[]")
        return is_loopback(name) or name == self.options.host

    def _auth_error(self, request: Any) -> Any:
        from aiohttp import web

        if not self._host_ok(request):
            return _json(403, {"error": f"host {request.host[:100]!r} is not this console's"})
        if request.path == "/" and self._token is not None:
            given = request.query.get("token", "").encode()
            if given and hmac.compare_digest(given, self._token):
                # the token leaves the address bar (and the history) at once
                resp = web.Response(status=303, headers={"Location": "/"})
                resp.set_cookie(COOKIE, self._session, httponly=True, samesite="Strict", path="/")
                return resp
        if request.path.startswith("/static/") or self._authorized(request):
            return None
        return _json(
            401,
            {"error": "the console needs its token: open /?token=TOKEN once, or send "
             "Authorization: Bearer TOKEN"},
            {"WWW-Authenticate": "Bearer"},
        )  # fmt: skip

    @property
    def _guard(self) -> Any:
        from aiohttp import web

        @web.middleware
        async def guard(request: Any, handler: Any) -> Any:
            refused = self._auth_error(request)
            if refused is not None:
                resp = refused
            else:
                try:
                    resp = await handler(request)
                except web.HTTPException as err:  # 404, 405... as JSON, with the headers below
                    resp = _json(err.status, {"error": err.reason})
            resp.headers["Content-Security-Policy"] = CSP
            resp.headers["X-Content-Type-Options"] = "nosniff"
            resp.headers["Referrer-Policy"] = "no-referrer"
            resp.headers.setdefault("Cache-Control", "no-store")
            return resp

        return guard

    # -- pages -----------------------------------------------------------------------------
    async def _index(self, request: Any) -> Any:
        from aiohttp import web

        return web.Response(body=self.files["index.html"], content_type="text/html")

    async def _static(self, request: Any) -> Any:
        from aiohttp import web

        name = request.match_info["name"]
        body = self.files.get(name)  # only the shipped files: no path is ever opened
        if body is None or name == "index.html":
            return _json(404, {"error": "no such file"})
        ctype = STATIC_TYPES[name[name.rfind(".") :]]
        return web.Response(body=body, content_type=ctype, charset="utf-8")

    # -- API -------------------------------------------------------------------------------
    async def _status(self, request: Any) -> Any:
        return _json(200, self.data.frame())

    async def _stream(self, request: Any) -> Any:
        from aiohttp import web

        if self._streams >= MAX_STREAMS:
            return _json(503, {"error": f"{MAX_STREAMS} consoles are open already"})
        self._streams += 1
        try:
            resp = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
            )
            for k, v in (("Content-Security-Policy", CSP), ("X-Content-Type-Options", "nosniff")):
                resp.headers[k] = v
            await resp.prepare(request)
            feed = self.data.feed_since(0, 100)
            seq = feed[-1]["seq"] if feed else 0
            hello = {"points": self.data.points(), "feed": feed, "frame": self.data.frame()}
            await resp.write(_event("hello", hello))
            while True:
                await asyncio.sleep(self.data.interval_s)
                await resp.write(_event("status", self.data.frame()))
                rows = self.data.feed_since(seq)
                if rows:
                    seq = rows[-1]["seq"]
                    await resp.write(_event("feed", rows))
        except (ConnectionError, asyncio.CancelledError):  # the browser went away
            return resp
        finally:
            self._streams -= 1

    async def _entity(self, request: Any) -> Any:
        kind, key = request.query.get("kind", ""), request.query.get("key", "")
        try:
            profile = await asyncio.wait_for(
                asyncio.to_thread(self.data.entity, kind, key), timeout=30
            )
        except UnknownEntityError as err:
            return _json(404, {"error": str(err)})
        except ConfigError as err:
            return _json(400, {"error": str(err)})
        except (EdgecoreError, TimeoutError) as err:
            return _json(503, {"error": f"the runtime did not answer: {str(err)[:300]}"})
        return _json(200, {"kind": kind, "key": key, "profile": profile})

    async def _sql(self, request: Any) -> Any:
        # a form on another site can post text/plain without asking; JSON it cannot
        if request.content_type != "application/json":
            return _json(415, {"error": 'send the query as application/json: {"sql": ...}'})
        origin = request.headers.get("Origin")
        if origin is not None and origin.split("://", 1)[-1] != request.host:
            return _json(403, {"error": "cross-origin queries are refused"})
        from aiohttp.web import HTTPRequestEntityTooLarge

        try:
            body = await request.json()
            text = body["sql"]
            if not isinstance(text, str):
                raise TypeError
        except HTTPRequestEntityTooLarge:
            return _json(413, {"error": f"the body is over {MAX_BODY:,} bytes"})
        except Exception:
            return _json(400, {"error": 'the body must be a JSON object {"sql": "SELECT ..."}'})
        assert self._sql_busy is not None
        if self._sql_busy.locked():
            return _json(429, {"error": "queries are running already; try again shortly"})
        async with self._sql_busy:
            t0 = time.perf_counter()
            try:
                result = await asyncio.wait_for(
                    asyncio.to_thread(self.data.sql, text), timeout=SQL_TIMEOUT_S
                )
            except EdgecoreError as err:
                return _json(400, {"error": str(err).strip().splitlines()[0][:500]})
            except TimeoutError:
                return _json(408, {"error": f"the query took over {SQL_TIMEOUT_S:g} s"})
            except Exception as err:  # anything else a query provokes is still its answer
                return _json(400, {"error": f"{type(err).__name__}: {str(err)[:300]}"})
        return _json(200, {**result, "seconds": round(time.perf_counter() - t0, 3)})


def _event(name: str, payload: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(payload, default=str)}\n\n".encode()


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> Any:
    from aiohttp import web

    return web.Response(
        status=status,
        body=json.dumps(payload, default=str).encode(),
        content_type="application/json",
        headers=headers,
    )
