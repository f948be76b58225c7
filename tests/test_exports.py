"""`--export DIR`: Hive-partitioned Parquet of events, output topics and checkpointed
profiles, as users run it (`edgecore replay` in a subprocess), read back with DuckDB
(and `edgecore sql --parquet`) and pandas."""

from __future__ import annotations

import subprocess
import sys

import duckdb
import pandas as pd
from conftest import make_transactions
from live_helpers import cli_json

from runtime.state.sql import query


def test_replay_exports_events_alerts_and_profiles_by_date(tmp_path):
    txns = make_transactions(tmp_path / "t.parquet", 6_000, 200)
    data, out = tmp_path / "d", tmp_path / "exports"
    # a checkpoint every 2,000 rows: profiles are exported at each of them
    summary = cli_json(
        tmp_path,
        "replay",
        str(txns),
        "--data",
        str(data),
        "--export",
        str(out),
        "--batch-size",
        "1000",
        "--checkpoint-every",
        "2000",
        "--shards",
        "2",
    )
    assert summary["accepted"] == 6_000
    con = duckdb.connect()

    def scan(sub: str) -> str:
        return f"read_parquet('{out}/{sub}/**/*.parquet', hive_partitioning=true)"

    # the events as accepted, partitioned by kind and by the day of their `ts`
    n, ids, bad_days = con.sql(
        f"SELECT count(*), count(DISTINCT event_id), "
        f"count(*) FILTER (WHERE CAST(ts AS DATE) <> date) FROM {scan('events')}"
    ).fetchall()[0]
    assert (n, ids, bad_days) == (6_000, 6_000, 0)
    assert {p.name for p in (out / "events").iterdir()} == {"kind=customers"}
    assert all(p.name.startswith("date=") for p in (out / "events" / "kind=customers").iterdir())
    # every alert the app stored, once
    alerts = con.sql(f"SELECT event_id FROM {scan('alerts')}").fetchall()
    stored = query(data, "SELECT event_id FROM alerts").to_pylist()
    assert alerts and sorted(a for (a,) in alerts) == sorted(r["event_id"] for r in stored)
    # profiles at each checkpoint: the latest row per key is the stored table
    epochs = con.sql(f"SELECT DISTINCT checkpoint FROM {scan('profiles/customers')}").fetchall()
    assert len(epochs) >= 3
    latest = con.sql(
        f"SELECT customer_id, txn_count, amount_sum FROM {scan('profiles/customers')} "
        "QUALIFY row_number() OVER (PARTITION BY customer_id ORDER BY checkpoint DESC) = 1 "
        "ORDER BY customer_id"
    ).fetchall()
    now = query(
        data, "SELECT customer_id, txn_count, amount_sum FROM customers ORDER BY customer_id"
    )
    assert latest == [tuple(r.values()) for r in now.to_pylist()]
    # pandas reads the same folders, the partitions as columns
    frame = pd.read_parquet(out / "alerts")
    assert len(frame) == len(alerts) and "date" in frame.columns
    assert len(pd.read_parquet(out / "events")) == 6_000
    # and so does `edgecore sql --parquet`, beside the data folder's tables
    joined = cli_json(
        tmp_path,
        "sql",
        "SELECT count(*) AS n FROM ev JOIN customers USING (customer_id)",
        "--data",
        str(data),
        "--parquet",
        f"ev={out}/events",
    )
    assert joined["rows"] == [{"n": 6_000}]


def test_export_to_a_file_is_refused_in_one_line(tmp_path):
    (tmp_path / "f").write_text("x")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime.cli",
            "replay",
            "nope.csv",
            "--export",
            str(tmp_path / "f"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and done.stderr.strip().count("\n") == 0, done.stderr


def test_serve_killed_right_after_acknowledgements_exports_every_acked_event(tmp_path):
    """``serve --export`` SIGKILLed (every process) the moment the last 200 arrives, long
    before a checkpoint: the next start replays its write-ahead log, so every event that
    was acknowledged reaches the export (at least once), as do the alerts it raised."""
    import signal

    import pyarrow.parquet as pq
    from live_helpers import Serve, ndjson, post

    rows = pq.read_table(make_transactions(tmp_path / "t.parquet", 3_000, 120)).to_pylist()
    for r in rows:
        r["ts"] = r["ts"].isoformat()
    data, out = tmp_path / "d", tmp_path / "exports"
    first = Serve(data, "--export", str(out), "--checkpoint-seconds", "3600")
    try:
        port = first.wait_http()
        for i in range(0, 2_000, 250):
            assert post(port, ndjson(rows[i : i + 250]))[1]["accepted"] == 250
    finally:
        first.kill_everything()
    second = Serve(data, "--export", str(out))
    try:
        port = second.wait_http()
        assert post(port, ndjson(rows[2_000:]))[1]["accepted"] == 1_000
        second.signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0, second.stderr[-3000:]
    finally:
        second.stop()
    con = duckdb.connect()
    events = f"read_parquet('{out}/events/**/*.parquet', hive_partitioning=true)"
    got = {i for (i,) in con.sql(f"SELECT DISTINCT event_id FROM {events}").fetchall()}
    assert got == {r["event_id"] for r in rows}
    alerts = f"read_parquet('{out}/alerts/**/*.parquet', hive_partitioning=true)"
    exported = {i for (i,) in con.sql(f"SELECT DISTINCT event_id FROM {alerts}").fetchall()}
    stored = {r["event_id"] for r in query(data, "SELECT event_id FROM alerts").to_pylist()}
    assert stored and exported == stored
