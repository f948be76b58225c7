"""scripts/soak.py: its growth verdicts, and one short soak of ``serve`` as users run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import soak_procs  # noqa: E402
import soak_stats  # noqa: E402
from soak_stats import judge, per_event, verdict  # noqa: E402


def test_doctests():
    """The smaps parser (paths with spaces, a deleted plasma file, anonymous maps) and the
    verdicts' examples."""
    import doctest

    for module in (soak_procs, soak_stats):
        assert doctest.testmod(module).failed == 0, module.__name__


def test_a_flat_noisy_series_is_bounded_and_a_slow_leak_is_not():
    rng = np.random.default_rng(0)
    t = [10.0 * i for i in range(60)]  # 10 minutes, a sample each 10 s
    flat = list(1000 + rng.normal(0, 5, 60))
    assert not verdict(t, flat, floor=32.0)["grows"]
    leak = [1000 + 0.1 * x + n for x, n in zip(t, rng.normal(0, 5, 60), strict=True)]
    got = verdict(t, leak, floor=32.0)  # 360 MB an hour on a 1 GB process
    assert got["grows"] and got["slope_per_hour"] > 200


def test_growth_that_stops_after_the_warm_up_is_bounded():
    t = [10.0 * i for i in range(60)]
    y = [min(100.0 + 20 * i, 300.0) + (i % 2) for i in range(60)]  # fills a cache, then flat
    assert not verdict(t, y, floor=8.0)["grows"]


def test_a_tiny_significant_slope_under_the_floor_is_not_a_failure():
    t = [10.0 * i for i in range(60)]
    y = [500.0 + 0.001 * x for x in t]  # 3.6 MB an hour: real, but not worth failing on
    assert not verdict(t, y, floor=32.0)["grows"]


def test_an_output_table_that_grows_with_the_input_is_fine_unless_it_accelerates():
    events = [1000.0 * i for i in range(40)]
    linear = [2.0 * e for e in events]  # bytes: 2 per event
    assert not per_event(events, linear)["accelerates"]
    quadratic = [2.0 * e + 1e-4 * e * e for e in events]
    assert per_event(events, quadratic)["accelerates"]


@pytest.mark.timeout(600)
def test_a_short_soak_of_serve_keeps_every_acknowledged_event(tmp_path):
    """The script end to end: serve as a subprocess, load, samples, plot, SIGTERM exit 0,
    and the committed profiles count exactly the events acknowledged."""
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "soak.py"), "--minutes", "0.5"]
        + ["--rate", "3000", "--sample-seconds", "3", "--out", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=580,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode in (0, 1), done.stderr[-3000:]
    got = json.loads(done.stdout)
    assert got["serve_exit"] == 0
    assert got["exact"] and got["acked_accepted"] > 30_000
    assert got["acked_accepted"] == got["profiles_txn_count"]
    series = got["series"]
    assert {"own_mb:total", "own_mb:Shard", "own_mb:LiveIngest", "size_mb:customers"} <= set(series)
    pages = series["object_store_pages_mb"]  # Ray's plasma file, found in the processes' maps
    assert pages["capacity_mb"] > 75 and 0 < pages["max"] < pages["capacity_mb"] / 2
    assert (out / "soak.png").stat().st_size > 10_000
    rows = (out / "soak.csv").read_text().splitlines()
    assert rows[0].startswith("t,acked,") and "own_mb:Shard" in rows[0] and len(rows) >= 6
    # the saved run judged again without running (after a change to the verdicts)
    again = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "soak.py"), "--judge", str(out / "soak.json")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert again.returncode == done.returncode, again.stderr[-2000:]
    assert f"acknowledged {got['acked_accepted']:,}" in again.stdout, again.stdout[-2000:]


def test_a_sawtooth_whose_peaks_do_not_climb_is_bounded():
    t = [10.0 * i for i in range(60)]
    saw = [20.0 * (i % 9) + (5.0 if i > 40 else 0.0) for i in range(60)]  # WAL cut per commit
    assert not verdict(t, saw, floor=8.0)["grows"]
    climbing = [20.0 * (i % 9) + 3.0 * i for i in range(60)]
    assert verdict(t, climbing, floor=8.0)["grows"]


def test_a_sawtooth_is_judged_by_what_it_returns_to_not_by_where_the_run_ends():
    """Table versions cleaned every 20 writes: 8 -> 27 every four minutes, a 12-minute run
    sampled every 10 s. Its thirds' means rise with the phase the run ends in; the value
    after each cleanup does not. The same saw on a floor that climbs is a leak."""
    t = [10.0 * i for i in range(72)]
    versions = [8.0 + (i % 24) * 19 / 23 for i in range(72)]
    got = verdict(t, versions, floor=2.0)
    assert got["troughs"] == [8.0, 8.0] and not got["grows"]
    leaking = [v + 0.2 * i for i, v in enumerate(versions)]  # +72 versions an hour
    assert verdict(t, leaking, floor=2.0)["grows"]
    long_run = [10.0 * i for i in range(288)]  # 48 minutes: 10 resets
    saw = [8.0 + (i % 24) * 19 / 23 for i in range(288)]
    assert not verdict(long_run, saw, floor=2.0)["grows"]
    assert verdict(long_run, [v + 0.02 * i for i, v in enumerate(saw)], floor=2.0)["grows"]


