"""The durable topic log: rows written behind at each checkpoint, loaded back at a restart
(uncommitted segments cut away), retention on disk by whole segments, corrupt files set
aside, `edgecore tail --from/--since` on a data folder and on a running `serve` that was
SIGKILLed and started again."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_transactions
from live_helpers import Serve, ndjson, post

from runtime import Runtime
from runtime.cluster.handles import resolve
from runtime.topics.segments import SegmentError, read_segment, segment_files, topic_dir
from runtime.topics.topic import Topic


class Clock:
    """Both of a topic's clocks, moved by hand (the wall clock starts at a real date)."""

    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def mono(self) -> float:
        return self.t - 1_600_000_000.0

    def wall(self) -> float:
        return self.t


def topic(folder: Path, clock: Clock | None = None, **kw) -> Topic:
    clock = clock or Clock()
    return Topic(
        "news", kw.pop("rows", 1_000_000), kw.pop("size", None), kw.pop("age", None),
        clock.mono, log_dir=str(folder), wall_clock=clock.wall, **kw,
    )  # fmt: skip


def files(folder: Path, partition: int = 0) -> list[str]:
    return [p.name for p in segment_files(topic_dir(folder, "news", partition))]


def saved(t: Topic) -> dict:
    """A snapshot as a checkpoint commits it (through JSON)."""
    return json.loads(json.dumps(t.snapshot()))


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_restart_keeps_rows_and_a_group_resumes_without_skipping(tmp_path):
    """publish, checkpoint, stop, start: read(0) returns every row; a group behind gets
    everything after its commit (0 skipped) and can seek back to any retained offset."""
    with Runtime(data_dir=str(tmp_path), mode="local") as rt:
        news = rt.topic("news")
        resolve([news.publish(pa.table({"x": list(range(10))}))])
        resolve([news.publish(pa.table({"x": list(range(10, 15))}))])
        resolve([news.commit("reader", 4)])
        rt.checkpoint()
        resolve([news.publish(pa.table({"x": [99]}))])  # after the cut: replay would redo it
    with Runtime(data_dir=str(tmp_path), mode="local") as rt:
        news = rt.topic("news")
        assert rt.read_topic("news").column("x").to_pylist() == list(range(15))
        got = resolve([news.poll("reader")])[0]
        assert got.column("_offset").to_pylist() == list(range(4, 15))
        assert resolve([news.groups()])[0]["reader"]["skipped"] == 0
        assert resolve([news.seek("reader", 2)])[0] == 2
        assert resolve([news.poll("reader", 3)])[0].column("x").to_pylist() == [2, 3, 4]
        assert resolve([news.end_offsets()])[0] == {0: 15}


def test_colocated_partitions_keep_their_rows(tmp_path):
    """A kind's output topic lives in its shards; each shard's partition is on disk too."""
    from test_topics_runtime import events, pipeline

    with Runtime(data_dir=str(tmp_path), mode="local", shards=2) as rt:
        pipeline(events(300)).run(rt, end_of_stream=False)
        before = rt.read_topic("w")
        rt.checkpoint()
    assert before.num_rows > 0 and set(before.column("_partition").to_pylist()) == {0, 1}
    with Runtime(data_dir=str(tmp_path), mode="local", shards=2) as rt:
        pipeline([]).run(rt, end_of_stream=False)
        assert rt.read_topic("w").equals(before)


def test_segment_of_an_uncommitted_checkpoint_is_cut_away(tmp_path):
    t = topic(tmp_path, segment_bytes=1)  # a file per checkpoint
    t.publish(pa.table({"x": [1, 2]}))
    committed = saved(t)
    t.publish(pa.table({"x": [3]}))
    t.snapshot()  # written, its commit never lands
    assert files(tmp_path) == [f"{0:020d}.arrow", f"{2:020d}.arrow"]
    again = topic(tmp_path, segment_bytes=1)
    again.restore(committed)
    assert files(tmp_path) == [f"{0:020d}.arrow"]
    # replay publishes offset 2 again, maybe other rows: they are what the log keeps
    again.publish(pa.table({"x": [30]}))
    assert again.read(0).column("x").to_pylist() == [1, 2, 30]
    # a rewritten last segment (small ones take the next batches) is cut back, too
    merged = topic(tmp_path / "m")
    merged.publish(pa.table({"x": [1]}))
    committed = saved(merged)
    merged.publish(pa.table({"x": [2]}))
    merged.snapshot()
    seg, _ = read_segment(topic_dir(tmp_path / "m", "news", 0) / f"{0:020d}.arrow")
    assert seg.end == 2
    back = topic(tmp_path / "m")
    back.restore(committed)
    seg, rows = read_segment(topic_dir(tmp_path / "m", "news", 0) / f"{0:020d}.arrow")
    assert seg.end == 1 and rows.column("x").to_pylist() == [1]


