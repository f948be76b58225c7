"""``GET /metrics`` on a port of its own: a registry in the Prometheus text format.

``edgecore serve --metrics HOST:PORT`` starts one in the driver process, for users
without Ray's metrics stack (Ray's own endpoint carries the same figures, prefixed
``ray_``). Like HTTP ingest it binds to loopback unless a bearer token is given; with a
token every scrape must carry it (Prometheus: ``authorization: {credentials: ...}``).
Anything but ``GET``/``HEAD /metrics`` is a 404 or 405; aiohttp refuses oversized or
malformed request lines and headers with a 400, and idle connections are closed.

A Prometheus scrape job for it::

    scrape_configs:
      - job_name: edgecore
        scrape_interval: 5s
        static_configs: [{targets: ["127.0.0.1:9464"]}]
        # with --token: authorization: {type: Bearer, credentials: "<token>"}

>>> from runtime.observe.metrics import Registry
>>> import urllib.request
>>> reg = Registry()
>>> reg.counter("edgecore_demo_total", "A demo.").inc(2)
>>> server = MetricsServer(reg, MetricsOptions("127.0.0.1", 0))
>>> port = server.start()
>>> urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode().splitlines()[-1]
'edgecore_demo_total 2'
>>> server.close()
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from runtime.errors import ConfigError
from runtime.ingest.threaded import ThreadedServer, start_site
from runtime.observe.metrics import Registry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class MetricsOptions:
    host: str = "127.0.0.1"
    port: int = 9464
    token: str | None = None
    keepalive_s: float = 15.0

    @staticmethod
    def parse(spec: str, token: str | None = None) -> MetricsOptions:
        """``HOST:PORT`` (``[::1]:PORT`` for IPv6), checked."""
        host, _, port = spec.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--metrics must be HOST:PORT (e.g. 127.0.0.1:9464), not {spec!r}")
        opts = MetricsOptions(host.strip("[]"), int(port), token or None)
        opts.check()
        return opts

    def check(self) -> None:
        from runtime.ingest.http import is_loopback

        if not is_loopback(self.host) and not self.token:
            raise ConfigError(
                f"binding /metrics to {self.host} exposes it beyond this machine: give a "
                "bearer token (--token or the EDGECORE_TOKEN environment variable)"
            )
        if not 0 <= self.port <= 65_535:
            raise ConfigError(f"metrics port must be 0..65535, not {self.port}")


class MetricsServer:
    """Serves ``registry`` on its own thread and event loop."""

    def __init__(self, registry: Registry, options: MetricsOptions) -> None:
        options.check()
        self.registry, self.options = registry, options
        self.port: int | None = None
        self._token = options.token.encode() if options.token else None
        self._server = ThreadedServer("metrics")

    def start(self) -> int:
        """Bind and serve; returns the bound port (for port 0: the one chosen)."""
        self.port = self._server.start(self._serve, self.options.host, self.options.port)
        return self.port

    async def _serve(self) -> Any:
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        return await start_site(app, self.options.host, self.options.port, self.options.keepalive_s)

    async def _metrics(self, request: Any) -> Any:
        from aiohttp import web

        if self._token is not None:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, b"Bearer " + self._token):
                return web.Response(
                    status=401,
                    text="missing or wrong bearer token\n",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        body = self.registry.render().encode()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    def close(self) -> None:
        self._server.close()
