"""SQL over the live state of a running runtime, as a library and as `edgecore sql` runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_transactions, sql_profiles
from live_helpers import Serve, ndjson, post

from runtime.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PROFILE = "SELECT customer_id, txn_count, amount_max, last_ts FROM customers ORDER BY customer_id"


def by_key(table: pa.Table) -> list[dict]:
    return table.sort_by("customer_id").to_pylist()


def test_live_state_is_the_whole_population_before_and_after_a_checkpoint(ray_session, tmp_path):
    """Few entities fit in memory (most are passivated or only stored), events arrive after
    a checkpoint: the live tables have every customer, each as the events say now; after
    the next checkpoint they equal the stored table, row for row, column for column."""
    from actors.fraud import fraud_app
    from runtime import Runtime
    from runtime.dataflow.app import setup
    from runtime.state.live import live_query, live_tables
    from runtime.state.sql import query

    events = pq.read_table(make_transactions(tmp_path / "t.parquet", 3_000, 300))
    first, second = events.slice(0, 1_500), events.slice(1_500)
    data = tmp_path / "d"
    with Runtime(data_dir=str(data), mode="ray", shards=2, max_active=40) as rt:
        setup(rt, fraud_app)
        rt.send("customers", first)
        rt.checkpoint()
        rt.send("customers", second)
        want = sql_profiles(events)
        live = {r["customer_id"]: r for r in live_query(PROFILE, data).to_pylist()}
        assert set(live) == set(want)  # resident, passivated and stored alike
        assert all(live[k]["txn_count"] == want[k]["txn_count"] for k in want)
        stored = query(data, "SELECT sum(txn_count) AS n FROM customers").to_pylist()
        assert stored == [{"n": first.num_rows}]  # the stored table has not seen `second`
        rt.checkpoint()
        tables = live_tables()
        assert set(tables) == {"customers"}
        now = query(data, "SELECT * FROM customers")
        assert tables["customers"].schema.names == now.schema.names
        assert by_key(tables["customers"]) == by_key(now)
        assert by_key(live_query("SELECT * FROM customers", data)) == by_key(now)
        with pytest.raises(ConfigError, match="no entity kind 'nope'.*customers"):
            live_tables(["nope"])
        assert live_tables(["customer"])["customers"].num_rows == len(want)


def edgecore(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """`edgecore ARGS` as users run it, from this repository's code."""
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        # the embedded Ray of `serve` requires a token (~/.ray/auth_token); Ray's client
        # sends it to an explicit HOST:PORT only in token mode (`auto` finds it by itself)
        env={**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "token"},
    )


