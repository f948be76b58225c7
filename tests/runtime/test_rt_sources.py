"""runtime.streams.sources: file replay with positions and resume, bad input, paced iterators."""

from __future__ import annotations

import doctest
import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

import runtime.streams.sources as sources_module
from runtime.errors import ConfigError, SchemaError
from runtime.streams.schema import Column, EventSchema
from runtime.streams.sources import BAD_JSON, FileSource, IteratorSource, Paced, rows_to_table

N = 1000
SCHEMA = EventSchema(
    "ev", [Column("id", "int64"), Column("amount", "float64"), Column("name", "string")]
)


def sample() -> pa.Table:
    return pa.table(
        {
            "id": pa.array(range(N), pa.int64()),
            "amount": [i / 4 for i in range(N)],
            "name": [f"n{i}-ü" for i in range(N)],
        }
    )


def write(tmp_path: Path, fmt: str) -> Path:
    t = sample()
    path = tmp_path / f"events.{fmt}"
    if fmt == "parquet":
        pq.write_table(t, path, row_group_size=128)
    elif fmt == "csv":
        pacsv.write_csv(t, path)
    else:
        with open(path, "w", encoding="utf-8") as f:
            for r in t.to_pylist():
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def collect(src, start: int = 0) -> tuple[pa.Table | None, list[int]]:
    parts, ends = [], []
    for batch, end in src.batches(start=start):
        parts.append(batch)
        ends.append(end)
    return (pa.concat_tables(parts, promote_options="permissive") if parts else None), ends


def validate_each(src, start: int = 0) -> tuple[pa.Table, pa.Table, list[int]]:
    """Validate batch by batch, as the pipeline does (types may differ between batches)."""
    oks, deads, ends, pos = [], [], [], start
    for batch, end in src.batches(start=start):
        ok, dead = SCHEMA.validate(batch, source="s", first_position=pos)
        oks.append(ok)
        deads.append(dead)
        ends.append(end)
        pos = end
    return pa.concat_tables(oks), pa.concat_tables(deads), ends


def test_doctests() -> None:
    assert doctest.testmod(sources_module).failed == 0


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_file_source_reads_everything_with_positions(tmp_path: Path, fmt: str) -> None:
    path = write(tmp_path, fmt)
    src = FileSource(path, batch_size=100)
    table, ends = collect(src)
    assert table.num_rows == N
    assert ends == sorted(ends) and ends[-1] == N
    if fmt != "csv":  # CSV batches follow the reader's 4 MB blocks: one batch here
        assert len(ends) == 10
    ok, dead = SCHEMA.validate(table)
    assert dead.num_rows == 0
    assert ok.equals(sample())


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
@pytest.mark.parametrize("start", [0, 1, 99, 100, 101, 555, 999, N, N + 5])
def test_file_source_resumes_from_a_position(tmp_path: Path, fmt: str, start: int) -> None:
    src = FileSource(write(tmp_path, fmt), batch_size=100)
    batches = list(src.batches(start=start))
    if start >= N:
        assert batches == []
        return
    table = pa.concat_tables([b for b, _ in batches], promote_options="permissive")
    ok, _ = SCHEMA.validate(table)
    assert ok.column("id").to_pylist() == list(range(start, N))
    # each position is the number of rows consumed once the batch is done
    pos = start
    for b, end in batches:
        pos += b.num_rows
        assert end == pos


def test_file_source_id_follows_content(tmp_path: Path) -> None:
    path = write(tmp_path, "csv")
    a, b = FileSource(path), FileSource(path)
    assert a.id == b.id and a.id.startswith("file:events.csv:")
    path.write_text(path.read_text().replace("n5-ü", "n5-x"))
    assert FileSource(path).id != a.id


def test_file_source_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        FileSource(tmp_path / "missing.csv")
    (tmp_path / "e.txt").write_text("x\n")
    with pytest.raises(ConfigError, match="cannot tell the format of e.txt"):
        FileSource(tmp_path / "e.txt")
    src = FileSource(tmp_path / "e.txt", fmt="csv")
    assert sum(b.num_rows for b, _ in src.batches()) == 0


def test_unreadable_parquet_is_a_schema_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(SchemaError, match="cannot read"):
        list(FileSource(path).batches())


