"""The commit point of a data folder: the ``_checkpoints`` table's rows and their meaning.

>>> import pyarrow as pa
>>> rows = pa.table({"epoch": [1, 2], "started_at": [0.0, 1.0], "committed_at": [0.5, 1.5],
...     "positions": ['{"s": 10}', '{"s": 20}'], "versions": ['{}', '{"t": 3}'], "meta": ['{}', '{}']})
>>> cp = latest_checkpoint(rows); cp.epoch, cp.positions, cp.versions
(2, {'s': 20}, {'t': 3})
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

CHECKPOINTS = "_checkpoints"
_CHECKPOINT_SCHEMA = pa.schema(
    [
        ("epoch", pa.int64()),
        ("started_at", pa.float64()),
        ("committed_at", pa.float64()),
        ("positions", pa.string()),
        ("versions", pa.string()),
        ("meta", pa.string()),
    ]
)


@dataclass
class Checkpoint:
    """What the last commit promised: the state reflects exactly these source positions."""

    epoch: int = 0
    started_at: float = 0.0
    positions: dict[str, int] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def latest_checkpoint(rows: pa.Table) -> Checkpoint:
    """The checkpoint of the highest epoch among ``_checkpoints`` rows (none: epoch 0)."""
    if rows.num_rows == 0:
        return Checkpoint()
    i = int(pc.index(rows.column("epoch"), pc.max(rows.column("epoch"))).as_py())
    r = rows.slice(i, 1).to_pylist()[0]
    return Checkpoint(
        epoch=r["epoch"],
        started_at=r["started_at"],
        positions=json.loads(r["positions"]),
        versions=json.loads(r["versions"]),
        meta=json.loads(r["meta"]),
    )
