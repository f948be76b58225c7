"""NEXMark on the runtime: every query's answer equals the DuckDB oracle, in-process and on
Ray; a crash mid-stream followed by a restart gives the same answers as a clean run."""

from __future__ import annotations

import sys
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from actors.nexmark.config import NexmarkConfig
from actors.nexmark.generator import generate, union
from actors.nexmark.queries import QUERIES, answer
from actors.nexmark.source import NexmarkSource
from runtime import Runtime
from runtime.dataflow.app import run
from runtime.testing import MemorySource

sys.path.insert(0, str(Path(__file__).parent))
from live_helpers import script_json  # noqa: E402
from nexmark_sql import reference  # noqa: E402

EVENTS = 120_000  # 12 s of event time: several tumbling and sliding windows
CONFIG = NexmarkConfig(events=EVENTS, seed=5)  # padded like the reference; 3 chunks
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def nexmark():
    tables = generate(CONFIG)
    return tables, union(tables)


def rows(table: pa.Table, columns: list[str]) -> list[tuple]:
    def norm(v):
        if isinstance(v, float):
            return round(v, 6)
        if isinstance(v, Decimal):
            return str(v)
        return v

    cols = [c for c in columns if c in table.column_names]
    return sorted(tuple(norm(r[c]) for c in cols) for r in table.to_pylist())


def check(q: str, got: pa.Table, tables: dict) -> None:
    want = reference(tables, q)
    assert want.num_rows > 0, f"{q}: the oracle is empty, the test would prove nothing"
    missing = set(want.column_names) - set(got.column_names)
    assert not missing, f"{q}: answer lacks {missing}"
    assert rows(got, want.column_names) == rows(want, want.column_names)


def run_query(rt: Runtime, q: str, stream: pa.Table, batch: int = 7_000) -> pa.Table:
    stats = run(rt, QUERIES[q]().build(), MemorySource(stream, batch_size=batch, id="nexmark"))
    assert stats.input == stream.num_rows == stats.accepted + stats.filtered
    return answer(q, rt.read_topic(q, 0, 10 * stream.num_rows))


@pytest.mark.parametrize("q", sorted(QUERIES))
def test_query_equals_sql_in_process(q, nexmark, tmp_path):
    tables, stream = nexmark
    with Runtime(data_dir=str(tmp_path), mode="local", shards=3) as rt:
        check(q, run_query(rt, q, stream), tables)


@pytest.mark.parametrize("q", ["q0", "q4", "q5", "q7", "q8"])
def test_generating_source_gives_the_pregenerated_answer(q, nexmark, tmp_path):
    """Generated while the query runs (a thread ahead, batches across chunk ends), the
    stream gives the answer of the pregenerated one: the oracle's on generate(CONFIG)."""
    tables, _ = nexmark
    source = NexmarkSource(CONFIG, batch_size=9_000, prefetch=2)
    with Runtime(data_dir=str(tmp_path), mode="local", shards=2) as rt:
        stats = run(rt, QUERIES[q]().build(), source)
        got = answer(q, rt.read_topic(q, 0, 10 * EVENTS))
    assert stats.input == EVENTS and stats.resumed_from == 0
    check(q, got, tables)


@pytest.mark.parametrize("q", ["q3", "q4", "q5", "q8"])
def test_query_equals_sql_on_ray(q, nexmark, tmp_path, ray_session):
    """Joins and two-stage queries with shards as Ray actors (stages forward actor to actor)."""
    tables, stream = nexmark
    with Runtime(data_dir=str(tmp_path), shards=2) as rt:
        check(q, run_query(rt, q, stream, batch=20_000), tables)


@pytest.mark.parametrize("q", ["q4", "q5", "q7", "q8"])
def test_restart_mid_stream_gives_the_clean_answer(q, nexmark, tmp_path):
    """The driver dies after a few checkpoints; a new runtime resumes from the last commit.

    Topics are at-least-once (results after the last commit are published again), so the
    answer is read from both runs' topics; windows, joins and entity state come back
    from the checkpoint, so nothing is missing, counted twice or fired differently.
    """
    tables, stream = nexmark
    crash_at = stream.num_rows * 5 // 8  # between two checkpoints

    class Crash(Exception):
        pass

    def dying():
        for lo in range(0, stream.num_rows, 6_000):
            if lo >= crash_at:
                raise Crash
            yield stream.slice(lo, 6_000)

    from runtime.streams.sources import IteratorSource

    first = IteratorSource("nexmark", dying)
    with Runtime(data_dir=str(tmp_path), mode="local", shards=2, checkpoint_rows=20_000) as rt:
        with pytest.raises(Crash):
            run(rt, QUERIES[q]().build(), first)
        committed = rt.checkpoints.committed.positions["nexmark"]
        before = rt.read_topic(q, 0, 10 * stream.num_rows)
        rt.stop(checkpoint=False)
    assert 0 < committed < crash_at
    with Runtime(data_dir=str(tmp_path), mode="local", shards=2) as rt:
        stats = run(rt, QUERIES[q]().build(), MemorySource(stream, batch_size=6_000, id="nexmark"))
        assert stats.resumed_from == committed
        after = rt.read_topic(q, 0, 10 * stream.num_rows)
    both = pa.concat_tables([before, after], promote_options="default")
    if q == "q4":  # running averages: the last one per category is the answer
        check(q, answer(q, both), tables)
    else:
        got = answer(q, both)
        distinct = got.group_by(got.column_names).aggregate([])
        check(q, distinct, tables)


def test_script_both_modes_give_the_same_answers(tmp_path):
    """scripts/nexmark.py as users run it: generation inside the run and the pregenerated
    stream, side by side, every figure reported and every answer equal."""
    report = script_json(
        "nexmark.py",
        *("--events", "6000", "--queries", "q0,q7", "--batch", "2500", "--pregenerated"),
        *("--out", str(tmp_path / "out")),
        cwd=tmp_path,
    )
    assert report["config"]["extra_bytes"] is None and report["ray_init_s"] > 0
    for q in ("q0", "q7"):
        modes = report["queries"][q]
        for mode in ("generating", "pregenerated"):
            r = modes[mode]
            assert r["events"] == 6000 and r["events_per_s"] > 0 and r["result_rows"] > 0
            assert r["wall_s"] >= r["start_s"] > 0 and r["wall_s"] >= r["seconds"]
            assert r["vs_flink"] == round(r["events_per_s"] / r["flink_events_per_s"], 2)
        assert modes["pregenerated"]["same_answer"] is True
    q0 = pq.read_table(tmp_path / "out" / "q0.parquet")
    assert q0.num_rows == 6000 * 46 // 50 and pc.min(pc.utf8_length(q0["extra"])).as_py() >= 54
