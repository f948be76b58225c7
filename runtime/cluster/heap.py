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
million events; a trim takes 3-6 ms. The runtime trims after each checkpoint's drain,
write or commit, at most once a second per process (:data:`MIN_INTERVAL_S`).

>>> trim_heap(force=True)
True
>>> trim_heap()  # again within the interval: skipped
False
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from collections.abc import Callable
from typing import Any

#: trims closer together than this are skipped: a run that checkpoints very often (tests
#: with a tiny interval) would pay a few ms each time for little
MIN_INTERVAL_S = 1.0

_trim: Callable[[int], Any] | None = None
_looked_up = False
_last = float("-inf")


def _malloc_trim() -> Callable[[int], Any] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    global _trim, _looked_up
    if not _looked_up:
        _looked_up = True
        try:
            _trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _trim = None
    return _trim


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
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    return True
