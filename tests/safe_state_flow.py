"""An event-time pipeline for `edgecore run safe_state_flow:pipeline` in
tests/test_safe_state_cli.py: windows with top-k per shard, watermarks in the commit."""

from event_time_helpers import SCHEMA, stream

from runtime.dataflow.builder import Pipeline
from runtime.eventtime.windows import WindowSpec
from runtime.testing import MemorySource

pipeline = (
    Pipeline("readings")
    .source(MemorySource(stream(3_000, keys=8, seed=3), batch_size=250, id="readings"))
    .validate(SCHEMA)
    .event_time("t", out_of_orderness_ms=500)
    .key_by("k")
    .window("w", WindowSpec(2_000, allowed_lateness_ms=500), value="v", top_k=2, item="item")
)