@pytest.mark.parametrize("limit", ["rows", "bytes", "age"])
def test_retention_deletes_whole_segments_on_disk(tmp_path, limit):
    clock = Clock()
    kw = {"rows": 25} if limit == "rows" else {"size": 25 * 8} if limit == "bytes" else {"age": 60}
    t = topic(tmp_path, clock, segment_bytes=1, **kw)
    for i in range(6):  # 6 segments of 10 rows, a minute apart
        t.publish(pa.table({"x": list(range(i * 10, i * 10 + 10))}))
        t.snapshot()
        clock.t += 50
    left = files(tmp_path)
    # rows keep at least 25 (3 batches), bytes at most 200 (2), age the last minute (2)
    keep = [30, 40, 50] if limit == "rows" else [40, 50]
    assert left == [f"{n:020d}.arrow" for n in keep]
    assert t.first_offset() == int(left[0][:20])
    state = saved(t)
    clock.t += 3600  # an hour later, the wall clock says: age retention applies at once
    again = topic(tmp_path, clock, segment_bytes=1, **kw)
    again.restore(state)
    want = 50 if limit == "age" else keep[0]  # age: the newest batch is always kept
    assert again.first_offset() == want and again.end_offsets() == {0: 60}
    again.snapshot()
    assert files(tmp_path) == [f"{n:020d}.arrow" for n in keep if n >= want]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "foreign-format"])
