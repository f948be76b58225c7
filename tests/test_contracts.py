"""Every kind, source and sink in the repo meets the contracts of runtime.testing.checks;
broken ones are reported by kind and field. All in local mode: no Ray session."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from actors.devices.kind import Device
from actors.devices.telemetry import TelemetryConfig, TelemetrySource
from actors.fraud.customer import Customer, FraudConfig
from actors.fraud.generator import GeneratorSource, TxnGeneratorConfig
from actors.nexmark import queries as nq
from actors.nexmark.config import NexmarkConfig
from actors.nexmark.generator import generate, union
from actors.nexmark.source import NexmarkSource
from runtime.entities.kind import EntityKind
from runtime.errors import ContractError
from runtime.eventtime.windows import WindowSpec
from runtime.operators.joins import join_kind
from runtime.operators.windowed import argmax_kind, emit_kind, window_kind
from runtime.streams.sinks import ParquetSink, TableSink, WebhookSink
from runtime.streams.sources import FileSource, IteratorSource, Paced
from runtime.testing import (
    EchoTally,
    ListSink,
    MemorySource,
    SiteTally,
    SlowSink,
    Tally,
    check_kind,
    check_sink,
    check_source,
    check_subscriber,
    yield_checks,
)
from runtime.testing.checks import exemption, run_checks
from runtime.testing.checks_kinds import Case

# -- small events for each kind ------------------------------------------------------------


def tallies(site: bool = False) -> pa.Table:
    keys = [f"k{i % 4}" for i in range(24)]
    cols: dict[str, Any] = {"key": keys, "value": [float(i) * 0.1 for i in range(24)]}
    if site:
        cols["site"] = ["eu-1" if k in ("k0", "k1") else "eu-2" for k in keys]
    return pa.table(cols)


def transactions() -> pa.Table:
    # a fifth injected fraud (bursts, far places, high amounts): alerts to compare
    cfg = TxnGeneratorConfig(n_customers=8, fraud_rate=0.2)
    src = GeneratorSource(cfg, n_events=80, batch_size=80)
    return pa.concat_tables([b for b, _ in src.batches()])


def telemetry() -> pa.Table:
    src = TelemetrySource(TelemetryConfig(n_devices=6), n_events=150, batch_size=150)
    return pa.concat_tables([b for b, _ in src.batches()])


# 10 events/s: 40 s of event time, so several windows open and close
NEXMARK = union(generate(NexmarkConfig(events=400, events_per_second=10, seed=1)))
END = int(pc.max(NEXMARK["date_time"]).as_py()) + 10 * nq.WINDOW_MS  # closes every window


def bids() -> pa.Table:
    return NEXMARK.filter(pc.equal(NEXMARK["type"], "bid"))


def q4_input() -> pa.Table:
    return nq._auction_key(NEXMARK.filter(pc.not_equal(NEXMARK["type"], "person")))


def q5_counts_rows() -> pa.Table:
    """What q5's windows hand its arg-max: per auction and window, a count."""
    rng = np.random.default_rng(5)
    start = np.repeat(np.arange(6) * nq.HOP_MS, 4)
    return pa.table(
        {
            "auction": [str(a) for a in rng.integers(1000, 1004, len(start))],
            "count": rng.integers(1, 5, len(start)),
            "window_start": start,
            "window_end": start + nq.WINDOW_MS,
        }
    )


def q3_input() -> pa.Table:
    """Sellers in OR/ID/CA and their category-10 auctions (q3's filter keeps few of 400)."""
    person = {"type": "person", "city": "Boise", "state": "ID", "id": None}
    rows = [{**person, "jk": j, "name": f"p{j}"} for j in range(4)]
    rows += [{"jk": j % 4, "type": "auction", "id": 1000 + j} for j in range(9)]
    return pa.Table.from_pylist(rows[::2] + rows[1::2])  # some auctions before their seller


def q8_input() -> pa.Table:
    t = NEXMARK.filter(pc.not_equal(NEXMARK["type"], "bid"))
    return nq._join_key(t).select(["jk", "type", "date_time", "name"])


def categories() -> pa.Table:
    return pa.table({"category": [10, 11, 10, 12, 11, 10], "final": [5, 7, 9, 1, 3, 4]})


Q3 = {"name": "name_left", "city": "city_left", "state": "state_left", "id": "id_right"}
Q8 = {"id": "jk", "name": "name_left", "window_start": "window_start"}
SPEC = WindowSpec(nq.WINDOW_MS, nq.HOP_MS)