def test_the_object_stores_pages_are_reported_and_a_processs_own_growth_is_judged():
    """The raylet's RSS climbing by its object-store pages only (a high-water mark) is
    reported beside the store's capacity, not failed on; a worker whose own memory climbs
    fails the soak, and so does other shared memory (a tmpfs file it maps), or object
    store pages past half the store."""

    def sample(i: int) -> dict:
        pages, anon = 4.0 + 0.5 * i, 200.0 + 2.0 * i  # +180, +720 MB an hour
        return {
            "t": 10.0 * i,
            "acked": 1000 * i,
            "rss_mb": {"raylet": 30.0 + pages, "Shard": 300.0 + anon, "gcs_server": 50.0},
            "rss_parts_mb": {
                "raylet": {"anon": 30.0, "file": 0.0, "shmem": pages, "plasma": pages},
                "Shard": {"anon": anon, "file": 100.0, "shmem": 200.0, "plasma": 200.0},
                "gcs_server": {"anon": 50.0, "file": 0.0, "shmem": 0.0, "plasma": 0.0},
            },
            "size_mb": {},
            "versions": {},
        }

    run = {
        "samples": [sample(i) for i in range(60)],
        "load": {"accepted": 59_000},
        "capacity_accepted": 0,
        "profiles_txn_count": 59_000,
        "serve_exit": 0,
        "object_store_mb": 7000.0,
    }
    got = judge(run)
    pages = got["series"]["object_store_pages_mb"]
    assert pages["kind"] == "reported" and pages["capacity_mb"] == 7000.0
    assert pages["max"] == 200.0 and not pages["grows"]  # the largest of any process
    assert got["series"]["own_mb:raylet"]["last"] == 30.0  # RSS without the store's pages
    assert not got["series"]["own_mb:raylet"]["grows"]
    assert got["growing"] == ["own_mb:Shard", "own_mb:total"] and not got["ok"]
    for s in run["samples"]:  # the worker flat: the soak passes
        s["rss_parts_mb"]["Shard"]["anon"] = 200.0
        s["rss_mb"]["Shard"] = 500.0
    assert judge(run)["ok"]
    for i, s in enumerate(run["samples"]):  # shared memory that is not the object store
        s["rss_parts_mb"]["gcs_server"]["shmem"] = 2.0 * i
        s["rss_mb"]["gcs_server"] = 50.0 + 2.0 * i
    assert "own_mb:gcs_server" in judge(run)["growing"]
    run["object_store_mb"] = 300.0  # the pages past half the store
    assert "object_store_pages_mb" in judge(run)["growing"]


def test_a_librarys_pages_are_reported_and_not_judged_but_a_mapped_data_file_is():
    """A sink paging in LanceDB's code as compaction first runs (file-backed pages of a
    .so, bounded by its size) is not its own growth; file pages of anything else are."""

    def sample(i: int, lib: float, data: float) -> dict:
        return {
            "t": 10.0 * i,
            "acked": 1000 * i,
            "rss_mb": {"TableSink": 130.0 + lib + data},
            "rss_parts_mb": {
                "TableSink": {"anon": 130.0, "file": lib + data, "plasma": 0.0, "code": lib}
            },
            "size_mb": {},
            "versions": {},
        }

    def run(lib: float, data: float) -> dict:
        samples = [sample(i, 60.0 + lib * i, data * i) for i in range(60)]
        return {
            "samples": samples,
            "load": {"accepted": 59_000},
            "capacity_accepted": 0,
            "profiles_txn_count": 59_000,
            "serve_exit": 0,
            "object_store_mb": 7000.0,
        }

    got = judge(run(lib=2.0, data=0.0))  # +720 MB an hour of a library's pages
    assert got["ok"] and got["series"]["own_mb:TableSink"]["last"] == 130.0
    lib = got["series"]["library_pages_mb"]
    assert lib["kind"] == "reported" and lib["max"] == 60.0 + 2.0 * 59
    assert judge(run(lib=0.0, data=2.0))["growing"] == ["own_mb:TableSink", "own_mb:total"]
    more = run(lib=0.0, data=0.0)  # ever more library files mapped: growth after all
    for i, s in enumerate(more["samples"]):
        s["rss_parts_mb"]["TableSink"]["libraries"] = 40 + i
    assert judge(more)["growing"] == ["library_pages_mb"]


def test_a_leak_under_a_sawtooth_is_caught_when_its_drops_fade():
    """A driver's sawtooth (checkpoints lift it ~190 MB, then it returns) over a leak of
    250 MB an hour: as the level climbs, drops stop reaching a third of it, and the two
    early resets must not decide the verdict; a 40 MB/h leak over an hour is caught too,
    and the sawtooth alone is bounded."""
    t = [10.0 * i for i in range(360)]
    saw = [260.0 + (190.0 if i % 9 in (3, 4) else 0.0) for i in range(360)]
    assert not verdict(t, saw, floor=32.0)["grows"]
    for per_hour in (40.0, 250.0):
        leak = [v + per_hour * ti / 3600 for v, ti in zip(saw, t, strict=True)]
        assert verdict(t, leak, floor=32.0)["grows"], per_hour
