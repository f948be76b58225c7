"""The chaos matrix (scripts/chaos.py): its accounting of lost and doubled events, the
fault point inside a commit, and each scenario once at a small size against the product."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from runtime.testing.ledger import account, expected_state, ledger_events

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))


def _pairs(events: pa.Table, column: str) -> list[tuple]:
    return list(zip(events["event_id"].to_pylist(), events[column].to_pylist(), strict=True))


def _ids(events: pa.Table, key: str) -> list[int]:
    return [e for e, k in _pairs(events, "key") if k == key]


def test_account_names_every_lost_and_doubled_event():
    events = ledger_events(400, seed=3, bad_every=25)
    good = [e for e, k in _pairs(events, "key") if k]
    bad = [e for e, k in _pairs(events, "key") if not k]
    state = expected_state(events)
    assert account(events, state, entries=good, dead=bad).clean

    value = dict(_pairs(events, "value"))
    key = events["key"][0].as_py()
    first, second, third = _ids(events, key)[:3]
    n, total = state[key]

    def broken(dn: int, dtotal: float) -> dict:
        return {**state, key: (n + dn, total + dtotal)}

    lost = account(events, broken(-1, -value[second]))
    assert (lost.lost, lost.doubled) == ({second}, set())
    doubled = account(events, broken(+1, value[third]))
    assert (doubled.lost, doubled.doubled) == (set(), {third})
    # one lost and one doubled in the same key: the count alone would call it exact
    both = account(events, broken(0, value[first] - value[second]))
    assert (both.lost, both.doubled) == ({second}, {first})
    # a count that disagrees with the values: not clean, whatever the total says
    assert not account(events, broken(+1, 0.0)).clean
    # an event applied three times carries into the next digit: still not clean
    assert not account(events, broken(+2, 2 * value[third])).clean
    # a key missing altogether: all its events lost
    gone = account(events, {k: v for k, v in state.items() if k != key})
    assert gone.lost == set(_ids(events, key))
    assert account(events, {**state, "k-nowhere": (1, 1.0)}).n_doubled == 1

    out = account(events, state, entries=good[1:] + good[5:6], dead=bad + bad[:1])
    assert out.lost == {good[0]} and out.doubled == {good[5], bad[0]}
    assert any("entries" in w for w in out.why) and any("dead_letters" in w for w in out.why)


def test_the_ledger_kinds_meet_the_kind_contracts():
    from runtime.testing import check_kind
    from runtime.testing.ledger import Ledger, SiteLedger

    check_kind(Ledger, ledger_events(120, seed=2))
    check_kind(SiteLedger, ledger_events(120, seed=2, sites=("eu-1", "eu-2")))


def test_the_commit_fault_point_crashes_only_when_armed(tmp_path):
    code = (
        "from runtime.testing.faults import fault_point\n"
        "for i in range(3):\n"
        "    print(i, flush=True); fault_point('commit:after_tables')\n"
    )
    root = str(SCRIPTS.parent)

    def run(spec: str | None) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": root}
        env.pop("EDGECORE_FAULT", None)
        if spec is not None:
            env["EDGECORE_FAULT"] = spec
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)

    assert run(None).returncode == 0
    assert run("other:point").stdout.split() == ["0", "1", "2"]
    second = run("commit:after_tables@2")
    assert second.returncode == 137 and second.stdout.split() == ["0", "1"]
    assert "crashing at commit:after_tables" in second.stderr


def test_sink_rows_a_commit_covers_are_in_the_sinks_table(tmp_path):
    """A commit names state that includes events whose topic rows sat in a sink's buffer
    (a TableSink writes every 50,000 rows): after a crash the topic, in memory only, never
    delivers them again, so they must be written before the commit, not after."""
    from runtime import Runtime
    from runtime.dataflow.app import setup
    from runtime.state.store import Store
    from runtime.testing.ledger import ledger_app

    events = ledger_events(300, seed=1)
    rt = Runtime(data_dir=str(tmp_path), mode="local", shards=2).start()
    setup(rt, ledger_app)
    rt.send("ledgers", events)
    rt.checkpoint()
    rt.stop(checkpoint=False)  # a crash right after the commit: nothing more is written
    store = Store(tmp_path)
    state = {r["key"]: (r["n"], r["total"]) for r in store.read("ledgers").to_pylist()}
    assert account(events, state).clean
    entries = (
        store.read("entries").column("event_id").to_pylist() if store.exists("entries") else []
    )
    assert sorted(entries) == events["event_id"].to_pylist()


# -- each scenario once, small, against the product -----------------------------------------
EVENTS, SECONDS = 2_000, 8.0


def _check(res) -> None:
    row = res.row()
    assert row["ok"], row
    assert row["lost"] == 0 and row["doubled"] == 0 and row["recovery_s"] > 0


@pytest.mark.parametrize("scenario", ["shard", "topic", "sink", "commit"])
def test_replay_scenario_loses_and_doubles_nothing(scenario, tmp_path):
    from chaos_scenarios import run_replay

    _check(run_replay(scenario, 0, EVENTS, tmp_path, SECONDS))


@pytest.mark.parametrize("scenario", ["stage", "broker"])
def test_serve_scenario_loses_and_doubles_nothing(scenario, tmp_path):
    import shutil

    from chaos_scenarios import run_serve

    if scenario == "broker" and shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed")
    _check(run_serve(scenario, 0, EVENTS, tmp_path, SECONDS))


def test_edge_scenario_loses_and_doubles_nothing(tmp_path):
    from chaos_edge import EdgeCluster, run_edge

    cluster = EdgeCluster()
    try:
        _check(run_edge(cluster, 0, EVENTS, tmp_path, SECONDS))
    finally:
        cluster.close()
