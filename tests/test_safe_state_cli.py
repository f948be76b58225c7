"""The acceptance test of issue 14, item 5: a crafted ``_snapshots`` row cannot run code.

Two real earlier runs write a data folder each, as users do (`edgecore replay` of the fraud
app, `edgecore run` of an event-time pipeline). Each case copies one, plants what someone
able to write the folder could (committed, so the start does not roll it back), and starts
the command again: it must stop with exit 1 and one line saying which row was refused and
how to go on, and the shell command in the pickle must not have run. The cases run as
concurrent subprocesses (2 cores; one starts an embedded Ray to go through the shards).
"""

from __future__ import annotations

import base64
import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import make_transactions

from runtime.coordinator.checkpoint import SNAPSHOTS, saved_snapshots, wrap_row
from runtime.state.snapshot import unpack
from runtime.state.store import Checkpoint, Store

ROOT = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
    "RAY_USAGE_STATS_ENABLED": "0",
}
FLOW = "safe_state_flow:pipeline"
RAY_LOG = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(INFO|WARNING) \S+\.py:\d+ -- ")


class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def edgecore(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", *args],
        cwd=ROOT / "tests",
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(procs: dict[str, subprocess.Popen], timeout: float = 300) -> dict[str, tuple]:
    out = {}
    for name, p in procs.items():
        try:
            stdout, stderr = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            stdout, stderr = p.communicate()
        out[name] = (p.returncode, stdout, stderr)
    return out


def commit(data: Path, watermarks: dict[str, str] | None = None) -> None:
    """A checkpoint naming the tables as they are now (what the runtime restores at start)."""
    store = Store(data)
    cp = store.last_checkpoint()
    meta = {**cp.meta, "watermarks": {**cp.meta.get("watermarks", {}), **(watermarks or {})}}
    versions = {**cp.versions, SNAPSHOTS: store.version(SNAPSHOTS)}
    store.commit(Checkpoint(cp.epoch + 1, cp.started_at, cp.positions, versions, meta))


def plant(data: Path, row: str, blob: bytes) -> None:
    table = pa.table(
        {"kind": [row], "blob": [blob]},
        schema=pa.schema([("kind", pa.string()), ("blob", pa.binary())]),
    )
    Store(data).upsert(SNAPSHOTS, table, key="kind")
    commit(data)


@pytest.fixture(scope="module")
def earlier(tmp_path_factory) -> dict[str, Path]:
    """The fraud app replayed and an event-time pipeline run, each into its data folder."""
    base = tmp_path_factory.mktemp("earlier")
    txns = make_transactions(base / "txns.parquet", 3_000, 200)
    folders = {"fraud": base / "fraud", "flow": base / "flow"}
    done = finish(
        {
            "fraud": edgecore(
                "replay",
                str(txns),
                "--data",
                str(folders["fraud"]),
                "--local",
                "--json",
                "--checkpoint-every",
                "1000",
                "--batch-size",
                "500",
            ),  # fmt: skip
            "flow": edgecore("run", FLOW, "--data", str(folders["flow"]), "--local", "--json"),
        }
    )
    for name, (code, _, stderr) in done.items():
        assert code == 0, (name, stderr[-2000:])
    return {**folders, "txns": txns}


def _old_npz(blob: bytes) -> bytes:
    """The model as edgecore wrote it before snapshots had an envelope: a bare npz."""
    buf = io.BytesIO()
    np.savez(buf, **unpack(blob, "fraud_model").arrays)
    return buf.getvalue()


@pytest.fixture(scope="module")
def outcomes(earlier, tmp_path_factory) -> dict[str, tuple]:
    """Every case started at once; (exit code, stdout, stderr, marker) per case."""
    root = tmp_path_factory.mktemp("cases")
    model = saved_snapshots(Store(earlier["fraud"]))["customers"]
    row = Store(earlier["fraud"]).read(SNAPSHOTS).to_pylist()[0]["blob"]
    fraud_rows = {
        "pickle": lambda m: pickle.dumps(Exploit(m)),
        "corrupt": lambda m: row[:-100] + bytes([row[-100] ^ 1]) + row[-99:],
        "random": lambda m: np.random.default_rng(0).bytes(4_096),
        "old_npz": lambda m: _old_npz(model),
        "inner_pickle": lambda m: wrap_row("customers", pickle.dumps(Exploit(m))),
    }
    procs, markers = {}, {}
    for case, make in fraud_rows.items():
        data, markers[case] = root / case, root / f"{case}.pwned"
        shutil.copytree(earlier["fraud"], data)
        plant(data, "customers", make(markers[case]))
        local = [] if case == "inner_pickle" else ["--local"]  # through Ray's shards
        txns = str(earlier["txns"])
        procs[case] = edgecore("replay", txns, "--data", str(data), *local, "--json")
    for case in ("window_pickle", "watermark_pickle", "resume"):
        data, markers[case] = root / case, root / f"{case}.pwned"
        shutil.copytree(earlier["flow"], data)
        evil = pickle.dumps(Exploit(markers[case]))
        if case == "window_pickle":
            plant(data, "w#0", evil)
        elif case == "watermark_pickle":
            commit(data, watermarks={"w": base64.b64encode(evil).decode()})
        procs[case] = edgecore("run", FLOW, "--data", str(data), "--local", "--json")
    return {c: (*r, markers[c]) for c, r in finish(procs).items()}


#: how each refusal starts (a regular expression; DATA: the case's data folder)
REFUSED = {
    "pickle": r"_snapshots row 'customers' in DATA is a Python pickle",
    "corrupt": r"_snapshots row 'customers' in DATA is corrupt \(its SHA-256 checksum",
    "random": r"_snapshots row 'customers' in DATA is not an edgecore snapshot",
    "old_npz": r"_snapshots row 'customers' in DATA is a bare \.npz without the snapshot "
    r"envelope \(an older edgecore wrote it\)",
    "inner_pickle": r"entity kind 'customers', shard \d: snapshot 'fraud_model' is a Python pickle",
    "window_pickle": r"_snapshots row 'w#0' in DATA is a Python pickle",
    "watermark_pickle": r"the watermarks of 'w' in checkpoint \d+ \(_checkpoints\) in DATA is a "
    r"Python pickle",
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_crafted_row_stops_the_start_with_one_line_and_never_runs(case, outcomes):
    code, stdout, stderr, marker = outcomes[case]
    data = marker.parent / case
    assert code == 1, stderr[-3000:]
    # Ray's own start-up log lines (the embedded Ray of the inner_pickle case) aside
    lines = [ln for ln in stderr.strip().splitlines() if not RAY_LOG.match(ln)]
    assert len(lines) == 1 and not stdout.strip(), stderr[-3000:]
    assert re.match("error: " + REFUSED[case].replace("DATA", re.escape(str(data))), lines[0])
    assert "refused, nothing in it was run" in lines[0]
    assert "fresh --data folder" in lines[0] and "Traceback" not in stderr
    assert not marker.exists()


def test_an_untouched_folder_resumes_from_its_snapshots(outcomes):
    """The control: the same start on the folder as the earlier run left it works."""
    code, stdout, stderr, _ = outcomes["resume"]
    assert code == 0, stderr[-3000:]
    assert json.loads(stdout)["resumed_from"] == 3_000
