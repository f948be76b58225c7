"""The metrics registry: valid Prometheus text (parsed by prometheus_client), a snapshot with
the same samples, hostile label values, bounded series; a run's metrics reconcile."""

from __future__ import annotations

import math
import tempfile
import urllib.request
from urllib.error import HTTPError

import pyarrow as pa
import pytest
from prometheus_client.parser import text_string_to_metric_families

from runtime import Runtime
from runtime.dataflow.app import App
from runtime.dataflow.driver import SourceFeeder, drive
from runtime.errors import ConfigError
from runtime.observe import metrics as M
from runtime.observe.metrics import Registry
from runtime.observe.run import RunMetrics
from runtime.observe.server import CONTENT_TYPE, MetricsOptions, MetricsServer
from runtime.streams.schema import Column, EventSchema
from runtime.testing import MemorySource, Tally

HOSTILE = ['a"b', "back\\slash", "new\nline", "}{=,", "", "ünïcode ✓", '\\"\\n']


def parsed(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def from_snapshot(snap: dict) -> dict[tuple[str, tuple], float]:
    return {
        (s["name"], tuple(sorted(s["labels"].items()))): s["value"]
        for fam in snap["families"]
        for s in fam["samples"]
    }


def test_render_is_valid_text_and_snapshot_has_the_same_samples():
    reg = Registry()
    c = reg.counter("edgecore_events_total", "Events.\nSecond line \\ here", ["app", "outcome"])
    g = reg.gauge("edgecore_queue_depth", "Queue.", ["shard"])
    h = reg.histogram("edgecore_latency_seconds", "Latency.", ["app"], buckets=[0.1, 1, 10])
    c.inc(3, app="fraud", outcome="accepted")
    c.inc(2.5, app="fraud", outcome="accepted")
    g.set(-4, shard="0")
    for v in (0.05, 0.5, 0.5, 5, 50):
        h.observe(v, app="fraud")
    text = reg.render()
    got = parsed(text)
    assert got[("edgecore_events_total", (("app", "fraud"), ("outcome", "accepted")))] == 5.5
    assert got[("edgecore_queue_depth", (("shard", "0"),))] == -4
    buckets = {k[1][1][1]: v for k, v in got.items() if k[0] == "edgecore_latency_seconds_bucket"}
    assert buckets == {"0.1": 1, "1": 3, "10": 4, "+Inf": 5}
    assert got[("edgecore_latency_seconds_count", (("app", "fraud"),))] == 5
    assert got[("edgecore_latency_seconds_sum", (("app", "fraud"),))] == pytest.approx(56.05)
    snap = reg.snapshot()
    assert abs(snap["time"] - __import__("time").time()) < 60
    types = {f["name"]: f["type"] for f in snap["families"]}
    assert types == {
        "edgecore_events_total": "counter",
        "edgecore_queue_depth": "gauge",
        "edgecore_latency_seconds": "histogram",
    }
    assert from_snapshot(snap) == got  # the same samples, names and labels as the text
    assert "# HELP edgecore_events_total Events.\\nSecond line \\\\ here" in text
    assert "# TYPE edgecore_latency_seconds histogram" in text


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_label_values_round_trip(value):
    reg = Registry()
    c = reg.counter("edgecore_x_total", "X.", ["who"])
    c.inc(1, who=value)
    c.inc(2, who="plain")
    got = parsed(reg.render())
    assert got[("edgecore_x_total", (("who", value),))] == 1
    assert got[("edgecore_x_total", (("who", "plain"),))] == 2
    assert len(reg.render().strip().splitlines()) == 4  # a newline in a value never splits it


def test_bad_names_labels_and_values_are_refused():
    reg = Registry()
    for name in ("1bad", "has-dash", "", "sp ace"):
        with pytest.raises(ValueError):
            reg.counter(name, "x")
    for label in ("le", "__x", "a-b", "9"):
        with pytest.raises(ValueError):
            reg.gauge("edgecore_g", "x", [label])
    c = reg.counter("edgecore_c_total", "x", ["a"])
    with pytest.raises(ValueError):
        c.inc(-1, a="1")
    with pytest.raises(ValueError):
        c.inc(1, b="1")
    with pytest.raises(ValueError):
        c.inc(1)
    with pytest.raises(ValueError):  # the same name, another type
        reg.gauge("edgecore_c_total", "x", ["a"])
    assert reg.counter("edgecore_c_total", "x", ["a"]) is c
    g = reg.gauge("edgecore_special", "x")
    g.set(float("nan"))
    assert math.isnan(parsed(reg.render())[("edgecore_special", ())])


def test_series_are_bounded(monkeypatch):
    monkeypatch.setattr(M, "MAX_SERIES", 5)
    reg = Registry()
    c = reg.counter("edgecore_c_total", "x", ["key"])
    for i in range(50):
        c.inc(1, key=f"k{i}")
    got = parsed(reg.render())
    assert len(got) == 6 and got[("edgecore_c_total", (("key", "_other"),))] == 45


def test_dead_letter_labels_stay_bounded_with_hostile_reasons():
    m = RunMetrics("t", Registry(), fields=["amount", "key"])
    rows = pa.table(
        {
            "step": ["validate:e", "validate:e", "map:x", 'evil"step\n:1', None],
            "reason": ["amount: not a number", 'zzz"\n: no', "key: missing", "x", None],
        }
    )
    m.dead_letters(rows)
    got = parsed(m.registry.render())
    dead = {k[1]: v for k, v in got.items() if k[0] == "edgecore_dead_letters_total"}
    assert dead == {
        (("app", "t"), ("field", "amount"), ("step", "validate")): 1,
        (("app", "t"), ("field", "-"), ("step", "validate")): 1,
        (("app", "t"), ("field", "key"), ("step", "map")): 1,
        (("app", "t"), ("field", "-"), ("step", "other")): 1,
        (("app", "t"), ("field", "-"), ("step", "unknown")): 1,
    }


def test_a_run_reconciles_and_is_on_the_board():
    app = App("t", EventSchema("e", [Column("event_id", "int64"), Column("key", "string")]), Tally)
    rows = [{"event_id": i % 40, "key": None if i % 7 == 0 else f"k{i % 5}"} for i in range(50)]
    with Runtime(data_dir=tempfile.mkdtemp(), mode="local", shards=2) as rt:
        stats = drive(rt, app, [SourceFeeder(MemorySource(rows, batch_size=8))])
        status = rt.status()
    got = from_snapshot(status["metrics"])

    def events(outcome: str) -> float:
        return got[("edgecore_events_total", (("app", "t"), ("outcome", outcome)))]

    assert events("input") == stats.input == 50
    assert events("accepted") == stats.accepted
    assert events("dead_lettered") == stats.dead_lettered == 8
    assert events("duplicate") == stats.duplicates > 0
    assert events("accepted") + events("dead_lettered") + events("duplicate") + events(
        "filtered"
    ) == events("input")
    dead = sum(v for k, v in got.items() if k[0] == "edgecore_dead_letters_total")
    assert dead == 8
    assert got[("edgecore_checkpoints_total", (("app", "t"),))] == stats.checkpoints == 1
    rows_sent = sum(v for k, v in got.items() if k[0] == "edgecore_shard_rows_total")
    assert rows_sent == stats.accepted
    active = sum(v for k, v in got.items() if k[0] == "edgecore_entities_active")
    assert active == 5
    assert got[("edgecore_checkpoint_duration_seconds_count", (("app", "t"),))] == 1


def test_a_scrape_during_a_checkpoint_sees_its_count_with_the_shard_figures(monkeypatch):
    """The checkpoint counter and the shards' figures it brings land together: a scrape that
    comes while the shards are being asked (CI once saw ``checkpoints_total`` 1 and no
    ``entities_active``) sees neither, never one without the other."""
    app = App("t", EventSchema("e", [Column("event_id", "int64"), Column("key", "string")]), Tally)
    rows = [{"event_id": i, "key": f"k{i % 5}"} for i in range(20)]
    scrapes: list[dict] = []
    with Runtime(data_dir=tempfile.mkdtemp(), mode="local", shards=2) as rt:
        ask = rt.shard_stats

        def scraped_while_asking():
            scrapes.append(parsed(rt.metrics.registry.render()))
            return ask()

        monkeypatch.setattr(rt, "shard_stats", scraped_while_asking)
        drive(rt, app, [SourceFeeder(MemorySource(rows, batch_size=8))])
        after = parsed(rt.metrics.registry.render())
    assert scrapes
    for got in [*scrapes, after]:
        cps = got[("edgecore_checkpoints_total", (("app", "t"),))]
        active = [k for k in got if k[0] == "edgecore_entities_active"]
        assert bool(cps) == bool(active), (cps, active)
    assert after[("edgecore_checkpoints_total", (("app", "t"),))] == 1


def test_server_answers_metrics_only_and_checks_its_token():
    reg = Registry()
    reg.counter("edgecore_c_total", "x").inc(7)
    server = MetricsServer(reg, MetricsOptions("127.0.0.1", 0, token="s3cret"))
    port = server.start()
    try:

        def fetch(path: str, token: str | None = None, method: str = "GET") -> tuple[int, str]:
            req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
            if token:
                req.add_header("Authorization", f"Bearer {token}")
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    assert resp.headers["Content-Type"] == CONTENT_TYPE
                    return resp.status, resp.read().decode()
            except HTTPError as err:
                return err.code, ""

        assert fetch("/metrics")[0] == 401
        assert fetch("/metrics", "wrong")[0] == 401
        status, body = fetch("/metrics", "s3cret")
        assert status == 200 and "edgecore_c_total 7" in body
        assert fetch("/other", "s3cret")[0] == 404
        assert fetch("/metrics", "s3cret", method="POST")[0] == 405
    finally:
        server.close()


@pytest.mark.parametrize(
    "spec,token",
    [("nohost", None), ("127.0.0.1:x", None), ("0.0.0.0:9464", None), ("127.0.0.1:99999", None)],
)
def test_bad_metrics_options_are_refused(spec, token):
    with pytest.raises(ConfigError):
        MetricsOptions.parse(spec, token)


def test_off_loopback_needs_a_token():
    assert MetricsOptions.parse("0.0.0.0:9464", "t").host == "0.0.0.0"
