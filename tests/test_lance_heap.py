"""scripts/lance_heap.py as users run it: both sides run their writes, and the capped side's
process really has the cap (what the embedded Ray's workers inherit)."""

from __future__ import annotations

import pytest
from live_helpers import script_json


@pytest.mark.parametrize("upsert", [False, True])
def test_both_sides_write_and_only_one_is_capped(tmp_path, upsert) -> None:
    args = ["--writes", "25", "--rows", "500", "--arenas", "3"] + (["--upsert"] if upsert else [])
    got = script_json("lance_heap.py", *args, cwd=tmp_path)
    assert (got["default"]["cap"], got["default"]["env"]) == (None, None)
    assert (got["capped"]["cap"], got["capped"]["env"]) == (3, "3")
    for side in got.values():
        assert [n for n, _ in side["samples"]][-1] == 25
        assert 20 < side["first_mb"] <= side["max_mb"] < 2000
