"""Deterministic synthetic card transactions for the fraud application: the public module.

The world, the event stream, its fraud patterns and concept drift are in
:mod:`actors.fraud.txn_stream` (see its docstring) and re-exported here; this module
adds the file writers (:func:`write_transactions`: Parquet, CSV, JSON lines) and the
generator as a resumable source (:class:`GeneratorSource`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from actors.fraud.txn_stream import (
    CATEGORIES,
    DRIFTS,
    NEW_PATTERN_RATE,
    OLD_KEPT,
    TRANSACTION_SCHEMA,
    TxnGenerator,
    TxnGeneratorConfig,
)
from actors.fraud.txn_stream import _haversine_km as _haversine_km  # noqa: F401 (tests use it)
from runtime.errors import ConfigError

__all__ = [
    "CATEGORIES",
    "DRIFTS",
    "NEW_PATTERN_RATE",
    "OLD_KEPT",
    "TRANSACTION_SCHEMA",
    "GeneratorSource",
    "TxnGenerator",
    "TxnGeneratorConfig",
    "write_transactions",
]


@functools.cache
def _ms_suffix() -> pa.Array:
    # built on first use, not at import: pyarrow imports pandas (0.3 s) for the first array
    # it builds from a list, and every command that loads the fraud app imported this
    return pa.array([f".{i:03d}Z" for i in range(1000)])


def _iso_ts(ts: pa.Array) -> pa.Array:
    """ISO-8601 UTC strings; strftime runs once per distinct second (it costs ~1.4 us a call)."""
    ms = pc.cast(ts, pa.int64()).to_numpy()
    secs, inverse = np.unique(ms // 1000, return_inverse=True)
    text = pc.strftime(pa.array(secs, pa.timestamp("s")), format="%Y-%m-%dT%H:%M:%S")
    return pc.binary_join_element_wise(
        text.take(pa.array(inverse)), _ms_suffix().take(pa.array(ms % 1000)), ""
    )


def _json_lines(batch: pa.RecordBatch) -> pa.Buffer:
    """One JSON object per row, built column-wise; ids and categories need no escaping."""
    parts: list[pa.Array | str] = []
    for i, (name, col) in enumerate(zip(batch.schema.names, batch.columns, strict=True)):
        text = _iso_ts(col) if pa.types.is_timestamp(col.type) else pc.cast(col, pa.string())
        if pa.types.is_string(col.type) or pa.types.is_timestamp(col.type):
            text = pc.binary_join_element_wise('"', text, '"', "")
        parts += [("{" if i == 0 else ",") + f'"{name}":', text]
    lines = pc.binary_join_element_wise(*parts, "}\n", "")
    start, end = np.frombuffer(lines.buffers()[1], np.int32)[
        [lines.offset, lines.offset + len(lines)]
    ]
    return lines.buffers()[2].slice(int(start), int(end - start))


def write_transactions(
    path: str | Path,
    n_events: int,
    config: TxnGeneratorConfig = TxnGeneratorConfig(),  # noqa: B008 (frozen)
    batch_size: int = 100_000,
) -> Path:
    """Write ``n_events`` generated transactions to ``path``; the format follows the suffix.

    ``.parquet`` keeps the schema; ``.csv`` and ``.jsonl``/``.ndjson`` write ``ts`` as an
    ISO-8601 UTC string such as ``2026-01-01T00:00:00.123Z``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".csv", ".jsonl", ".ndjson"):
        raise ConfigError(
            f"unsupported suffix {path.suffix!r} for {path}: use .parquet, .csv, .jsonl or .ndjson"
        )
    batches = TxnGenerator(config).batches(n_events, batch_size)
    if suffix == ".parquet":
        with pq.ParquetWriter(path, TRANSACTION_SCHEMA) as pw:
            for batch in batches:
                pw.write_batch(batch)
    elif suffix == ".csv":
        csv_schema = TRANSACTION_SCHEMA.set(1, pa.field("ts", pa.string()))
        with pacsv.CSVWriter(path, csv_schema) as cw:
            for batch in batches:
                cw.write_batch(batch.set_column(1, "ts", _iso_ts(batch.column(1))))
    else:
        with path.open("wb") as fh:
            for batch in batches:
                fh.write(_json_lines(batch))
    return path


class GeneratorSource:
    """The generator as a resumable source: position p continues the stream at event id p.

    >>> src = GeneratorSource(TxnGeneratorConfig(n_customers=100), n_events=1000, batch_size=600)
    >>> [(b.num_rows, end) for b, end in src.batches(start=200)]
    [(600, 800), (400, 1200)]
    """

    #: ``n_events`` counts from where it resumes, so a demo run again into the same data
    #: folder continues the stream; resumed at p it is not the tail of one fixed stream
    #: (it yields the same rows as that tail, then goes on)
    contract_exempt: ClassVar[dict[str, str]] = {
        "check_resume": "n_events counts from the resume position (a demo run again "
        "continues the stream), so the stream resumed at p is longer than the tail"
    }

    def __init__(
        self,
        config: TxnGeneratorConfig = TxnGeneratorConfig(),  # noqa: B008 (frozen)
        n_events: int = 1_000_000,
        batch_size: int = 50_000,
    ) -> None:
        self.config = config
        self.n_events = n_events
        self.batch_size = batch_size
        self.id = f"generator:seed={config.seed}:customers={config.n_customers}"
        if getattr(config, "drift_at", None) is not None:
            self.id += f":drift={config.drift}@{config.drift_at}"

    def _generator(self) -> TxnGenerator:
        return TxnGenerator(self.config)

    def batches(self, start: int = 0) -> Iterator[tuple[pa.Table, int]]:
        gen = self._generator()
        pos = start
        for rb in gen.batches(self.n_events, self.batch_size, first_event_id=start):
            pos += rb.num_rows
            yield pa.Table.from_batches([rb]), pos