def ray_address(serve: Serve) -> str:
    """The Ray cluster the serve process started (its GCS), not whichever Ray on this
    machine started last (`--address auto`): other test runs may share the machine."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for p in psutil.Process(serve.proc.pid).children(recursive=True):
            try:
                cmd = p.cmdline()
            except psutil.NoSuchProcess:
                continue
            if cmd and cmd[0].endswith("gcs_server"):
                flags = dict(a.lstrip("-").split("=", 1) for a in cmd[1:] if "=" in a)
                ports = [c.laddr.port for c in p.net_connections() if c.status == "LISTEN"]
                if ports:  # its port is chosen when it starts (--gcs_server_port=0)
                    return f"{flags.get('node-ip-address', '127.0.0.1')}:{ports[0]}"
        time.sleep(0.5)
    raise AssertionError("no gcs_server under the serve process")


def sql_json(*args: str) -> dict:
    done = edgecore("sql", *args, "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def wait_for_count(address: str, want: list[dict]) -> list[dict]:
    """Events are acknowledged once logged and applied a moment later: ask until they are."""
    count = "SELECT count(*) AS n, sum(txn_count) AS events FROM customers"
    deadline = time.monotonic() + 120
    while True:
        got = sql_json(count, "--address", address)["rows"]
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(1)


def test_edgecore_sql_sees_live_events_and_equals_the_checkpoint_after_stop(tmp_path):
    """`edgecore sql --address` over a running `edgecore serve`: events applied since the
    last checkpoint are there (the stored table has none); `--live` prints the alerts as
    they arrive, joined with the live customers; after SIGTERM commits a checkpoint, the
    stored table is what live SQL said."""
    table = pq.read_table(make_transactions(tmp_path / "t.parquet", 2_000, 100))
    events = table.to_pylist()
    for r in events:
        r["ts"] = r["ts"].isoformat()
    data = tmp_path / "d"
    serve = Serve(data, "--app", "fraud", "--checkpoint-seconds", "3600")
    follow = None
    try:
        port = serve.wait_http()
        address = ray_address(serve)
        assert post(port, ndjson(events[:1_000]))[1]["accepted"] == 1_000
        first = sql_profiles(table.slice(0, 1_000))
        assert wait_for_count(address, [{"n": len(first), "events": 1_000}]) == [
            {"n": len(first), "events": 1_000}
        ]
        stored = edgecore("sql", "SELECT count(*) FROM customers", "--data", str(data))
        assert stored.returncode == 1 and "customers" in stored.stderr  # nothing stored yet
        # a continuous query over the alerts topic, a per-row filter and a join with the
        # live customers; it runs while the second half arrives
        follow = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runtime.cli",
                "sql",
                "SELECT a.event_id, a.customer_id, c.txn_count FROM alerts_stream a "
                "LEFT JOIN customers c USING (customer_id) WHERE a.amount > 0",
                "--address",
                address,
                "--live",
                "--from-beginning",
                "--idle-timeout",
                "15",
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "token"},
        )
        time.sleep(3)
        assert post(port, ndjson(events[1_000:]))[1]["accepted"] == 1_000
        want = sql_profiles(table)
        assert wait_for_count(address, [{"n": len(want), "events": 2_000}]) == [
            {"n": len(want), "events": 2_000}
        ]
        live_rows = sql_json("SELECT * FROM customers", "--address", address)["rows"]
        # without --data: the runtime's own folder (the board says where), its tables too
        dead = sql_json("SELECT count(*) AS n FROM dead_letters", "--address", address)
        hostile = edgecore(
            "sql", "COPY customers TO '/tmp/edgecore-sql-x.csv'", "--address", address
        )
        out, err = follow.communicate(timeout=180)
        serve.signal(signal.SIGTERM)
        assert serve.wait(timeout=60) == 0
    finally:
        if follow is not None and follow.poll() is None:
            follow.kill()
        serve.stop()
    assert follow.returncode == 0, err[-2000:]
    assert dead["rows"] == [{"n": 0}]
    assert hostile.returncode == 1 and hostile.stderr.strip().count("\n") == 0
    assert "disabled" in hostile.stderr and not Path("/tmp/edgecore-sql-x.csv").exists()
    after = sql_json("SELECT * FROM customers", "--data", str(data))["rows"]
    key = lambda r: r["customer_id"]  # noqa: E731
    assert sorted(after, key=key) == sorted(live_rows, key=key)  # live == checkpointed
    alerts = [json.loads(line) for line in out.splitlines()]
    stored_alerts = sql_json(
        "SELECT event_id, customer_id FROM alerts WHERE amount > 0", "--data", str(data)
    )["rows"]
    assert {r["event_id"] for r in alerts} == {r["event_id"] for r in stored_alerts}
    late = [r for r in alerts if r["event_id"] in set(table["event_id"][1_000:].to_pylist())]
    assert late, "no alert of the second half arrived while the query ran"
    # the live customers as they were when the query started (taken once)
    assert all(
        r["txn_count"] is None or 1 <= r["txn_count"] <= want[r["customer_id"]]["txn_count"]
        for r in alerts
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A data folder with one table, and a folder of Hive-partitioned Parquet."""
    from runtime.state.store import Store

    d = tmp_path_factory.mktemp("sql")
    Store(d / "d").upsert("people", pa.table({"id": ["a", "b"], "n": [1, 2]}), key="id")
    (d / "pq" / "date=2026-01-01").mkdir(parents=True)
    pq.write_table(pa.table({"id": ["a"], "x": [5]}), d / "pq" / "date=2026-01-01" / "p.parquet")
    (d / "empty").mkdir()
    (d / "not.parquet").write_text("id,x\na,5\n")
    return d