#: id -> (kind, events, config, final watermark)
KINDS: dict[str, tuple[type[EntityKind], Callable[[], pa.Table], Any, int | None]] = {
    "tally": (Tally, tallies, None, None),
    "site_tally": (SiteTally, lambda: tallies(site=True), None, None),
    "echo_tally": (EchoTally, tallies, None, None),
    "fraud_customers": (Customer, transactions, None, None),
    "fraud_predictions": (Customer, transactions, FraudConfig(predictions=True), None),
    "devices": (Device, telemetry, None, None),
    "q0_emit": (emit_kind("q0", "auction"), bids, None, None),
    "q3_join": (
        join_kind("q3", None, "jk", "", "type", "person", "auction", Q3),
        q3_input,
        None,
        None,
    ),
    "q4_winners": (nq.AuctionWinners, q4_input, None, END),
    "q4_categories": (nq.CategoryAverage, categories, None, None),
    "q5_window": (window_kind("q5_counts", SPEC, "auction", "date_time", "price"), bids, None, END),
    "q5_argmax": (argmax_kind("q5", "count"), q5_counts_rows, None, END),
    "q7_argmax": (
        argmax_kind("q7", "price"),
        lambda: nq._tumble(bids().select(["auction", "price", "bidder", "date_time"])),
        None,
        END,
    ),
    "q8_window_join": (
        join_kind("q8", nq.WINDOW_MS, "jk", "date_time", "type", "person", "auction", Q8, True),
        q8_input,
        None,
        END,
    ),
    "session_window": (
        window_kind("sessions", WindowSpec.session(gap_ms=3_000), "bidder", "date_time", "price"),
        bids,
        None,
        END,
    ),
}

# -- sources and sinks ---------------------------------------------------------------------

ROWS = pa.table(
    {"event_id": list(range(7)), "k": list("abcabca"), "v": [0.5 * i for i in range(7)]}
)


def file_source(tmp_path, suffix: str) -> FileSource:
    path = tmp_path / f"events{suffix}"
    if suffix == ".parquet":
        pq.write_table(ROWS, path, row_group_size=3)
    elif suffix == ".csv":
        pacsv.write_csv(ROWS, path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS.to_pylist()))
    return FileSource(path, batch_size=3)


SOURCES: dict[str, Callable[[Any], Any]] = {
    "file_parquet": lambda tmp: file_source(tmp, ".parquet"),
    "file_csv": lambda tmp: file_source(tmp, ".csv"),
    "file_jsonl": lambda tmp: file_source(tmp, ".jsonl"),
    "memory": lambda tmp: MemorySource(ROWS, batch_size=3),
    "iterator": lambda tmp: IteratorSource("it", lambda: iter(ROWS.to_batches(max_chunksize=2))),
    "paced": lambda tmp: Paced(MemorySource(ROWS, batch_size=2), rate=1e9),
    "txn_generator": lambda tmp: GeneratorSource(
        TxnGeneratorConfig(n_customers=5), n_events=50, batch_size=20
    ),
    "telemetry": lambda tmp: TelemetrySource(TelemetryConfig(n_devices=4), 50, batch_size=20),
    "telemetry_site": lambda tmp: TelemetrySource(
        TelemetryConfig(n_devices=4), 50, batch_size=20, site="eu-2"
    ),
    # batches across chunk ends, generated by a thread ahead of the reader
    "nexmark": lambda tmp: NexmarkSource(
        NexmarkConfig(events=60, chunk_events=25), batch_size=20, prefetch=1
    ),
}


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def webhook(tmp_path) -> Callable[[], WebhookSink]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    return lambda: WebhookSink(url, str(tmp_path), retries=0)


TIMED = ROWS.append_column("ts", pa.array(np.arange(7) * 86_400_000).cast(pa.timestamp("ms")))
SINKS: dict[str, Callable[[Any], Callable[[], Any]]] = {
    "table_sink_keyed": lambda tmp: lambda: TableSink(str(tmp), "out", key="event_id"),
    "table_sink_two_keys": lambda tmp: lambda: TableSink(str(tmp), "out2", key=("k", "event_id")),
    "table_sink_append": lambda tmp: lambda: TableSink(str(tmp), "log"),
    "parquet_sink": lambda tmp: lambda: ParquetSink(str(tmp / "pq")),
    "list_sink": lambda tmp: ListSink,
    "slow_sink": lambda tmp: lambda: SlowSink(delay=0.001),
    "webhook_sink": webhook,
}

# -- the one parametrized test -------------------------------------------------------------

