"""The pipeline API: named steps, checks at build time, failing steps dead-lettered, `edgecore run`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from runtime import ConfigError
from runtime.cli import app
from runtime.dataflow.builder import Pipeline
from runtime.state.store import Store
from runtime.testing import Tally


def test_names_and_wiring_are_checked_early():
    with pytest.raises(ConfigError, match="already named"):
        Pipeline("p").map("a", lambda t: t).filter("a", lambda t: t)
    with pytest.raises(ConfigError, match="lowercase"):
        Pipeline("p").map("Bad Name", lambda t: t)
    with pytest.raises(ConfigError, match="validate"):
        Pipeline("p").to_entity("e", Tally).build()
    from flows_example import SCHEMA

    with pytest.raises(ConfigError, match="keyed by 'key'"):
        Pipeline("p").validate(SCHEMA).key_by("other").to_entity("e", Tally).build()
    with pytest.raises(ConfigError, match="no step publishes a topic 'alerts'"):
        Pipeline("p").validate(SCHEMA).to_entity("e", Tally).sink("alerts", "alerts").build()
    from runtime.eventtime.windows import WindowSpec

    with pytest.raises(ConfigError, match="needs event time"):
        Pipeline("p").validate(SCHEMA).key_by("key").window("w", WindowSpec(10), value="value")
    with pytest.raises(ConfigError, match="key_by"):
        Pipeline("p").event_time("ts").window("w", WindowSpec(10), value="value")
    with pytest.raises(ConfigError, match="already ends in 'e'"):
        Pipeline("p").to_entity("e", Tally).to_entity("f", Tally)
    with pytest.raises(ConfigError, match="follows"):
        Pipeline("p").then("x", "f", Tally)
    from runtime import Column, EventSchema

    loose = EventSchema(
        "e",
        [
            Column("event_id", "int64"),
            Column("key", "string"),
            Column("t", "int64", required=False),
            Column("value", "float64"),
        ],
    )
    with pytest.raises(ConfigError, match="must be required"):
        Pipeline("p").validate(loose).event_time("t").key_by("key").window(
            "w", WindowSpec(10), value="value"
        ).build()


def test_run_command_counts_filtered_and_failed_steps(tmp_path):
    result = CliRunner().invoke(
        app, ["run", "flows_example:pipeline", "--local", "--data", str(tmp_path), "--json"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    # 300 rows: value 0 filtered (every 7th), the batch holding ids >= 250 refused by the 'guard' step
    assert out["input"] == 300
    assert out["accepted"] + out["dead_lettered"] + out["duplicates"] + out["filtered"] == 300
    assert out["filtered"] > 0 and out["dead_lettered"] > 0
    reasons = set(Store(tmp_path).read("dead_letters").column("reason").to_pylist())
    assert reasons == {"step 'guard' (map) failed: ValueError: no events past 250 today"}
    assert Store(tmp_path).read("tallies").num_rows == 3
    bad = CliRunner().invoke(
        app, ["run", "flows_example:SCHEMA", "--local", "--data", str(tmp_path)]
    )
    assert bad.exit_code == 1 and "not a runtime.dataflow.builder.Pipeline" in bad.output


def test_fraud_app_is_built_with_the_pipeline_api(tmp_path):
    from actors.fraud.app import fraud_app, fraud_pipeline
    from runtime.testing import MemorySource

    assert fraud_app.kind.name == "customers" and fraud_app.sinks == {
        "alerts": ("alerts", "event_id"),
        "drift": ("drift", None),
    }
    assert fraud_pipeline(MemorySource([])).input is not None
