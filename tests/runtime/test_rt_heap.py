"""Freed heap goes back to the OS after a trim (runtime.cluster.heap).

Run in a fresh interpreter: the heap's state is the point, and this test process's heap
is whatever the tests before it left."""

from __future__ import annotations

import os
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


ARENAS = r"""
import os, subprocess, sys
from runtime.cluster.heap import limit_arenas
print(limit_arenas())
print(subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('MALLOC_ARENA_MAX'))"],
                     capture_output=True, text=True).stdout.strip())
"""


@pytest.mark.parametrize(
    ("env", "cap", "child"),
    [
        ({}, "2", "2"),  # the runtime's default, handed to the processes it starts
        ({"EDGECORE_MALLOC_ARENAS": "4"}, "4", "4"),
        ({"MALLOC_ARENA_MAX": "3", "EDGECORE_MALLOC_ARENAS": "4"}, "3", "3"),  # the user's
        ({"EDGECORE_MALLOC_ARENAS": "0"}, "None", "None"),  # glibc's default kept
        ({"EDGECORE_MALLOC_ARENAS": "lots"}, "None", "None"),
    ],
)
def test_the_arena_cap_is_set_here_and_inherited(env, cap, child) -> None:
    base = {k: v for k, v in os.environ.items() if "ARENA" not in k}
    out = subprocess.run(
        [sys.executable, "-c", ARENAS],
        capture_output=True,
        text=True,
        check=True,
        env={**base, **env},
    ).stdout.split()
    assert out == [cap, child]


def test_the_embedded_rays_workers_start_with_the_cap(ray_session) -> None:
    @ray_session.remote
    def arenas() -> str | None:
        return os.environ.get("MALLOC_ARENA_MAX")

    # "2" unless this process was started with a cap of the user's own
    assert ray_session.get(arenas.remote(), timeout=120) == os.environ["MALLOC_ARENA_MAX"]


def test_a_shard_and_a_sink_trim_as_work_comes_in_not_while_a_cut_is_held(tmp_path, monkeypatch):
    """Trimmed inside the checkpoint's drain, while the cut's tables were still held, a
    soak's shard kept 80 MB that a trim between batches gave back: the shard trims as a
    batch comes in, a sink as rows come in (and at its flush), and the drain does not."""
    import pyarrow as pa

    import runtime.entities.shard as shard_mod
    import runtime.streams.sinks as sinks_mod
    from runtime.state.keys import hash_keys
    from runtime.testing import Tally

    calls: list[str] = []
    monkeypatch.setattr(shard_mod, "trim_heap", lambda: calls.append("shard"))
    monkeypatch.setattr(sinks_mod, "trim_heap", lambda: calls.append("sink"))
    shard = shard_mod.Shard(Tally, None, 0, 1, str(tmp_path))
    keys = pa.array(["a", "b", "a"])
    shard.apply(pa.table({"key": keys, "_key_hash": pa.array(hash_keys(keys))}))
    assert calls == ["shard"]
    shard.drain()
    assert calls == ["shard"]
    sink = sinks_mod.TableSink(str(tmp_path), "out", flush_rows=1)
    sink.on_batch(pa.table({"x": [1, 2]}))
    assert calls[0] == "shard" and set(calls[1:]) == {"sink"} and sink.flush() == 2
