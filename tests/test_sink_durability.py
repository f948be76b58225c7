"""A sink's table keeps every row across ``kill -9``: ``replay`` killed after a commit and
run again on the same data folder ends with the same ``alerts`` table as a run that
was never interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.live_helpers import cli_json

ROOT = Path(__file__).resolve().parents[1]


def replay(cwd: Path, data: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "runtime.cli", "replay", "t.parquet", "--app", "fraud"] + [
        "--data",
        data,
        "--checkpoint-every",
        "20000",
        *extra,
    ]


def commits(data: Path) -> int:
    versions = data / "_checkpoints.lance" / "_versions"
    return len(list(versions.glob("*.manifest"))) if versions.is_dir() else 0


def alert_ids(cwd: Path, data: str) -> set[int]:
    got = cli_json(cwd, "sql", "SELECT event_id FROM alerts", "--data", data)
    return {r["event_id"] for r in got["rows"]}


@pytest.mark.timeout(600)
def test_alerts_written_before_a_commit_survive_kill_9(tmp_path):
    from actors.fraud.generator import TxnGeneratorConfig, write_transactions

    write_transactions(tmp_path / "t.parquet", 120_000, TxnGeneratorConfig(n_customers=3000))
    clean = cli_json(tmp_path, *replay(tmp_path, "clean")[3:])
    expected = alert_ids(tmp_path, "clean")
    assert clean["alerts"] == len(expected) > 100

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        replay(tmp_path, "crashed", "--rate", "8000"),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        # two commits: the first checkpoint's alerts sat in the sink until this one
        while commits(tmp_path / "crashed") < 2 and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint committed within 300 s"
            time.sleep(0.2)
        assert proc.poll() is None, "the paced replay finished before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    resumed = cli_json(tmp_path, *replay(tmp_path, "crashed")[3:])
    assert resumed["resumed_from"] > 0  # it did crash after a commit
    got = alert_ids(tmp_path, "crashed")
    assert got == expected, f"lost {len(expected - got)}, extra {len(got - expected)}"
