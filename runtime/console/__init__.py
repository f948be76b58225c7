"""The web console: a page served by the runtime for the operator on call.

Live events/s and latency, the alerts feed, where every actor runs, one entity's live
profile, the models, and SQL, from :class:`~runtime.console.data.ConsoleData` (read
through Ray) by :class:`~runtime.console.server.ConsoleServer` (aiohttp, on a thread).
The page is three hand-written files shipped in the package: nothing is fetched from
anywhere else. ``edgecore serve --console HOST:PORT`` and ``edgecore console``.
"""

from runtime.console.data import ConsoleData
from runtime.console.server import ConsoleOptions, ConsoleServer

__all__ = ["ConsoleData", "ConsoleOptions", "ConsoleServer"]
