"""Durable directory entries: the one helper every log of the data folder uses.

A file written, renamed or deleted is durable only once its directory is synced too
(the write-ahead log, topic segments and the edge's forward log all rely on it).

>>> import tempfile
>>> fsync_dir(tempfile.mkdtemp())
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: str | Path) -> None:
    """Make a file's creation, rename or removal in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
