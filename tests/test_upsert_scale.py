"""scripts/upsert_scale.py as users run it: both sides hold the same rows, one per key,
and only the indexed side has the key's index."""

from __future__ import annotations

from live_helpers import script_json


def test_both_sides_upsert_the_same_rows_and_only_one_probes_an_index(tmp_path) -> None:
    got = script_json("upsert_scale.py", "--writes", "25", "--rows", "400", cwd=tmp_path)
    assert got["indexed"]["rows"] == got["scan"]["rows"] == 25 * 400
    assert got["indexed"]["indexes"] == [["event_id"]]
    assert got["scan"]["indexes"] == []
    for side in ("indexed", "scan"):
        assert len(got[side]["write_ms"]) == 25
        assert got[side]["last_tenth_ms"] > 0
    assert got["ratio"] > 0
