"""Sources yield Arrow batches together with their position, so a restart can resume.

A position is the number of rows consumed from the start of the source; the
checkpoint stores it under the source's ``id``. File sources read Parquet, CSV
and JSON lines without trusting their types: a mistyped value becomes a dead
letter at validation, it never aborts the read.

>>> import tempfile, os, pyarrow as pa, pyarrow.parquet as pq
>>> path = os.path.join(tempfile.mkdtemp(), "e.parquet")
>>> pq.write_table(pa.table({"x": list(range(5))}), path)
>>> src = FileSource(path, batch_size=2)
>>> [(b.num_rows, end) for b, end in src.batches(start=1)]
[(1, 2), (2, 4), (1, 5)]
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from runtime.errors import ConfigError, SchemaError
from runtime.streams.schema import MALFORMED, MALFORMED_WHY, MAX_RAW_CHARS, NESTED

FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
BAD_JSON = MALFORMED  # a JSON line that is not an object


class Source(Protocol):
    id: str

    def batches(self, start: int = 0) -> Iterator[tuple[pa.Table, int]]:
        """Yield (rows, position after them), beginning after ``start`` rows."""
        ...


class FileSource:
    """A recorded stream in a file; ``id`` changes when the file's content changes."""

    def __init__(self, path: str | Path, batch_size: int = 100_000, fmt: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"no such file: {self.path}")
        self.fmt = fmt or FORMATS.get(self.path.suffix.lower())
        if self.fmt is None:
            raise ConfigError(
                f"cannot tell the format of {self.path.name}: use one of {sorted(FORMATS)} as suffix"
            )
        self.batch_size = batch_size
        self.id = f"file:{self.path.name}:{_fingerprint(self.path)}"

    def columns(self) -> list[str] | None:
        """The file's columns, from its header alone (Parquet footer, CSV first line);
        None for JSON lines, whose records each name their own fields."""
        try:
            if self.fmt == "parquet":
                return list(pq.read_schema(self.path).names)
            if self.fmt == "csv":
                with open(self.path, newline="", encoding="utf-8", errors="replace") as f:
                    header = next(csv.reader(f), None)
                return header or None  # an empty file: no rows to refuse (as replay reads it)
        except (pa.ArrowInvalid, OSError) as err:
            raise SchemaError(f"cannot read {self.path} as {self.fmt}: {err}") from err
        return None

    def batches(self, start: int = 0) -> Iterator[tuple[pa.Table, int]]:
        pos = 0
        for batch in self._read():
            end = pos + batch.num_rows
            if end > start:
                yield batch.slice(max(0, start - pos)), end
            pos = end

    def _read(self) -> Iterator[pa.Table]:
        try:
            if self.fmt == "parquet":
                pf = pq.ParquetFile(self.path)
                for rb in pf.iter_batches(batch_size=self.batch_size):
                    yield pa.Table.from_batches([rb])
            elif self.fmt == "csv":
                yield from self._read_csv()
            else:
                yield from self._read_jsonl()
        except (pa.ArrowInvalid, OSError) as err:
            raise SchemaError(f"cannot read {self.path} as {self.fmt}: {err}") from err

    def _read_csv(self) -> Iterator[pa.Table]:
        with open(self.path, newline="", encoding="utf-8", errors="replace") as f:
            header = next(csv.reader(f), None)
        if not header:
            return
        broken: list[str] = []

        def keep_broken(row: pacsv.InvalidRow) -> str:
            broken.append((row.text or "")[:4096])  # becomes a dead letter, not a silent skip
            return "skip"

        reader = pacsv.open_csv(
            self.path,
            read_options=pacsv.ReadOptions(block_size=1 << 22),
            # everything as text: types are checked row by row at validation
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in header}),
            parse_options=pacsv.ParseOptions(invalid_row_handler=keep_broken),
        )
        buf: list[pa.RecordBatch] = []
        n = 0
        for rb in reader:
            buf.append(rb)
            n += rb.num_rows
            if n >= self.batch_size:
                yield pa.Table.from_batches(buf)
                buf, n = [], 0
            if broken:
                yield pa.table({MALFORMED: pa.array(broken, pa.string())})
                broken.clear()
        if buf:
            yield pa.Table.from_batches(buf)

    def _read_jsonl(self) -> Iterator[pa.Table]:
        rows: list[dict] = []
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    rows.append(obj if isinstance(obj, dict) else {BAD_JSON: line[:4096]})
                except json.JSONDecodeError:
                    rows.append({BAD_JSON: line[:4096]})
                if len(rows) >= self.batch_size:
                    yield rows_to_table(rows)
                    rows = []
        if rows:
            yield rows_to_table(rows)


