"""Process helpers shared by the tests and the fault and soak harnesses in ``scripts/``:
a free loopback port, waiting for a condition, and the environment a command runs in.

>>> port = free_port(); 1024 <= port < 65536
True
>>> wait_until(lambda: 7, timeout=1.0), wait_until(lambda: None, timeout=0.05, every=0.01)
(7, None)
>>> env({"X": "1"}, root="/repo")["PYTHONPATH"].split(os.pathsep)[0], env(root="/r")["LANCE_LOG"]
('/repo', 'error')
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the caller binds it soon after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(what: Callable[[], Any], timeout: float, every: float = 0.1) -> Any:
    """``what()``'s first truthy answer within ``timeout`` seconds, else None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(every)
    return None


def env(extra: dict[str, str] | None = None, root: str | Path | None = None) -> dict[str, str]:
    """The environment of an ``edgecore`` subprocess: ``root`` (a checkout) first on the
    path, Ray's usage report and LanceDB's chatter off, then ``extra``."""
    parts = [str(root)] if root is not None else []
    path = os.pathsep.join([*parts, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {
        **os.environ,
        "PYTHONPATH": path,
        "RAY_USAGE_STATS_ENABLED": "0",
        "LANCE_LOG": "error",
        **(extra or {}),
    }
