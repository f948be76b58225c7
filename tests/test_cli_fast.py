"""The read-only commands and the replay's header check start fast, as users run them
(subprocesses): `sql`, `entity` and `status --data` read the Lance datasets without
importing `lancedb` or Ray, and a file without a required column is refused before Ray
starts (no cluster is reached)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from runtime import Runtime, run
from runtime.dataflow.app import App
from runtime.streams.schema import Column, EventSchema
from runtime.testing import MemorySource
from runtime.testing.fixtures import Tally

ROOT = Path(__file__).resolve().parents[1]
PROBE = (
    "import runpy, sys; sys.argv = ['edgecore', *sys.argv[1:]]\n"
    "try:\n    runpy.run_module('runtime.cli', run_name='__main__')\n"
    "except SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
    "heavy = sorted(m for m in ('lancedb', 'ray', 'torch', 'sklearn', 'pandas') if m in sys.modules)\n"
    "print('HEAVY=' + ','.join(heavy), file=sys.stderr)\nsys.exit(code)\n"
)


def edgecore(*args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run the CLI in a subprocess; also the heavy packages it imported."""
    p = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    line = [ln for ln in p.stderr.splitlines() if ln.startswith("HEAVY=")]
    found = line[-1][6:].split(",") if line and line[-1][6:] else []
    # pylance imports pandas (pyarrow.dataset does): only the replay's check does without
    return p, found if "replay" in args else [m for m in found if m != "pandas"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("fast") / "data"
    schema = EventSchema(
        "readings",
        [Column("event_id", "int64"), Column("key", "string"), Column("value", "float64")],
    )
    rows = [{"event_id": i, "key": f"k{i % 7}", "value": float(i)} for i in range(700)]
    with Runtime(data_dir=str(data), mode="local", shards=2) as rt:
        run(rt, App("tally", schema, Tally), MemorySource(rows, 100))
    return data


def test_sql_reads_the_folder_without_lancedb_or_ray(folder):
    p, heavy = edgecore(
        "sql", "SELECT key, n, total FROM tallies WHERE key = 'k3'", "--data", str(folder), "--json"
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["rows"] == [
        {"key": "k3", "n": 100, "total": float(sum(range(3, 700, 7)))}
    ]
    assert heavy == [], heavy


def test_entity_and_status_read_the_folder_without_lancedb_or_ray(folder):
    p, heavy = edgecore("entity", "tallies", "k5", "--data", str(folder), "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["n"] == 100 and heavy == [], heavy
    p, heavy = edgecore("status", "--data", str(folder), "--json")
    assert p.returncode == 0, p.stderr
    tables = {t["name"]: t["rows"] for t in json.loads(p.stdout)["tables"]}
    assert tables["tallies"] == 7 and json.loads(p.stdout)["checkpoint"]["epoch"] >= 1
    assert heavy == [], heavy
    p, heavy = edgecore("entity", "tallies", "nobody", "--data", str(folder))
    assert p.returncode == 1 and "nobody" in p.stderr and "Traceback" not in p.stderr


def replay_towards_no_cluster(f: Path, data: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    """``edgecore replay F`` with ``--address`` naming a cluster that is not there: what
    answers is whatever refuses the file before Ray is reached."""
    return edgecore(
        "replay", str(f), "--app", "fraud", "--data", str(data), "--address", "127.0.0.1:1"
    )


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_replay_refuses_a_file_without_a_required_column_before_reaching_ray(tmp_path, fmt):
    """--address names a cluster that is not there: the header check answers first."""
    t = pa.table({"event_id": [1, 2], "customer_id": ["a", "b"], "ts": ["2026-01-01T00:00:00"] * 2})
    f = tmp_path / f"tx.{fmt}"
    if fmt == "csv":
        f.write_text("event_id,customer_id,ts\n1,a,2026-01-01T00:00:00\n")
    else:
        pq.write_table(t, f)
    p, heavy = replay_towards_no_cluster(f, tmp_path / "d")
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "lacks required column(s)" in p.stderr and "amount" in p.stderr, p.stderr
    assert str(f) in p.stderr and "Traceback" not in p.stderr
    assert "ray" not in heavy and not (tmp_path / "d").exists()
    # nor pandas (0.3 s), which pyarrow imports for the first array an app's module built
    # from a list, nor the coordinator: refused in 0.8-1.0 s instead of 1.25-1.45 s
    assert "pandas" not in heavy, heavy


def test_replay_refuses_a_file_that_is_not_what_its_suffix_says_in_one_line(tmp_path):
    """Hostile input at the header check: bytes that are no Parquet, refused before Ray."""
    f = tmp_path / "tx.parquet"
    f.write_bytes(b"PAR1" + b"\x00\xff" * 64)
    p, heavy = replay_towards_no_cluster(f, tmp_path / "d")
    assert p.returncode == 1 and "cannot read" in p.stderr and str(f) in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and "ray" not in heavy


def test_sql_and_status_pass_over_a_table_whose_create_was_cut_off(folder, tmp_path):
    """kill -9 between a new table's data files and its first manifest leaves a folder
    LanceDB lists but cannot open: the read-only commands treat it as no table."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(folder, data)
    half = data / "alerts.lance"
    shutil.copytree(data / "tallies.lance", half)
    shutil.rmtree(half / "_versions")  # the state the kill leaves (data files, no manifest)
    p, _ = edgecore("status", "--data", str(data), "--json")
    assert p.returncode == 0, p.stderr
    assert "alerts" not in {t["name"] for t in json.loads(p.stdout)["tables"]}
    p, _ = edgecore("sql", "SELECT count(*) AS n FROM tallies", "--data", str(data), "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["rows"] == [{"n": 7}]