def rows_to_table(rows: list[dict]) -> pa.Table:
    """Columns from JSON-like dicts; a column with mixed types falls back to text.

    An object or array in such a column becomes its JSON text, and the row says so in
    :data:`~runtime.streams.schema.NESTED`: validation refuses it where a value belongs. A row
    with text that cannot be UTF-8 (JSON's ``"\\ud800"``: a lone surrogate, in a key or
    a value) is a malformed record. The table has a row for every dict, even when none
    has a field.

    >>> t = rows_to_table([{"id": "a"}, {"id": {"x": 1}}, {"id": 7}])
    >>> t.column("id").to_pylist(), t.column("_edgecore_nested").to_pylist()
    (['a', '{"x": 1}', '7'], [None, 'id', None])
    >>> rows_to_table([{"id": "\\ud800"}, {}]).to_pylist()[0]["_edgecore_malformed_why"]
    'not UTF-8 (a lone surrogate)'
    >>> rows_to_table([{}, {}]).num_rows
    2
    >>> rows_to_table([{"x": 1.5}, {"x": True}]).column("x").to_pylist()
    ['1.5', 'true']
    """
    names: dict[str, None] = {}
    for r in rows:
        names.update(dict.fromkeys(r))
    broken: dict[int, None] = {}  # rows with text that is not UTF-8
    for name in names:
        if not _is_utf8(name):
            broken.update(dict.fromkeys(i for i, r in enumerate(rows) if name in r))
    cols = {}
    nested: dict[int, list[str]] = {}
    for name in names:
        if not _is_utf8(name):
            continue
        vals = [r.get(name) for r in rows]
        try:
            arr = pa.array(vals)
            # Arrow takes true as 1.0 among floats: a boolean is not a number, so text
            if not pa.types.is_floating(arr.type) or not any(v is True or v is False for v in vals):
                cols[name] = arr
                continue
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, UnicodeEncodeError):
            pass
        bad = [i for i, v in enumerate(vals) if isinstance(v, str) and not _is_utf8(v)]
        if bad:
            broken.update(dict.fromkeys(bad))
            for i in bad:
                vals[i] = None
            try:
                cols[name] = pa.array(vals)
                continue
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                pass
        text = []
        for i, v in enumerate(vals):
            if isinstance(v, (dict, list)):
                nested.setdefault(i, []).append(name)
            text.append(v if v is None or isinstance(v, str) else _as_text(v))
        cols[name] = pa.array(text, pa.string())
    if nested:
        cols[NESTED] = pa.array(
            [",".join(nested[i]) if i in nested else None for i in range(len(rows))], pa.string()
        )
    if broken:  # (rows already malformed keep their text and reason)
        raw = cols[MALFORMED].to_pylist() if MALFORMED in cols else [None] * len(rows)
        why = cols[MALFORMED_WHY].to_pylist() if MALFORMED_WHY in cols else [None] * len(rows)
        for i in broken:
            if raw[i] is None:
                raw[i] = _as_text(rows[i])  # JSON text escapes the surrogates
                why[i] = "not UTF-8 (a lone surrogate)"
        cols[MALFORMED] = pa.array([r if r is None else str(r) for r in raw], pa.string())
        cols[MALFORMED_WHY] = pa.array([w if w is None else str(w) for w in why], pa.string())
    if not cols:  # objects without fields: still one row each (each lacks every column)
        return pa.table({MALFORMED: pa.nulls(len(rows), pa.string())})
    return pa.table(cols)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _as_text(v: object) -> str:
    try:
        return json.dumps(v, default=str)[:MAX_RAW_CHARS]
    except (ValueError, RecursionError):  # NaN is fine; a cycle or absurd depth is not
        return "<unprintable>"


def rebatch(chunks: Iterator[pa.RecordBatch], batch_size: int) -> Iterator[pa.RecordBatch]:
    """Record batches of exactly ``batch_size`` rows (the last may be shorter) from chunks
    of any size: generators draw fixed chunks (so their output does not depend on the
    batch size asked for) and hand them out re-sliced.

    >>> chunks = iter([pa.record_batch({"x": list(range(5))}), pa.record_batch({"x": [5, 6]})])
    >>> [b.num_rows for b in rebatch(chunks, 3)]
    [3, 3, 1]
    """
    pending: list[pa.RecordBatch] = []
    rows = 0
    for chunk in chunks:
        pending.append(chunk)
        rows += chunk.num_rows
        if rows < batch_size:
            continue
        merged = pa.Table.from_batches(pending).combine_chunks().to_batches()[0]
        full = rows - rows % batch_size
        for off in range(0, full, batch_size):
            yield merged.slice(off, batch_size)
        pending, rows = ([merged.slice(full)], rows - full) if rows > full else ([], 0)
    if rows:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


class Paced:
    """Wrap a source so it yields no faster than ``rate`` rows per second.

    >>> src = Paced(IteratorSource("mem", lambda: iter([pa.table({"x": [1, 2]})])), rate=1e6)
    >>> src.id, [end for _, end in src.batches()]
    ('mem', [2])
    """

    def __init__(self, source: Source, rate: float) -> None:
        if rate <= 0:
            raise ConfigError(f"rate must be > 0 events/s, not {rate}")
        self.source, self.rate, self.id = source, rate, source.id

    def batches(self, start: int = 0) -> Iterator[tuple[pa.Table, int]]:
        t0, sent = time.perf_counter(), 0
        for batch, end in self.source.batches(start):
            wait = sent / self.rate - (time.perf_counter() - t0)
            if wait > 0:
                time.sleep(wait)
            sent += batch.num_rows
            yield batch, end


class IteratorSource:
    """Batches from a function (e.g. a generator); wrap it in :class:`Paced` to pace it.

    ``make`` is called again on a restart and the rows before ``start`` are skipped.
    """

    def __init__(self, id: str, make: Callable[[], Iterator[pa.Table | pa.RecordBatch]]) -> None:
        self.id = id
        self.make = make

    def batches(self, start: int = 0) -> Iterator[tuple[pa.Table, int]]:
        pos = 0
        for b in self.make():
            t = b if isinstance(b, pa.Table) else pa.Table.from_batches([b])
            end = pos + t.num_rows
            if end > start:
                yield t.slice(max(0, start - pos)), end
            pos = end


def _fingerprint(path: Path) -> str:
    """Size plus a hash of the head and tail: cheap, and changes when the file does."""
    size = path.stat().st_size
    h = hashlib.sha1(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 16))
        if size > 1 << 17:
            f.seek(size - (1 << 16))
            h.update(f.read())
    return h.hexdigest()[:16]
