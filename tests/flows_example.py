"""A pipeline module for `edgecore run flows_example:pipeline` in the tests."""

import pyarrow.compute as pc

from runtime import Column, EventSchema
from runtime.dataflow.builder import Pipeline
from runtime.testing import MemorySource, Tally

ROWS = [{"event_id": i, "key": f"k{i % 3}", "value": float(i % 7)} for i in range(300)]
SCHEMA = EventSchema(
    "e", [Column("event_id", "int64"), Column("key", "string"), Column("value", "float64")]
)


def boom(table):
    if table.num_rows and pc.max(table["event_id"]).as_py() >= 250:
        raise ValueError("no events past 250 today")
    return table


pipeline = (
    Pipeline("tallies")
    .source(MemorySource(ROWS, batch_size=50))
    .validate(SCHEMA)
    .filter("nonzero", lambda t: pc.not_equal(t["value"], 0))
    .map("guard", boom)
    .key_by("key")
    .to_entity("count", Tally)
)
