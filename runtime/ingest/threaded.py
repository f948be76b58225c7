"""An aiohttp app served on a thread and an event loop of its own, in any process.

The web console and ``/metrics`` run beside other work (the driver's loop, Ray's
threads); each needs the same life cycle: bind on a new thread, hand the bound port (or
the bind error) back to the caller, serve until :meth:`ThreadedServer.close`.

>>> import asyncio, urllib.request
>>> from aiohttp import web
>>> async def hello(request):
...     return web.Response(text="hi")
>>> async def serve():
...     app = web.Application()
...     app.router.add_get("/", hello)
...     return await start_site(app, "127.0.0.1", 0)
>>> server = ThreadedServer("hello")
>>> port = server.start(serve, "127.0.0.1", 0)
>>> urllib.request.urlopen(f"http://127.0.0.1:{port}/").read()
b'hi'
>>> server.close()
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from runtime.errors import ConfigError


async def start_site(
    app: Any, host: str, port: int, keepalive_s: float = 75.0, shutdown_timeout: float = 60.0
) -> Any:
    """Set ``app`` up on ``host:port`` (quiet: a client's malformed request is not ours to
    log); returns its started runner."""
    import logging

    from aiohttp import web

    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        keepalive_timeout=keepalive_s,
        shutdown_timeout=shutdown_timeout,
    )
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    return runner


class ThreadedServer:
    """Runs what ``serve()`` sets up (an aiohttp runner) on a thread named ``name``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, serve: Callable[[], Awaitable[Any]], host: str, port: int) -> int:
        """Bind and serve; returns the bound port (for port 0: the one chosen). A bind
        error is a ConfigError naming ``host:port``."""
        result: list[Any] = []
        started = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                runner = loop.run_until_complete(serve())
            except BaseException as err:  # a bind error reaches the caller
                result.append(err)
                started.set()
                loop.close()
                return
            self.loop = loop
            result.append(int(runner.addresses[0][1]))
            started.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=main, name=self.name, daemon=True)
        self._thread.start()
        started.wait(30)
        if not result or isinstance(result[0], BaseException):
            why = result[0] if result else TimeoutError(f"the {self.name} server did not start")
            raise ConfigError(f"cannot serve the {self.name} on {host}:{port}: {why}") from None
        return int(result[0])

    def close(self) -> None:
        loop, self.loop = self.loop, None
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