def test_csv_with_a_mistyped_value(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text('id,amount,name\n1,2.5,a\n2,abc,b\n3,1.0,"c,d"\n')
    table, ends = collect(FileSource(path))
    assert ends[-1] == 3
    # read as text: nothing is lost at read time
    assert table.schema.field("amount").type == pa.string()
    assert table.column("amount").to_pylist() == ["2.5", "abc", "1.0"]
    ok, dead = SCHEMA.validate(table, source="f", first_position=0)
    assert ok.column("id").to_pylist() == [1, 3]
    assert ok.column("name").to_pylist() == ["a", "c,d"]
    assert dead.column("reason").to_pylist() == ["amount: not a valid float64: 'abc'"]
    assert dead.column("position").to_pylist() == [1]


def test_csv_header_only(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text("id,amount,name\n")
    assert sum(b.num_rows for b, _ in FileSource(path).batches()) == 0
    (tmp_path / "empty.csv").write_text("")
    assert list(FileSource(tmp_path / "empty.csv").batches()) == []


def test_csv_row_with_wrong_field_count_is_not_lost(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text("id,amount,name\n1,2.5,a\n2,1.0\n3,1.0,c,extra\n4,1.0,d\n")
    table, ends = collect(FileSource(path))
    assert table.num_rows == 4
    assert ends[-1] == 4


def test_jsonl_with_a_broken_line(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    lines = [
        '{"id": 1, "amount": 2.5, "name": "a"}',
        '{"id": 2, "amount": ',  # broken
        "",  # blank lines are skipped, not counted
        "[1, 2]",  # valid JSON but not an object
        '{"id": 4, "amount": "7", "name": "d", "more": true}',
    ]
    path.write_text("\n".join(lines) + "\n")
    batches = list(FileSource(path, batch_size=2).batches())
    assert [end for _, end in batches] == [2, 4]
    first, second = batches[0][0], batches[1][0]
    assert first.column(BAD_JSON).to_pylist() == [None, '{"id": 2, "amount": \n']
    assert second.column(BAD_JSON).to_pylist() == ["[1, 2]\n", None]
    assert first.column("id").to_pylist() == [1, None]
    assert second.column("id").to_pylist() == [None, 4]
    ok, dead, _ = validate_each(FileSource(path, batch_size=2))
    assert ok.column("id").to_pylist() == [1, 4]
    assert ok.column("amount").to_pylist() == [2.5, 7.0]
    assert dead.column("position").to_pylist() == [1, 2]
    assert (
        dead.column("reason").to_pylist() == ["record: malformed (not parseable as a record)"] * 2
    )
    assert BAD_JSON in json.loads(dead.column("raw")[0].as_py())
    # resume after the broken line
    ok, dead, ends = validate_each(FileSource(path, batch_size=2), start=2)
    assert ends == [4]
    assert ok.column("id").to_pylist() == [4]
    assert dead.column("position").to_pylist() == [2]


def test_rows_to_table_mixed_types_fall_back_to_text() -> None:
    t = rows_to_table([{"a": 1, "b": "x"}, {"a": "two", "c": [1]}, {"a": True, "b": None}])
    assert t.column_names == ["a", "b", "c"]
    assert t.column("a").to_pylist() == ["1", "two", "true"]
    assert t.column("b").to_pylist() == ["x", None, None]
    assert t.column("c").to_pylist() == [None, [1], None]
    big = rows_to_table([{"n": 2**70}, {"n": 1}])
    assert big.column("n").to_pylist() == [str(2**70), "1"]


# -- IteratorSource --------------------------------------------------------------------------
def gen(n_batches: int = 5, size: int = 100):
    def make():
        for i in range(n_batches):
            if i % 2:
                yield pa.record_batch({"x": list(range(i * size, (i + 1) * size))})
            else:
                yield pa.table({"x": list(range(i * size, (i + 1) * size))})

    return make


def test_iterator_source_positions_and_resume() -> None:
    src = IteratorSource("gen", gen())
    table, ends = collect(src)
    assert ends == [100, 200, 300, 400, 500]
    assert table.column("x").to_pylist() == list(range(500))
    table, ends = collect(src, start=250)  # restartable: make() is called again
    assert ends == [300, 400, 500]
    assert table.column("x").to_pylist() == list(range(250, 500))


def test_iterator_source_is_paced_by_rate() -> None:
    src = Paced(IteratorSource("gen", gen()), rate=2_000)  # 500 rows at 2000 rows/s
    t0 = time.perf_counter()
    stamps = []
    for _, end in src.batches():
        stamps.append((end, time.perf_counter() - t0))
    elapsed = time.perf_counter() - t0
    # the last batch starts once 400 rows' worth of time (0.2 s) has passed
    assert 0.19 <= elapsed < 1.5
    for end, at in stamps:
        assert at >= (end - 100) / 2_000 - 0.01
    # unpaced, it is immediate
    t0 = time.perf_counter()
    list(IteratorSource("gen", gen()).batches())
    assert time.perf_counter() - t0 < 0.1


def test_iterator_source_pacing_counts_from_the_resume_point() -> None:
    src = Paced(IteratorSource("gen", gen()), rate=2_000)
    t0 = time.perf_counter()
    ends = [end for _, end in src.batches(start=300)]
    assert ends == [400, 500]
    assert 0.04 <= time.perf_counter() - t0 < 1.0
