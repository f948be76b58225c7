"""The `edgecore` CLI through typer's CliRunner and as users run it (a subprocess), the
README's Python examples, cluster.yaml."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import make_transactions, sql_profiles
from typer.testing import CliRunner

from runtime.cli import app
from runtime.cli.common import cell
from runtime.streams.schema import DEAD_LETTER_SCHEMA

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def replayed(ray_session, tmp_path_factory):
    """One replay through the CLI; the other CLI tests read its data folder."""
    d = tmp_path_factory.mktemp("cli")
    txns = make_transactions(d / "tx.csv", 8_000, 500)
    result = runner.invoke(
        app, ["replay", str(txns), "--app", "fraud", "--data", str(d / "data"), "--json"]
    )
    assert result.exit_code == 0, result.output
    return d / "data", txns, json.loads(result.stdout)


def test_replay_json(replayed):
    _, _, out = replayed
    assert {
        "input",
        "accepted",
        "dead_lettered",
        "duplicates",
        "alerts",
        "seconds",
        "events_per_s",
    } <= set(out)
    assert out["input"] == out["accepted"] == 8_000
    assert out["accepted"] + out["dead_lettered"] + out["duplicates"] == out["input"]


def test_entity_from_lancedb(replayed):
    data, txns, _ = replayed
    expected = sql_profiles(txns)["c7"]
    for kind in ("customer", "customers"):
        result = runner.invoke(app, ["entity", kind, "c7", "--data", str(data), "--json"])
        assert result.exit_code == 0, result.output
        profile = json.loads(result.stdout)
        assert profile["customer_id"] == "c7"
        assert profile["txn_count"] == expected["txn_count"]


def test_entity_unknown_key_exits_1(replayed):
    data, _, _ = replayed
    result = runner.invoke(app, ["entity", "customer", "no-such-customer", "--data", str(data)])
    assert result.exit_code == 1
    assert "no-such-customer" in result.output and "not known" in result.output


def test_sql_json_and_errors(replayed):
    data, txns, _ = replayed
    result = runner.invoke(
        app,
        [
            "sql",
            "SELECT count(*) AS n, sum(txn_count) AS t FROM customers",
            "--data",
            str(data),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)["rows"][0]
    assert row["n"] == len(sql_profiles(txns)) and row["t"] == 8_000
    result = runner.invoke(app, ["sql", "SELECT nope FROM customers", "--data", str(data)])
    assert result.exit_code == 1 and "customers" in result.output
    result = runner.invoke(app, ["sql", "SELECT 1", "--data", str(data / "missing")])
    assert result.exit_code == 1 and "no data folder" in result.output


def test_status_json(replayed):
    data, _, _ = replayed
    result = runner.invoke(app, ["status", "--data", str(data), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert {t["name"] for t in info["tables"]} >= {"customers", "alerts", "_checkpoints"}
    assert info["checkpoint"]["epoch"] >= 1


def test_replay_user_errors(tmp_path):
    assert runner.invoke(app, ["replay", str(tmp_path / "nope.parquet")]).exit_code == 1
    bad = tmp_path / "x.txt"
    bad.write_text("hello")
    result = runner.invoke(app, ["replay", str(bad)])
    assert result.exit_code == 1 and ".parquet" in result.output
    result = runner.invoke(app, ["replay", str(bad), "--app", "nosuchapp"])
    assert result.exit_code == 1 and "fraud" in result.output


def test_replay_missing_column_is_a_clear_error(ray_session, tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("event_id,ts,customer_id\n1,2026-01-01T00:00:00Z,c1\n")
    result = runner.invoke(app, ["replay", str(f), "--data", str(tmp_path / "d")])
    assert result.exit_code == 1
    assert "amount" in result.output and "lacks required column" in result.output


def test_demo_json(ray_session, tmp_path):
    result = runner.invoke(
        app, ["demo", "--events", "20000", "--customers", "1000", "--data", str(tmp_path), "--json"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["events"] == 20_000 and out["accepted"] == 20_000
    assert 0 <= out["precision"] <= 1 and 0 <= out["recall"] <= 1
    again = json.loads(
        runner.invoke(
            app,
            ["demo", "--events", "5000", "--customers", "1000", "--data", str(tmp_path), "--json"],
        ).stdout
    )
    assert again["resumed_from"] == 20_000 and again["duplicates"] == 0  # the stream goes on


@pytest.mark.parametrize("block", range(5))
def test_readme_python_examples_run(ray_session, block):
    code = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(code) == 5
    exec(
        compile(code[block], f"README.md[python {block}]", "exec"), {"__name__": f"readme_{block}"}
    )


def test_readme_commands_match_ci():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install '.[test]'" in readme and "pip install -q '.[test]'" in ci
    assert "python -m pytest -q" in readme and "python -m pytest -q" in ci


def test_cluster_yaml_is_valid_for_ray_up():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(config))
    types = config["available_node_types"]
    roles = {t["labels"]["role"] for t in types.values()}
    assert roles == {"core", "edge"}
    assert types[config["head_node_type"]]["labels"]["role"] == "core"
    start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start and "RAY_AUTH_MODE=token" in start


def test_entity_live_from_a_running_runtime(ray_session, tmp_path):
    """With --address the profile comes from the shard hosting it, before any checkpoint."""
    import pyarrow.parquet as pq

    from actors.fraud import fraud_app
    from runtime import Runtime
    from runtime.dataflow.app import setup

    events = pq.read_table(make_transactions(tmp_path / "t.parquet", 2_000, 50))
    with Runtime(data_dir=str(tmp_path / "d"), mode="ray", shards=2) as rt:
        setup(rt, fraud_app)
        rt.send("customers", events)
        result = runner.invoke(
            app,
            [
                "entity",
                "customer",
                "c3",
                "--address",
                "auto",
                "--data",
                str(tmp_path / "d"),
                "--json",
            ],
        )
        assert result.exit_code == 0, result.output
        live = json.loads(result.stdout)
        assert live["txn_count"] == sql_profiles(events)["c3"]["txn_count"]
        assert not (tmp_path / "d" / "customers.lance").exists()  # nothing stored yet: it was live


def test_tail_follows_a_topic(ray_session, tmp_path):
    import pyarrow as pa

    from runtime import Runtime

    with Runtime(data_dir=str(tmp_path), mode="ray") as rt:
        topic = rt.topic("alerts")
        topic.publish(pa.table({"event_id": [1, 2, 3], "reason": ["a", "b", "c"]}))
        result = runner.invoke(
            app,
            ["tail", "alerts", "--from-beginning", "--limit", "2", "--json", "--address", "auto"],
        )
        assert result.exit_code == 0, result.output
        rows = [json.loads(line) for line in result.stdout.splitlines()]
        assert [r["event_id"] for r in rows] == [1, 2] and rows[0]["_offset"] == 0
        result = runner.invoke(app, ["tail", "nope", "--address", "auto"])
        assert result.exit_code == 1 and "alerts" in result.output


# -- what a new user trips on, as they run it: `python -m runtime.cli` in a subprocess ---------


def edgecore(*args: str, cwd: Path | None = None, columns: int = 80) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": str(columns)}
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
    )


def test_dead_letters_is_queryable_before_the_first_dead_letter(replayed):
    data, _, out = replayed
    assert out["dead_lettered"] == 0 and not (data / "dead_letters.lance").exists()
    done = edgecore("sql", "SELECT count(*) AS n FROM dead_letters", "--data", str(data), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows"] == [{"n": 0}]
    done = edgecore("sql", "SELECT * FROM dead_letters", "--data", str(data), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["columns"] == DEAD_LETTER_SCHEMA.names


def test_tables_show_floats_unrounded(replayed):
    data, _, _ = replayed
    profile = json.loads(edgecore("entity", "customer", "c7", "--data", str(data), "--json").stdout)
    floats = {k: v for k, v in profile.items() if isinstance(v, float) and v != int(v)}
    assert "last_lat" in floats
    done = edgecore("entity", "customer", "c7", "--data", str(data), columns=200)
    assert done.returncode == 0, done.stderr
    for k, v in floats.items():
        shown = re.search(rf"│ {k} +│ (\S+)", done.stdout).group(1)
        assert shown == cell(v) and abs(float(shown.replace(",", "")) - v) < 1e-6 * max(1, abs(v))
    lat = profile["last_lat"]
    done = edgecore(
        "sql", "SELECT last_lat FROM customers WHERE customer_id = 'c7'", "--data", str(data)
    )
    assert f"{lat:.6f}".rstrip("0") in done.stdout, done.stdout


def test_run_finds_a_module_in_the_current_folder(tmp_path):
    """As the installed `edgecore` script runs (its folder on sys.path, not the user's)."""
    proj, bin_dir = tmp_path / "proj", tmp_path / "bin"
    proj.mkdir()
    bin_dir.mkdir()
    flow = (ROOT / "tests" / "flows_example.py").read_text()
    (proj / "my_cwd_flow.py").write_text(flow + "\napp = pipeline.build()\n")
    (tmp_path / "rows.jsonl").write_text('{"event_id": 1, "key": "a", "value": 1.0}\n')
    script = bin_dir / "edgecore"
    script.write_text("import sys\nfrom runtime.cli import main\nsys.exit(main())\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # edgecore itself, not the project folder
    for i, args in enumerate(
        (
            ["run", "my_cwd_flow:pipeline"],  # `edgecore run`
            ["replay", str(tmp_path / "rows.jsonl"), "--app", "my_cwd_flow:app"],  # --app m:a
        )
    ):
        done = subprocess.run(
            [
                sys.executable,
                str(script),
                *args,
                "--local",
                "--data",
                str(tmp_path / f"d{i}"),
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=proj,
            env=env,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["input"] >= 1


def test_help_shows_flags_as_flags():
    for command in ([], ["sql"], ["replay"], ["serve"], ["tail"], ["demo"]):
        done = edgecore(*command, "--help", columns=120)
        assert done.returncode == 0, done.stderr
        assert "--help" in done.stdout and "<bool>" not in done.stdout, done.stdout
    assert re.search(r"--json +Print", edgecore("sql", "--help", columns=120).stdout)


@pytest.mark.parametrize(
    "args",
    [
        ["entity"],  # a usage error (click's)
        ["replay", "x.csv", "--rate", "fast"],
        ["replay", "nope.parquet"],
        ["replay", "x.txt", "--app", "no-such-app-with-a-rather-long-name-to-pass-eighty-columns"],
        ["sql", "SELEC nope FROM nowhere WHERE the_error_message_is_long = 1"],  # DuckDB's caret
        ["entity", "customer", "no-such-customer-whose-key-is-long-enough-to-wrap"],
        ["serve", "--http", "bad"],
    ],
    ids=lambda a: " ".join(a)[:30],
)
def test_errors_are_one_line_at_80_columns(replayed, tmp_path, args):
    data, _, _ = replayed
    (tmp_path / "x.txt").write_text("x")
    if args[0] in ("sql", "entity") and len(args) > 1:
        args = [*args, "--data", str(data)]
    done = edgecore(*args, cwd=tmp_path)
    assert done.returncode in (1, 2)  # edgecore's errors 1, usage errors click's 2
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
