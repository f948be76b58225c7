"""Freed heap goes back to the OS after a trim (runtime.cluster.heap).

Run in a fresh interpreter: the heap's state is the point, and this test process's heap
is whatever the tests before it left."""

from __future__ import annotations

import subprocess
import sys

import pytest

FRAGMENT = r"""
import numpy as np

def anon():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) // 1024 for l in f if l.startswith("RssAnon"))

# large temporaries with a small survivor after each, as a shard's batches leave them:
# the survivors pin the heap's top, so freeing the temporaries returns nothing by itself
keep, temps = [], []
for i in range(3000):
    temps.append(np.ones(12_000))   # 96 KB: below glibc's mmap threshold, on the heap
    keep.append(np.ones(8))
del temps
before = anon()
from runtime.cluster.heap import trim_heap
assert trim_heap(force=True)
print(before, anon())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim")
def test_a_trim_returns_the_holes_that_freed_temporaries_left() -> None:
    out = subprocess.run(
        [sys.executable, "-c", FRAGMENT], capture_output=True, text=True, check=True
    ).stdout
    before, after = map(int, out.split())
    assert before - after > 150, (before, after)  # ~280 MB of holes; most come back