PARAMS = [
    pytest.param("kind", name, check.__name__, id=f"{name}-{check.__name__}")
    for name, (kind, *_) in KINDS.items()
    for check in yield_checks(kind)
] + [pytest.param("source", name, "all", id=f"source-{name}") for name in SOURCES]
PARAMS += [pytest.param("sink", name, "all", id=f"sink-{name}") for name in SINKS]


@pytest.mark.parametrize(("what", "name", "check"), PARAMS)
def test_contract(what: str, name: str, check: str, tmp_path) -> None:
    if what == "kind":
        kind, events, config, watermark = KINDS[name]
        chosen = next(c for c in yield_checks(kind) if c.__name__ == check)
        why = exemption(kind, chosen)
        if why:
            pytest.skip(f"{kind.name} is exempt from {check}: {why}")
        chosen(Case(kind, events(), config, watermark))
    elif what == "source":
        report = check_source(lambda: SOURCES[name](tmp_path))
        outcome = report["check_resume"]
        if outcome.startswith("exempt:"):
            pytest.skip(f"{name}: {outcome}")
        assert outcome == "passed"
    else:
        make = SINKS[name](tmp_path)
        rows = TIMED if name == "parquet_sink" else ROWS
        report = check_sink(make, rows)
        assert set(report.values()) == {"passed"}, report
        if getattr(make(), "key", None):
            assert "check_idempotent" in report


# -- broken kinds are reported by name and field --------------------------------------------


class Clicks(EntityKind):
    """apply() adds 2 where on_event adds 1."""

    name, key, state = "broken_clicks", "user_id", {"clicks": "int64", "seen": "int64"}

    def on_event(self, state: dict, event: dict) -> None:
        state["clicks"] += 1
        state["seen"] += 1

    def apply(self, batch) -> None:
        np.add.at(batch.state.cols["seen"], batch.slots, 1)
        np.add.at(batch.state.cols["clicks"], batch.slots, 2)


CLICKS = [{"user_id": u} for u in "abacab"]


def test_apply_unlike_on_event_is_named():
    with pytest.raises(ContractError) as err:
        check_kind(Clicks, CLICKS)
    msg = str(err.value)
    assert "clicks" in msg and "broken_clicks" in msg and "check_on_event_matches_apply" in msg
    assert "field clicks:" in msg  # the field that differs, not its neighbour `seen`


class Forgetful(EntityKind):
    """Numbers events kind-wide (``nth``), but restore() forgets the count."""

    name, key, state = "forgetful", "user_id", {"clicks": "int64", "nth": "int64"}

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.total = 0

    def on_event(self, state: dict, event: dict) -> None:
        state["clicks"] += 1
        self.total += 1
        state["nth"] = self.total

    def snapshot(self) -> bytes:
        return json.dumps({"total": self.total}).encode()

    def restore(self, blob: bytes) -> None:
        self.total = 0  # the bug: what snapshot() saved is dropped

    def merge_snapshots(self, blobs: list[bytes]) -> bytes:
        return json.dumps({"total": max(json.loads(b)["total"] for b in blobs)}).encode()


def test_snapshot_that_loses_state_is_named():
    with pytest.raises(ContractError) as err:
        check_kind(Forgetful, CLICKS)
    msg = str(err.value)
    assert "forgetful" in msg and "check_restore" in msg and "field nth" in msg
    assert "snapshot()" in msg  # the fix names the hook


class Renamed(EntityKind):
    """Its stored profile is changed by export(): state after a restart differs."""

    name, key, state = "renamed", "user_id", {"clicks": "int64"}

    def on_event(self, state: dict, event: dict) -> None:
        state["clicks"] += 1

    def export(self, table: pa.Table) -> pa.Table:
        return table.set_column(
            table.schema.get_field_index("clicks"), "clicks", pc.multiply(table["clicks"], 10)
        )


def test_profile_that_changes_on_the_way_to_the_store_is_named():
    with pytest.raises(ContractError, match=r"renamed.*check_restore.*field clicks"):
        check_kind(Renamed, CLICKS)


class Exempt(Tally):
    name = "exempt_tallies"
    contract_exempt = {"check_batch_independence": "sampled state (for this test)"}


def test_exempt_checks_are_reported_with_their_reason():
    report = run_checks(Exempt, Case(Exempt, tallies()))
    assert report["check_batch_independence"] == "exempt: sampled state (for this test)"
    assert report["check_restore"] == "passed"


def test_unkeyed_sink_is_not_claimed_idempotent(tmp_path):
    report = check_subscriber(lambda: TableSink(str(tmp_path), "log"), ROWS)
    assert report == {"check_subscriber_api": "passed"}
