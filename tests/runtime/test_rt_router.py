"""runtime.entities.router across Ray against in-process: the same skewed stream through
three shards must give every shard the same entities, counts and sums (bit for bit: the
same rows in the same order), and the same rows routed to each."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from runtime.cluster.handles import resolve, spawn
from runtime.entities.clients import ShardClient
from runtime.entities.router import Router
from runtime.entities.shard import Shard
from runtime.state.keys import hash_keys, shard_of
from runtime.testing import Tally


def batches(seed: int, n: int = 6, rows: int = 3_000) -> list[pa.Table]:
    rng = np.random.default_rng(seed)
    out = []
    for b in range(n):
        keys = rng.zipf(1.3, rows) % 500  # skewed, so one shard may get none of a batch
        out.append(
            pa.table(
                {
                    "key": pa.array([f"k{k}" for k in keys]),
                    "value": pa.array(rng.normal(size=rows) + b),
                }
            )
        )
    # a batch whose rows all belong to one shard: the others get no call for it
    one = [
        k for k in (f"k{i}" for i in range(500)) if shard_of(hash_keys(pa.array([k])), 3)[0] == 1
    ]
    out.append(pa.table({"key": pa.array(one[:50]), "value": pa.array(np.ones(50))}))
    return out


def run(mode: str, folder: str, stream: list[pa.Table]) -> tuple[list[dict], list[int]]:
    shards = [
        ShardClient(
            spawn(Shard, Tally, None, i, 3, f"{folder}/{mode}", name=f"r-{mode}-{i}", mode=mode)
        )
        for i in range(3)
    ]
    router = Router(Tally, shards, per_site=3, max_inflight=2)
    for i, batch in enumerate(stream):
        router.send(batch, watermark=1_000 + i)
    done = router.drain()
    states = []
    for s in resolve([s.live_snapshot() for s in shards]):
        t = s.table.sort_by("key")
        states.append({c: t.column(c).to_pylist() for c in ("key", "n", "total")})
    for s in shards:
        s.kill()
    return states, [int(sum(d.get("rows", 0) for d in done))] + list(router.rows_sent)


@pytest.mark.parametrize("seed", [1, 2])
def test_routing_under_ray_matches_in_process(ray_session, tmp_path, seed):
    stream = batches(seed)
    local, local_rows = run("local", str(tmp_path), stream)
    remote, remote_rows = run("ray", str(tmp_path), stream)
    total = sum(b.num_rows for b in stream)
    assert local_rows[0] == remote_rows[0] == total
    assert remote_rows == local_rows  # rows each shard was routed
    for i in range(3):
        assert remote[i]["key"] == local[i]["key"] and remote[i]["n"] == local[i]["n"]
        # sums in the same order: the same floats, bit for bit
        assert remote[i]["total"] == local[i]["total"]
    keys = [k for s in remote for k in s["key"]]
    assert len(keys) == len(set(keys))  # every key lives on one shard only
