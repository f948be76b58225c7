"""Event schemas and vectorized validation: every row is accepted or dead-lettered with a reason.

A whole input that cannot fit (a required column is absent) raises :class:`SchemaError`;
single bad rows never raise. Checks run column-wise over the batch; only the few
refused rows are turned into Python objects, to record them as raw JSON.

>>> import pyarrow as pa
>>> schema = EventSchema("clicks", [Column("id", "int64"), Column("amount", "float64", min=0)])
>>> ok, dead = schema.validate(pa.table({"id": ["1", "x"], "amount": [2.5, 1.0]}))
>>> ok.to_pydict()
{'id': [1], 'amount': [2.5]}
>>> dead.column("reason").to_pylist()
["id: not a valid int64: 'x'"]
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from runtime.errors import ConfigError, SchemaError
from runtime.streams.coerce import coerce, unconvertible

_TYPES = {
    "int64": pa.int64(),
    "float64": pa.float64(),
    "string": pa.string(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("ms"),
}

#: the table and topic refused rows go to, with one schema for every step
DEAD_LETTERS = "dead_letters"
DEAD_LETTER_SCHEMA = pa.schema(
    [
        ("dead_letter_id", pa.string()),
        ("source", pa.string()),
        ("position", pa.int64()),
        ("step", pa.string()),
        ("reason", pa.string()),
        ("raw", pa.string()),
        ("received_at", pa.timestamp("ms")),
    ]
)
MAX_RAW_CHARS = 4096
#: column a source fills with the text of a record it could not parse at all
MALFORMED = "_edgecore_malformed"
#: and, where it knows, why (e.g. "not UTF-8"): the dead letter's reason names it
MALFORMED_WHY = "_edgecore_malformed_why"
#: the columns of a row that held an object or array where text was read (comma-separated)
NESTED = "_edgecore_nested"


@dataclass(frozen=True)
class Column:
    """One field of an event: its type and the checks a value must pass.

    ``min``/``max`` bound numbers (NaN and infinities are always refused);
    ``max_len`` bounds strings; ``choices`` lists the values a string may take (an event
    type); ``required=False`` lets the column be absent or null.
    """

    name: str
    type: str
    required: bool = True
    min: float | None = None
    max: float | None = None
    max_len: int | None = None
    choices: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.type not in _TYPES:
            raise ConfigError(
                f"column {self.name!r}: unknown type {self.type!r}; use one of {sorted(_TYPES)}"
            )
        if self.choices is not None and (self.type != "string" or not self.choices):
            raise ConfigError(f"column {self.name!r}: choices need a string column and values")

    @property
    def arrow_type(self) -> pa.DataType:
        return _TYPES[self.type]


@dataclass(frozen=True)
class EventSchema:
    """A named event schema: the canonical column order and types after validation."""

    name: str
    columns: list[Column] = field(default_factory=list)

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema([(c.name, c.arrow_type) for c in self.columns])

    def require(self, names: list[str], where: str = "input") -> None:
        """SchemaError unless ``names`` (a table's or a file header's columns) hold every
        required column: a file can be refused from its header, before anything starts."""
        missing = [c.name for c in self.columns if c.required and c.name not in names]
        if missing:
            raise SchemaError(
                f"{where} for {self.name!r} lacks required column(s) {missing}; "
                f"it has {list(names)}. Expected columns: {[c.name for c in self.columns]}"
            )

    def validate(
        self,
        table: pa.Table | pa.RecordBatch,
        *,
        source: str = "",
        first_position: int = 0,
        per_record: bool = False,
    ) -> tuple[pa.Table, pa.Table]:
        """Split ``table`` into (accepted rows in canonical types, dead letters).

        A table without a required column is refused as a whole (:class:`SchemaError`),
        unless its rows are independent records (``per_record``: live requests and
        messages, JSON lines), where each such row is a dead letter instead.
        """
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        # per-record sources (JSON lines, CSV with broken rows) can lack a field row by row
        per_record = per_record or MALFORMED in table.column_names
        if not per_record:
            self.require(table.column_names)
        n = table.num_rows
        out: dict[str, pa.Array] = {}
        failed: list[tuple[str, np.ndarray, Any]] = []
        if MALFORMED in table.column_names:
            broken = table.column(MALFORMED).is_valid().to_numpy(zero_copy_only=False)
            whys = (
                table.column(MALFORMED_WHY).to_pylist()
                if MALFORMED_WHY in table.column_names
                else [None] * n
            )
            failed.append(
                (
                    "record",
                    broken,
                    lambda i: f"malformed ({whys[i] or 'not parseable as a record'})",
                )
            )
        if NESTED in table.column_names:
            marks = [m if isinstance(m, str) else None for m in table.column(NESTED).to_pylist()]
            for col in self.columns:
                hit = np.array([m is not None and col.name in m.split(",") for m in marks])
                if hit.any():
                    failed.append(
                        (col.name, hit, lambda i, t=col.type: f"not a {t} (an object or array)")
                    )
        for col in self.columns:
            if col.name not in table.column_names:
                out[col.name] = pa.nulls(n, col.arrow_type)
                if col.required:
                    failed.append((col.name, np.ones(n, dtype=bool), lambda i: "missing value"))
                continue
            try:
                values, bad = coerce(table.column(col.name), col)
            except (pa.ArrowException, ValueError, TypeError, OverflowError) as err:
                # a type no check foresaw: its rows are refused, never the whole input
                values, bad = unconvertible(table.column(col.name), col, err)
            out[col.name] = values
            failed += [(col.name, mask, why) for mask, why in bad if mask.any()]
        bad_rows = np.zeros(n, dtype=bool)
        reason = np.full(n, None, dtype=object)
        for name, mask, why in failed:  # the first failing check names the reason
            hit = mask & ~bad_rows
            if hit.any():
                reason[hit] = [f"{name}: {why(i)}" for i in np.flatnonzero(hit)]
                bad_rows |= hit
        good = pa.table(out, schema=self.arrow_schema)
        if not bad_rows.any():
            return good, DEAD_LETTER_SCHEMA.empty_table()
        idx = np.flatnonzero(bad_rows)
        dead = dead_letters(
            table.take(pa.array(idx)),
            [str(r) for r in reason[idx]],
            source=source,
            positions=idx + first_position,
            step=f"validate:{self.name}",
        )
        return good.filter(pa.array(~bad_rows)), dead


def dead_letters(
    raw: pa.Table,
    reasons: list[str],
    *,
    source: str,
    positions: np.ndarray,
    step: str,
    ids: list[str] | None = None,
) -> pa.Table:
    """Build dead-letter rows (raw row as JSON, capped) for the refused rows of ``raw``;
    each is identified by its source and position unless ``ids`` are given."""
    rows = _pylist(raw)
    now = time.time_ns() // 1_000_000  # ms since the epoch, UTC
    raws = [_raw_json(r)[:MAX_RAW_CHARS] for r in rows]
    return pa.table(
        {
            "dead_letter_id": ids or [f"{source}@{int(p)}" for p in positions],
            "source": [source] * len(rows),
            "position": pa.array(np.asarray(positions, dtype=np.int64)),
            "step": [step] * len(rows),
            "reason": reasons,
            "raw": raws,
            "received_at": pa.array([now] * len(rows), pa.int64()).cast(pa.timestamp("ms")),
        },
        schema=DEAD_LETTER_SCHEMA,
    )


def _pylist(table: pa.Table) -> list[dict[str, Any]]:
    """Rows as dicts, column by column: a value Python cannot hold (a time past year 9999,
    the reason it is refused) is kept as Arrow's text for it."""
    cols: dict[str, list[Any]] = {}
    for name, col in zip(table.column_names, table.columns, strict=True):
        try:
            cols[name] = col.to_pylist()
        except (ValueError, OverflowError, pa.ArrowException):
            try:
                cols[name] = pc.cast(col, pa.string()).to_pylist()
            except (pa.ArrowException, ValueError):
                cols[name] = [f"<{col.type}>"] * len(col)
    return [{k: v[i] for k, v in cols.items()} for i in range(table.num_rows)]


def _raw_json(row: dict[str, Any]) -> str:
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if isinstance(v, (str, int, float, bool)) or v is None:
            return v
        return str(v)

    return json.dumps({k: clean(v) for k, v in row.items()}, ensure_ascii=False)
