"""runtime.eventtime.watermarks: per-partition min, idle partitions, monotonicity, restart."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from runtime.eventtime.watermarks import Watermarks
from runtime.testing import FakeClock

MIN = int(np.iinfo(np.int64).min)


def test_watermark_is_the_min_over_partitions_of_max_minus_out_of_orderness():
    rng = np.random.default_rng(3)
    marks = Watermarks(out_of_orderness_ms=250)
    seen: dict[str, int] = {}
    last = MIN
    for _ in range(200):
        part = f"p{rng.integers(0, 4)}"
        times = rng.integers(0, 100_000, rng.integers(1, 20))
        marks.observe(part, times)
        seen[part] = max(seen.get(part, MIN), int(times.max()))
        last = max(last, min(seen.values()) - 250)  # the reference: min, never backwards
        assert marks.current() == last


def test_nothing_seen_and_empty_batches():
    clock = FakeClock()
    marks = Watermarks(0, idle_ms=1_000, clock=clock)
    assert marks.current() == MIN
    marks.observe("a", np.array([], dtype=np.int64))  # no rows: nothing learnt
    assert marks.current() == MIN and marks.idle() == []
    marks.observe("a", np.array([10])), marks.observe("b", np.array([50]))
    clock.advance(0.9)
    marks.observe("a", np.array([], dtype=np.int64))  # no sign of life either
    clock.advance(0.2)
    assert marks.idle() == ["a", "b"]
    assert marks.current() == 50  # every partition idle: the most advanced one's


def test_idle_partition_is_ignored_then_counts_again_and_never_goes_back():
    clock = FakeClock()
    marks = Watermarks(out_of_orderness_ms=0, idle_ms=2_000, clock=clock)
    marks.observe("fast", np.array([100])), marks.observe("slow", np.array([40]))
    assert marks.current() == 40  # the slow partition holds it back
    for t in (200, 300, 400):
        clock.advance(0.9)
        marks.observe("fast", np.array([t]))
    assert marks.idle() == ["slow"] and marks.current() == 400  # silent 2.7 s: ignored
    marks.observe("slow", np.array([150]))  # back: it counts again ...
    assert marks.idle() == []
    assert marks.current() == 400  # ... but the watermark does not go back
    marks.observe("fast", np.array([900])), marks.observe("slow", np.array([500]))
    assert marks.current() == 500  # the slow one holds it back again once it is ahead
    marks.observe("slow", np.array([1_000]))
    assert marks.current() == 900


def test_partition_column_equals_one_observe_per_partition():
    rng = np.random.default_rng(8)
    table = pa.table({"t": rng.integers(0, 10_000, 500), "part": rng.integers(0, 5, 500)})
    by_table, by_part = Watermarks(100), Watermarks(100)
    for lo in range(0, 500, 50):
        chunk = table.slice(lo, 50)
        by_table.observe_table(chunk, "t", "part")
        for p in set(chunk.column("part").to_pylist()):
            rows = chunk.filter(pc.equal(chunk.column("part"), p))
            by_part.observe(str(p), rows.column("t").to_numpy())
        assert by_table.current() == by_part.current()
    one = Watermarks(100)
    one.observe_table(table.slice(0, 50), "t")
    assert one.current() == int(table.slice(0, 50).column("t").to_numpy().max()) - 100


def test_timestamp_columns_count_in_their_unit():
    marks = Watermarks(5)
    table = pa.table({"t": pa.array([1_000, 2_000], pa.timestamp("ms"))})
    marks.observe_table(table, "t", default_partition="x")
    assert marks.current() == 1_995


def test_snapshot_and_restore_keep_watermarks_and_refresh_idleness():
    clock = FakeClock()
    marks = Watermarks(10, idle_ms=1_000, clock=clock)
    marks.observe("a", np.array([500])), marks.observe("b", np.array([300]))
    clock.advance(5)
    marks.observe("a", np.array([800]))
    assert marks.current() == 790  # b is idle
    other = FakeClock(100.0)
    back = Watermarks.restore(marks.snapshot(), clock=other)
    assert back.current() == 790  # never backwards, even though b counts again after restart
    assert back.idle() == []
    back.observe("a", np.array([2_000])), back.observe("b", np.array([1_000]))
    assert back.current() == 990
    other.advance(2)
    back.observe("a", np.array([3_000]))
    assert back.current() == 2_990


def test_bad_settings_are_refused():
    from runtime import ConfigError

    with pytest.raises(ConfigError, match="idle_ms"):
        Watermarks(0, idle_ms=0)
    with pytest.raises(ConfigError, match="out_of_orderness"):
        Watermarks(-1)
