"""Hand the heap a long-running runtime process freed back to the operating system.

glibc's malloc keeps memory freed in the middle of its heaps for reuse: only the top of a
heap is returned on its own. A shard builds and drops large numpy and Arrow temporaries
every batch, and LanceDB writes from its own threads at every checkpoint; what they free
is left in holes between live blocks, and the process's resident memory climbs with the
events it handles although nothing live grows (the soak's fraud shard). ``malloc_trim``
gives every whole free page back (it does not move anything), and pyarrow's pool
(mimalloc) has ``release_unused`` for its own.

Measured with ``scripts/mem_growth.py`` (fraud app, in-process): anonymous memory went
297 -> 380 MB over 8M events without a trim, and levelled off at ~319 MB with one per
million events; a trim takes 3-6 ms. The runtime trims at most once a second per process
(:data:`MIN_INTERVAL_S`), where the last piece of work's temporaries are gone: a shard
as a batch comes in, a sink as rows come in, the driver after a commit. A shard that
trimmed inside its checkpoint's drain, while the cut's tables were still held, kept
80 MB that one trim between batches gave back (293 -> 212 MB anonymous, in 5 ms); trimmed
between batches, the soak's shard held 175-180 MB instead of 270.

A trim cannot return a page that holds one live block, and glibc spreads the blocks of a
multi-threaded process over up to 8 arenas per core, one per thread that allocates at
the same time: LanceDB's writer threads and Ray's own each fill arenas of their own, and
the holes multiply. :func:`limit_arenas` caps them at :data:`ARENAS` for the runtime's
processes (the driver, and the embedded Ray's services and workers, which inherit
``MALLOC_ARENA_MAX``). A loop of 600 checkpoint-sized LanceDB appends grew 97 -> 246 MB
anonymous with the default, and 97 -> 141 MB (flat after ~180) with 2 arenas.

>>> trim_heap(force=True)
True
>>> trim_heap()  # again within the interval: skipped
False
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import time
from collections.abc import Callable
from typing import Any

#: trims closer together than this are skipped: a run that checkpoints very often (tests
#: with a tiny interval) would pay a few ms each time for little
MIN_INTERVAL_S = 1.0

#: malloc arenas of a runtime process (``EDGECORE_MALLOC_ARENAS``; 0 keeps glibc's
#: default); a ``MALLOC_ARENA_MAX`` of the user's own wins
ARENAS = 2
_M_ARENA_MAX = -8  # mallopt's parameter number in glibc's malloc.h

_last = float("-inf")


@functools.cache
def _libc(symbol: str) -> Callable[..., Any] | None:
    """A glibc function (looked up once), or None where the C library has none (musl,
    macOS)."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), symbol)
    except (OSError, AttributeError):
        return None


def limit_arenas() -> int | None:
    """Cap glibc's malloc arenas in this process, and (through ``MALLOC_ARENA_MAX``) in
    the processes it starts from now on; returns the cap, or None if left as it was.

    Arenas that exist already stay (threads that want a new one share those instead),
    so the earlier in a process the better; processes started with the variable set
    (the embedded Ray's workers) have the cap from their first allocation.
    """
    raw = os.environ.get("MALLOC_ARENA_MAX") or os.environ.get(
        "EDGECORE_MALLOC_ARENAS", str(ARENAS)
    )
    try:
        n = int(raw)
    except ValueError:
        return None
    if n <= 0:
        return None
    os.environ["MALLOC_ARENA_MAX"] = str(n)
    mallopt = _libc("mallopt")
    if mallopt is not None:
        mallopt(_M_ARENA_MAX, n)
    return n


def trim_heap(force: bool = False) -> bool:
    """Return freed heap pages to the OS (glibc and pyarrow's pool); False if skipped
    because the last trim of this process was less than :data:`MIN_INTERVAL_S` ago."""
    global _last
    now = time.monotonic()
    if not force and now - _last < MIN_INTERVAL_S:
        return False
    _last = now
    import pyarrow as pa  # every runtime process has it loaded already

    pa.default_memory_pool().release_unused()
    trim = _libc("malloc_trim")
    if trim is not None:
        trim(0)
    return True
