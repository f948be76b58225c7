"""A live HTTP gate at an edge whose path to the core is cut, on a real multi-node Ray.

The pieces are tested apart elsewhere (a full edge buffer stops the edge shard's intake:
``test_store_forward``; a stalled dispatch makes a gate answer 429: ``test_http``). Here
they run together as ``serve --sites`` runs them: each site's ``LiveIngest`` actor at its
edge takes HTTP posts, its ``site_relays`` shard forwards every event to the core's
``relay_tallies`` through the edge's durable log. The core-side receivers are stopped
(SIGSTOP: a partition), the edge fills its buffer, its shard stops taking batches, the
gate's pending rows reach their bound and it must answer 429 instead of acknowledging.
Clients retry what was refused; the partition heals; every event acknowledged with a
200 is counted once at the core and once at its edge, and none that was refused twice.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

from conftest import EDGE_SITES
from live_helpers import ndjson, post

from runtime import Runtime
from runtime.cluster import names
from runtime.cluster.handles import resolve
from runtime.dataflow.driver import drive
from runtime.ingest.http import HttpOptions
from runtime.ingest.live import LiveFeeder
from runtime.state.store import Store
from runtime.testing.edge import relay_app

SITES = EDGE_SITES
GATE_ROWS = 3_000  # each gate's bound on rows logged but not yet taken by its shards


def on_actor(name: str, fn) -> object:
    import ray

    actor = ray.get_actor(name, namespace="edgecore")
    return ray.get(actor.__ray_call__.remote(fn), timeout=60)


def rows(site: str, first: int, n: int, keys: int = 30) -> list[dict]:
    base = 0 if site == SITES[0] else 10_000_000
    return [
        {"event_id": base + i, "key": f"{site}-k{i % keys}", "site": site, "value": float(i % 5)}
        for i in range(first, first + n)
    ]


class Client:
    """One site's sender: posts batches, keeps what got a 200, retries what got a 429."""

    def __init__(self, site: str, port: int) -> None:
        self.site, self.port = site, port
        self.acked: list[dict] = []
        self.refused, self.next_id = 0, 0
        self.codes: Counter = Counter()

    def send(self, n: int, until: float) -> bool:
        """Post ``n`` new events, retrying refusals until ``until``; True if acknowledged."""
        batch = rows(self.site, self.next_id, n)
        self.next_id += n
        while time.monotonic() < until:
            code, body = post(self.port, ndjson(batch), timeout=30)
            self.codes[code] += 1
            if code == 200:
                assert body["accepted"] == n, body
                self.acked += batch
                return True
            assert code in (429, 503), (code, body)  # refused: nothing of it was kept
            self.refused += 1
            time.sleep(0.1)
        return False


def test_a_gate_at_a_cut_off_edge_refuses_once_full_and_what_it_acknowledged_arrives_once(
    edge_cluster, tmp_path: Path
) -> None:
    stop, opened = threading.Event(), threading.Event()
    feeder = LiveFeeder(
        HttpOptions(port=0), sites=list(SITES), durable=True, on_open=lambda g: opened.set()
    )
    out: dict = {}
    cfg = dict(shards=1, checkpoint_seconds=1.0, link_timeout_s=1.0, link_settle_s=60.0)
    rt = Runtime(
        address=edge_cluster.address, data_dir=str(tmp_path), edge_buffer_bytes=40_000, **cfg
    )
    rt.start()

    def run() -> None:
        try:
            out["stats"] = drive(rt, relay_app(SITES), [feeder], stop=stop)
        except BaseException as err:  # raised below
            out["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert opened.wait(120), "the gates never opened"
        bound = ("max_pending_rows", GATE_ROWS)  # (a lambda: Ray ships it by value)
        for site in SITES:  # a small bound, so that the test posts thousands, not 200k
            on_actor(names.ingest_stage("relay", site), lambda s: setattr(s.gate, *bound))
        clients = [Client(s, feeder.opened[s]["http_port"]) for s in SITES]
        for c in clients:  # the link up: everything flows
            assert c.send(500, time.monotonic() + 60)
        receivers = [
            on_actor(names.receiver("site_relays", s), lambda self: os.getpid()) for s in SITES
        ]
        for pid in receivers:
            os.kill(pid, signal.SIGSTOP)  # the path to the core is cut
        cut_at = time.monotonic()
        try:
            # keep posting until every gate refused a while (its edge is full) or 60 s
            while time.monotonic() - cut_at < 60 and not all(c.refused >= 5 for c in clients):
                for c in clients:
                    c.send(500, time.monotonic() + 0.5)
            held = {c.site: len(c.acked) for c in clients}
        finally:
            for pid in receivers:
                os.kill(pid, signal.SIGCONT)  # the partition heals
        for c in clients:  # the refused batches again, and a last one, now that there is room
            assert c.send(200, time.monotonic() + 120), f"{c.site}: still refused after healing"
        shards, deadline = rt.shards_of("site_relays"), time.monotonic() + 120
        while time.monotonic() < deadline:  # the edges' backlog forwarded
            links = [lk for got in resolve([s.link_status() for s in shards]) for lk in got]
            if all(lk["up"] and lk["buffered_entries"] == 0 for lk in links):
                break
            time.sleep(0.2)
        time.sleep(2.5)  # a checkpoint after the last acknowledgement
    finally:
        stop.set()
        thread.join(120)
        rt.stop()
    assert "error" not in out, out.get("error")
    assert not thread.is_alive()
    print({c.site: (len(c.acked), c.refused, dict(c.codes)) for c in clients}, held)
    # while cut off, each gate acknowledged more (its log and the edge's buffer held it),
    # then refused rather than acknowledge what it had no room for
    assert all(held[c.site] > 500 for c in clients), held
    assert all(c.refused >= 5 and c.codes[429] >= 1 for c in clients)
    # every acknowledged event once at its edge and once at the core; nothing refused counted
    acked = [r for c in clients for r in c.acked]
    want = Counter(r["key"] for r in acked)
    store = Store(tmp_path)
    core = {r["key"]: r["n"] for r in store.read("relay_tallies").to_pylist()}
    edge = {r["key"]: r["n"] for r in store.read("site_relays").to_pylist()}
    assert core == dict(want)
    assert edge == dict(want)