def test_sql_over_the_folder_and_named_parquet(folder):
    got = sql_json(
        "SELECT p.id, n, x, date::VARCHAR AS day FROM people p JOIN ev USING (id)",
        "--data",
        str(folder / "d"),
        "--parquet",
        f"ev={folder / 'pq'}",
    )
    assert got["rows"] == [{"id": "a", "n": 1, "x": 5, "day": "2026-01-01"}]
    glob = sql_json(
        "SELECT count(*) AS n FROM ev",
        "--data",
        str(folder / "d"),
        "--parquet",
        f"ev={folder}/pq/date=*/*.parquet",
    )
    assert glob["rows"] == [{"n": 1}]


HOSTILE = [
    # writing or reading files other than the named ones, installing, attaching
    ("COPY people TO '{tmp}/out.csv'", "disabled"),
    ("SELECT * FROM read_csv('/etc/passwd')", "disabled"),
    ("SELECT * FROM read_text('{pq}/../../../../etc/passwd')", "disabled"),
    ("SELECT * FROM read_parquet('{tmp}/**/*.parquet')", "disabled"),
    ("ATTACH '{tmp}/x.db'", "disabled"),
    ("INSTALL httpfs", "disabled"),
    ("SET enable_external_access = true", "locked"),
    ("SET allowed_directories = ['/']", "locked"),
    # plain mistakes name the tables
    ("SELECT * FROM nope", "people"),
    ("SELEC 1", "people"),
]


@pytest.mark.parametrize("sql,why", HOSTILE, ids=[h[0][:24] for h in HOSTILE])
def test_hostile_or_bad_sql_is_refused_in_one_line(folder, sql, why):
    text = sql.format(tmp=folder, pq=folder / "pq")
    done = edgecore(
        "sql", text, "--data", str(folder / "d"), "--parquet", f"ev={folder / 'pq'}", "--json"
    )
    assert done.returncode == 1 and done.stdout == "", done.stdout
    line = done.stderr.strip()
    assert line.count("\n") == 0 and why in line and "people" in line and "ev" in line, line
    assert not (folder / "out.csv").exists() and not (folder / "x.db").exists()


BAD_OPTIONS = [
    (["--parquet", "ev"], "NAME=PATH"),
    (["--parquet", "e v;drop=x"], "letters, digits"),
    (["--parquet", "ev=/nonexistent/x"], "no Parquet file"),
    (["--parquet", "ev=/nonexistent/*/x.parquet"], "no Parquet file"),
    (["--parquet", "ev={d}/empty"], "cannot read"),  # a folder without Parquet
    (["--parquet", "ev={d}/not.parquet"], "cannot read"),  # a file that is not Parquet
    (["--live"], "--address"),
]


@pytest.mark.parametrize("args,why", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_bad_options_are_refused_in_one_line(folder, args, why):
    args = [a.format(d=folder) for a in args]
    done = edgecore("sql", "SELECT 1", "--data", str(folder / "d"), *args)
    line = done.stderr.strip()
    assert done.returncode == 1 and line.count("\n") == 0 and why in line, line


def test_a_quote_in_a_parquet_path_is_data_not_sql(folder):
    odd = folder / "it's"
    odd.mkdir()
    pq.write_table(pa.table({"v": [1, 2]}), odd / "a.parquet")
    got = sql_json(
        "SELECT sum(v) AS s FROM odd", "--data", str(folder / "d"), "--parquet", f"odd={odd}"
    )
    assert got["rows"] == [{"s": 3}]


def test_live_needs_one_stream_table():
    from runtime.state.live import stream_topic

    assert stream_topic("SELECT * FROM alerts_stream WHERE x > 1") == "alerts"
    assert stream_topic("SELECT * FROM late_events_stream") == "late_events"
    for sql in ("SELECT * FROM alerts", "SELECT * FROM a_stream JOIN b_stream USING (k)"):
        with pytest.raises(ConfigError, match="exactly one <topic>_stream"):
            stream_topic(sql)
