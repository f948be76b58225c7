"""The partition log's two layers: a per-batch index over chunks of rows.

Small batches are copied together into chunks (each Arrow table costs kilobytes of
objects however few its rows); retention, ages and ``--since`` still work per batch as
published; persisted rows are swapped for memory-mapped ones (``attach``)."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.topics.log import CHUNK_ROWS, PartitionLog
from runtime.topics.topic import Topic


def _rows(start: int, n: int, kind: str = "int") -> pa.Table:
    xs = list(range(start, start + n))
    if kind == "str":
        return pa.table({"x": pa.array(xs, pa.int64()), "s": [f"v{i}" for i in xs]})
    return pa.table({"x": pa.array(xs, pa.int64())})


def _xs(log: PartitionLog, offset: int = 0, max_rows: int = 10**9) -> list[int]:
    out: list[int] = []
    for first, t in log.read(offset, max_rows):
        xs = t.column("x").to_pylist()
        assert xs == list(range(first, first + len(xs)))  # offsets line up with the rows
        out += xs
    return out


def test_tiny_batches_share_chunks_and_keep_their_own_index() -> None:
    log = PartitionLog()
    for i in range(5_000):
        log.append(_rows(3 * i, 3), born=float(i), wall=1000.0 + i)
    assert log.batches() == 5_000  # retention and ages still see every batch
    assert log.chunk_count() <= 15_000 // CHUNK_ROWS + 2  # ...but the rows are a few tables
    assert _xs(log, 7, 5) == [7, 8, 9, 10, 11]
    assert log.offset_at(1000.0 + 2_500) == 7_500  # --since: per batch, not per chunk
    log.expire(max_rows=10**9, max_bytes=None, cutoff=4_000.5)
    assert log.first() == 3 * 4_001  # age: per batch
    assert _xs(log)[:2] == [12_003, 12_004]


def test_retention_releases_whole_chunks_only_when_all_their_batches_are_gone() -> None:
    log = PartitionLog()
    for i in range(4 * CHUNK_ROWS // 4):
        log.append(_rows(4 * i, 4), born=0.0)
    sealed = len(log.chunks)
    assert sealed >= 3
    log.expire(max_rows=2 * CHUNK_ROWS + 2, max_bytes=None, cutoff=None)
    assert log.rows <= 2 * CHUNK_ROWS + 2 + 3
    assert log.chunk_head >= 1  # the oldest chunks went
    assert log.chunks[0].num_rows == 0  # released at once (compacted later)
    assert len(_xs(log)) == log.rows


def test_a_large_batch_is_kept_without_a_copy_and_a_new_schema_starts_a_chunk() -> None:
    log = PartitionLog()
    log.append(_rows(0, 2), born=0.0)
    big = _rows(2, CHUNK_ROWS + 5)
    log.append(big, born=0.0)
    assert any(c is big for c in log.chunks)
    log.append(_rows(log.next, 3, "str"), born=0.0)
    log.append(_rows(log.next, 2), born=0.0)
    schemas = [t.schema.names for _, t in log.read(0, 10**9)]
    assert ["x", "s"] in schemas and schemas[-1] == ["x"]
    assert _xs(log) == list(range(log.next))


def test_topic_memory_does_not_grow_per_publish() -> None:
    """The soak's shard growth: tens of thousands of few-row publishes."""
    t = Topic("alerts")
    for i in range(20_000):
        t.publish(pa.table({"x": [i, i], "why": ["far from home", "new device"]}))
    st_ = t.stats()
    assert st_["retained_rows"] == 40_000 and st_["partitions"][0]["batches"] == 20_000
    assert t._logs[0].chunk_count() <= 40_000 // CHUNK_ROWS + 2


def test_a_persisted_log_of_tiny_batches_is_read_back_as_few_record_batches(tmp_path) -> None:
    """A segment file written with one Arrow record batch per published batch came back
    from disk as that many record batches: ~1.5 KB of heap objects each, which for a
    shard's alerts log outweighed the rows (154 MB held for 5 reads of 20k batches)."""
    t = Topic("alerts", log_dir=str(tmp_path))
    for i in range(3_000):
        t.publish(pa.table({"x": [i, i], "why": ["far from home", "new device"]}))
        if i % 1_000 == 999:  # three persists: the last segment is rewritten twice
            t.snapshot()
    assert t._logs[0].chunk_count() <= 2
    back = Topic("alerts", log_dir=str(tmp_path))
    back.restore(t.snapshot())
    rows = back.read(0, max_rows=10**6)
    assert rows.column("x").to_pylist() == [i // 2 for i in range(6_000)]
    assert back._logs[0].chunk_count() <= 2 and rows.column("x").num_chunks <= 2
    assert back.stats()["partitions"][0]["batches"] == 3_000  # the index stays per batch


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("append"), st.integers(1, 3_000), st.sampled_from(["int", "str"])),
            st.tuples(st.just("expire"), st.integers(1, 20_000), st.none()),
            st.tuples(st.just("persist"), st.none(), st.none()),
            st.tuples(st.just("read"), st.integers(0, 30_000), st.integers(0, 9_000)),
        ),
        max_size=40,
    )
)
def test_log_reads_what_a_plain_list_of_rows_would(ops: list) -> None:
    log, persisted = PartitionLog(), 0
    for op, a, b in ops:
        if op == "append":
            log.append(_rows(log.next, a, b), born=0.0)
        elif op == "expire":
            log.expire(max_rows=a, max_bytes=None, cutoff=None)
            assert log.rows == log.next - log.first()
            assert log.rows >= 1 or log.next == 0
        elif op == "persist":  # as durable.persist: the rows since the last persist, copied
            start = max(persisted, log.first())
            new = log.retained(start) if start < log.next else []
            if new:
                rows = pa.concat_tables([t for _, t, _ in new], promote_options="default")
                log.attach(new[0][0], rows)
            persisted = log.next
        else:
            got = _xs(log, a, b)
            lo = max(a, log.first())
            assert got == list(range(lo, min(log.next, lo + b)))
    assert _xs(log) == list(range(log.first(), log.next))
