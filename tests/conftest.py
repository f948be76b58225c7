"""Shared fixtures: one Ray session per test module, generated transaction files, DuckDB oracles."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("LANCE_LOG", "error")


#: the edge sites of :func:`edge_cluster`
EDGE_SITES = ("eu-1", "eu-2")


@pytest.fixture(scope="module")
def edge_cluster():
    """A multi-node Ray for the module: a core head and an edge node per site of
    :data:`EDGE_SITES` (one CPU each), labelled as ``cluster.yaml`` labels them."""
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "labels": {"role": "core", "site": "core"}},
    )
    for site in EDGE_SITES:
        c.add_node(num_cpus=1, labels={"role": "edge", "site": site})
    c.wait_for_nodes()
    ray.init(address=c.address, namespace="edgecore")
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def ray_session():
    """An embedded Ray for the whole module: starting one costs seconds on 2 cores."""
    import ray

    from runtime.cluster.handles import init_ray

    init_ray(None, num_cpus=2)
    yield ray
    ray.shutdown()


def make_transactions(path: Path, n: int, customers: int, seed: int = 7) -> Path:
    from actors.fraud.generator import TxnGeneratorConfig, write_transactions

    return write_transactions(path, n, TxnGeneratorConfig(n_customers=customers, seed=seed))


def sql_profiles(source: str | Path | pa.Table) -> dict[str, dict]:
    """The profile columns computed by DuckDB straight from the events: the oracle."""
    con = duckdb.connect()
    if isinstance(source, pa.Table):
        con.register("events", source)
        rel = "events"
    else:
        p = str(source)
        rel = f"read_parquet('{p}')" if p.endswith(".parquet") else f"read_csv_auto('{p}')"
    rows = con.sql(
        f"""SELECT customer_id, count(*) AS txn_count, sum(amount) AS amount_sum,
                   max(amount) AS amount_max, min(ts) AS first_ts, max(ts) AS last_ts,
                   count(DISTINCT device_id) AS devices
            FROM (SELECT DISTINCT ON (event_id) * FROM {rel}) GROUP BY customer_id"""
    ).to_arrow_table()
    return {r["customer_id"]: r for r in rows.to_pylist()}


def assert_profiles_match(data_dir: str | Path, expected: dict[str, dict]) -> None:
    from runtime.state.store import Store

    got = {r["customer_id"]: r for r in Store(data_dir).read("customers").to_pylist()}
    assert set(got) == set(expected), f"{len(set(got) ^ set(expected))} customers differ"
    for key, want in expected.items():
        row = got[key]
        assert row["txn_count"] == want["txn_count"], key
        assert row["amount_max"] == want["amount_max"], key
        assert row["first_ts"] == want["first_ts"], key
        assert row["last_ts"] == want["last_ts"], key
        # float sums depend on summation order (DuckDB's is parallel); 1e-9 relative is exact
        # up to rounding
        assert row["amount_sum"] == pytest.approx(want["amount_sum"], rel=1e-9), key


@pytest.fixture
def live(tmp_path):
    """Make in-process HTTP front ends (``live(max_body=...)``); closed after the test."""
    from live_helpers import FrontEnd

    created = []

    def make(**http):
        lv = FrontEnd(tmp_path / f"d{len(created)}", **http)
        created.append(lv)
        return lv

    yield make
    for lv in created:
        lv.close()


def kill_after_a_checkpoint(cmd: list[str], data: Path, settle_s: float = 0.5) -> None:
    """Run ``cmd`` (a paced replay into ``data``) in its own process group and SIGKILL the
    whole group ``settle_s`` after its first committed checkpoint: mid-stream, mid-work."""
    import signal
    import subprocess
    import time

    from runtime.state.store import Store

    proc = subprocess.Popen(
        cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(
                    f"replay ended before it was killed: {proc.stderr.read().decode()[-2000:]}"
                )
            if (data / "_checkpoints.lance").exists() and Store(data).last_checkpoint().positions:
                break
            time.sleep(0.2)
        time.sleep(settle_s)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