def test_a_corrupt_segment_is_set_aside_and_the_log_starts_after_it(tmp_path, damage):
    """Skip with a warning, never a crash: the log is derived data, and refusing to start
    would stop the whole runtime; rows lost count as skipped for the groups behind."""
    t = topic(tmp_path, segment_bytes=1)
    for i in range(3):
        t.publish(pa.table({"x": [i, i]}))
        t.snapshot()
    t.commit("behind", 0)
    state = saved(t)
    bad = topic_dir(tmp_path, "news", 0) / f"{2:020d}.arrow"
    if damage == "truncated":
        bad.write_bytes(bad.read_bytes()[:-40])
    elif damage == "garbage":
        bad.write_bytes(b"ARROW1\x00\x00" + os.urandom(300))
    else:  # a well-formed file of another format version
        _, rows = read_segment(bad)
        info = {"format": 99, "first": 2, "batches": [[2, 2, 0.0]]}
        rows = rows.replace_schema_metadata({b"edgecore.segment": json.dumps(info)})
        with pa.OSFile(str(bad), "wb") as f, pa.ipc.new_file(f, rows.schema) as w:
            w.write_table(rows)
    again = topic(tmp_path, segment_bytes=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again.restore(state)
    assert any("moved to" in str(w.message) for w in caught), [str(w.message) for w in caught]
    assert (bad.parent / (bad.name + ".corrupt")).exists()
    assert again.read(0).column("_offset").to_pylist() == [4, 5]
    assert again.poll("behind").column("x").to_pylist() == [2, 2]
    assert again.groups()["behind"]["skipped"] == 4


def test_a_segment_naming_offsets_past_int64_is_set_aside_not_a_crash(tmp_path):
    """A file with a 20-digit name and a consistent index whose offsets do not fit in 64
    bits (crafted, or from a foreign writer): refused as a segment, so the log's load sets
    it aside instead of failing the topic's restore."""
    t = topic(tmp_path, segment_bytes=1)
    t.publish(pa.table({"x": [1, 2]}))
    state = saved(t)
    folder = topic_dir(tmp_path, "news", 0)
    _, rows = read_segment(segment_files(folder)[0])
    huge = 10**19  # 20 digits, over 2**63
    info = {"format": 1, "first": huge, "rows": 2, "batches": [[huge, 2, 0.0]]}
    rows = rows.replace_schema_metadata({b"edgecore.segment": json.dumps(info)})
    bad = folder / f"{huge:020d}.arrow"
    with pa.OSFile(str(bad), "wb") as f, pa.ipc.new_file(f, rows.schema) as w:
        w.write_table(rows)
    with pytest.raises(SegmentError, match="malformed"):
        read_segment(bad)
    again = topic(tmp_path, segment_bytes=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again.restore(state)
    assert (bad.parent / (bad.name + ".corrupt")).exists()  # as any corrupt segment
    again.publish(pa.table({"x": [3]}))  # and the topic goes on, its offsets too
    assert again.read(2).column("x").to_pylist() == [3]


def test_tail_reads_a_data_folder_from_an_offset_or_a_time(tmp_path):
    """`tail --data` reads the committed segments without Ray; hostile values exit 1."""
    with Runtime(data_dir=str(tmp_path), mode="local") as rt:
        news = rt.topic("news")
        for i in range(3):
            resolve([news.publish(pa.table({"x": [i * 10, i * 10 + 1]}))])
            time.sleep(0.2)  # a distinct publish time per batch
        rt.checkpoint()
        resolve([news.publish(pa.table({"x": [77]}))])  # never committed: not shown
    got = cli("tail", "news", "--data", str(tmp_path), "--from", "3", "--json")
    assert got.returncode == 0, got.stderr
    rows = [json.loads(line) for line in got.stdout.splitlines()]
    assert [(r["_offset"], r["x"]) for r in rows] == [(3, 11), (4, 20), (5, 21)]
    seg, _ = read_segment(segment_files(topic_dir(tmp_path / "_topics", "news", 0))[0])
    since = seg.batches[1][2]  # the second batch's publish time
    iso = datetime.datetime.fromtimestamp(since - 0.05).isoformat()  # local, no offset
    got = cli("tail", "news", "--data", str(tmp_path), "--since", iso, "--limit", "2", "--json")
    assert got.returncode == 0, got.stderr
    assert [json.loads(line)["x"] for line in got.stdout.splitlines()] == [10, 11]
    for bad, says in [
        (["--from", "-1"], "offsets start at 0"),
        (["--from", "abc"], "give an offset"),
        (["--from", "1000"], "past the end"),
        (["--since", "last tuesday"], "ISO-8601"),
        (["--since", "5x"], "ISO-8601"),
        (["--from", "1", "--since", "1h"], "give one of them"),
    ]:
        got = cli("tail", "news", "--data", str(tmp_path), *bad)
        assert got.returncode == 1 and says in got.stderr, (bad, got.stderr)
        assert len(got.stderr.strip().splitlines()) == 1, got.stderr
    got = cli("tail", "nope", "--data", str(tmp_path))
    assert got.returncode == 1 and "'news'" in got.stderr, got.stderr


def test_seek_and_time_lookups_refuse_hostile_values(tmp_path):
    from runtime.errors import ConfigError

    t = topic(tmp_path)
    t.publish(pa.table({"x": [1, 2, 3]}))
    for bad in (-1, 4, "1", 1.5, True):
        with pytest.raises(ConfigError):
            t.seek("g", bad)
    with pytest.raises(ConfigError):
        t.seek("g", {7: 0})
    assert t.offsets_for_time(float("inf")) == {0: 3} and t.offsets_for_time(0) == {0: 0}


@pytest.fixture
def fraud_rows(tmp_path):
    table = pq.read_table(make_transactions(tmp_path / "t.parquet", 3_000, 100))
    out = table.to_pylist()
    for r in out:
        r["ts"] = r["ts"].isoformat()
    return out


def ray_address(serve: Serve, timeout: float = 60) -> str:
    """The GCS address of ``serve``'s own embedded Ray (other Ray clusters may run on this
    machine: ``--address auto`` would pick the newest)."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(serve.proc.pid).children(recursive=True):
            try:
                args = child.cmdline()
            except psutil.NoSuchProcess:
                continue
            if not args or not args[0].endswith("gcs_server"):
                continue
            opts = dict(a.lstrip("-").split("=", 1) for a in args[1:] if "=" in a)
            session = Path(opts["log_dir"]).parent
            ports = list(session.glob("gcs_server_port_*"))
            if ports and ports[0].read_text().strip():
                return f"{opts['node-ip-address']}:{ports[0].read_text().strip()}"
        time.sleep(0.5)
    raise AssertionError("serve's Ray GCS not found")


def _alerts_group(data: Path, group: str) -> dict | None:
    from runtime.state.store import Store

    saved = Store(data).last_checkpoint().meta.get("topics", {}).get("alerts")
    if not saved:
        return None
    parts = [c["groups"].get(group) for c in saved["colocated"]]
    return None if None in parts else {"committed": [p["committed"][0] for p in parts]}


GROUP = """
import json, sys, time
from runtime.cluster.handles import attach, resolve
from runtime.topics.follow import find_topic
from runtime.errors import ConfigError
attach(sys.argv[2])
for _ in range(120):  # the status board lists the topics hosted in shards once it reports
    try:
        alerts = find_topic("alerts")
        break
    except ConfigError:
        time.sleep(0.5)
if sys.argv[1] == "commit":  # processed the first rows of each partition only
    resolve([alerts.commit("audit", {p: 2 for p in resolve([alerts.end_offsets()])[0]})])
else:
    rows = resolve([alerts.poll("audit", 100_000)])[0]
    print(json.dumps({"offsets": sorted(zip(rows.column("_partition").to_pylist(),
                                            rows.column("_offset").to_pylist())),
                      "groups": resolve([alerts.groups()])[0]["audit"]}))
"""


def test_a_group_behind_at_a_sigkill_gets_every_committed_row_after_restart(tmp_path, fraud_rows):
    data = tmp_path / "d"
    serve = Serve(data)
    try:
        port = serve.wait_http()
        assert post(port, ndjson(fraud_rows))[1]["accepted"] == len(fraud_rows)
        run = subprocess.run([sys.executable, "-c", GROUP, "commit", ray_address(serve)], capture_output=True, text=True, timeout=120)  # fmt: skip
        assert run.returncode == 0, run.stderr[-2000:]
        deadline = time.monotonic() + 60
        while _alerts_group(data, "audit") is None:  # a checkpoint saved the group's commit
            assert time.monotonic() < deadline, serve.stderr[-2000:]
            time.sleep(0.5)
        before = cli("tail", "alerts", "--data", str(data), "--from", "0", "--json")
        serve.kill_everything()  # SIGKILL: serve, Ray's processes, the workers
    finally:
        serve.stop()
    assert before.returncode == 0, before.stderr
    committed = [json.loads(line) for line in before.stdout.splitlines()]
    assert len(committed) > 4
    serve = Serve(data)
    try:
        serve.wait_http()
        run = subprocess.run([sys.executable, "-c", GROUP, "poll", ray_address(serve)], capture_output=True, text=True, timeout=120)  # fmt: skip
        assert run.returncode == 0, run.stderr[-2000:]
        for _ in range(3):  # attaching gives up after 8 s: the machine may be that busy
            tail = cli("tail", "alerts", "--address", ray_address(serve), "--from", "2", "--json",
                       "--idle-timeout", "5")  # fmt: skip
            if "did not answer" not in tail.stderr:
                break
    finally:
        serve.stop()
    got = json.loads(run.stdout.splitlines()[-1])
    assert got["groups"]["skipped"] == 0
    polled = [tuple(o) for o in got["offsets"]]
    assert set(polled) >= {(r["_partition"], r["_offset"]) for r in committed if r["_offset"] >= 2}
    for p in {p for p, _ in polled}:  # each partition from the group's commit on, no gap
        mine = sorted(o for q, o in polled if q == p)
        assert mine == list(range(2, mine[-1] + 1)), (p, mine[:5])
    assert tail.returncode == 0, tail.stderr[-2000:]
    shown = {(r["_partition"], r["_offset"]): r for r in map(json.loads, tail.stdout.splitlines())}
    for r in committed:  # the rows after a restart are the rows committed before it
        if r["_offset"] >= 2:
            assert shown[(r["_partition"], r["_offset"])] == r


def test_a_segment_of_many_small_batches_indexes_them_in_little_memory(tmp_path):
    """The soak's alerts averaged 3.4 rows a batch: a retained log holds hundreds of
    thousands of batches, and each segment's index of them lives as long as the file.
    As tuples it took 72 bytes a batch written (this test then fails); it must stay near
    the 24 bytes of its values, and read back equal."""
    import tracemalloc

    from runtime.topics.segments import write_segment

    n = 100_000
    one = pa.table({"x": [1]})
    batches = [(i, one, 1_700_000_000.0 + i) for i in range(n)]
    tracemalloc.start()
    seg = write_segment(tmp_path, "alerts", 0, batches)
    held = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(True, "*runtime/topics/segments.py")]
    )
    tracemalloc.stop()
    per_batch = sum(s.size for s in held.statistics("filename")) / n
    assert per_batch < 40, f"{per_batch:.0f} bytes a batch held by the segment's index"
    again, rows = read_segment(seg.path)
    assert seg.end == n and rows.num_rows == n and again.batches == seg.batches
    assert again.batches[-1] == (n - 1, 1, 1_700_000_000.0 + n - 1)
