"""scripts/bench.py as users run it (a subprocess, an embedded Ray), at a tiny size: every
figure the issue's table asks for is printed, and they are consistent with each other."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_prints_every_figure_of_the_table() -> None:
    cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--events", "30000"]
    cmd += ["--customers", "2000", "--batch-size", "10000", "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(done.stdout.strip().splitlines()[-1])
    rt, base = r["runtime"], r["baseline"]
    assert rt["accepted"] == 30000 and rt["events_per_s"] > 0 and base["events_per_s"] > 0
    assert r["ratio"] == rt["events_per_s"] / base["events_per_s"]
    assert 0 < rt["startup_s"] < rt["wall_s"] and r["replay_cli"]["wall_s"] > 0
    # the peak of summed PSS counts each shared page once: at most the summed RSS, and
    # more than the driver alone
    assert rt["peak_rss_driver_mb"] < rt["peak_pss_mb"] <= rt["peak_rss_mb"], rt
    assert rt["ray_workers_at_peak"] >= 2 and rt["peak_rss_ray_services_mb"] > 0
    assert set(r["targets"]) == {
        "events_per_s",
        "ratio",
        "startup_s",
        "peak_rss_mb",
        "replay_wall_s",
    }
    assert r["agreement"]["profiles_match"] is True, r["agreement"]
