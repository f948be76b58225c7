"""`edgecore replay` as users run it (a subprocess on the embedded Ray, two shards) over a
stream long enough for the shards' model replicas to be synced while it flows (every
250,000 events, without the driver waiting) and whose size is a multiple of
``--checkpoint-every`` (its last rows committed by an in-stream checkpoint, no empty
commit after): every profile exact against DuckDB, the position committed, a second run
resumes at the end; and a kill -9 of the whole process group after a sync and a commit,
mid-stream, loses and doubles nothing once the replay is run again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_profiles_match, kill_after_a_checkpoint, make_transactions, sql_profiles

from runtime.state.reader import FolderReader

N = 400_000


@pytest.fixture(scope="module")
def stream(tmp_path_factory) -> Path:
    return make_transactions(tmp_path_factory.mktemp("s") / "txns.parquet", N, 20_000, seed=11)


def replay(file: Path, data: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "runtime.cli", "replay", str(file), "--data", str(data), *args]


def run_json(cmd: list[str]) -> dict:
    done = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_replay_synced_and_committed_at_its_last_row_is_exact(stream, tmp_path):
    data = tmp_path / "data"
    out = run_json(replay(stream, data, "--checkpoint-every", "200000", "--shards", "2"))
    assert out["accepted"] == N and out["dead_lettered"] == out["duplicates"] == 0
    folder = FolderReader(str(data))
    assert folder.last_checkpoint().positions == {p: N for p in folder.last_checkpoint().positions}
    assert "customers" in {r["kind"] for r in folder.read("_snapshots").to_pylist()}
    assert_profiles_match(data, sql_profiles(stream))
    again = run_json(replay(stream, data, "--shards", "2"))
    assert again["resumed_from"] == N and again["accepted"] == 0


def test_kill_9_after_a_sync_and_a_commit_loses_and_doubles_nothing(stream, tmp_path):
    data = tmp_path / "data"
    # paced: the sync at 250k and the commit at 300k come ~5 s in; killed 0.5 s later
    paced = replay(stream, data, "--checkpoint-every", "300000", "--shards", "2")
    kill_after_a_checkpoint(paced + ["--rate", "60000"], data)
    committed = FolderReader(str(data)).last_checkpoint().positions
    assert committed and all(0 < p < N for p in committed.values())
    out = run_json(paced)
    assert out["resumed_from"] == next(iter(committed.values()))
    assert_profiles_match(data, sql_profiles(stream))
