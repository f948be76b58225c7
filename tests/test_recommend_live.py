"""The recommend app as users run it: ``edgecore serve --app recommend`` as a subprocess on
an embedded Ray (one session for the module), shopping events posted over HTTP, offers
asked for with ``GET /v1/recommend``; and ``edgecore demo --app recommend --json``."""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from urllib.error import HTTPError

import pytest
from live_helpers import Serve, cli_json, get, ndjson, post

from actors.recommend.catalog import CommerceConfig, catalog_table
from actors.recommend.generator import events_table
from actors.recommend.products import write_catalog_table
from runtime.state.store import Store

WORLD = CommerceConfig(n_products=3_000, n_customers=200, n_themes=30)
TOKEN = "rec-s3cret"
N_EVENTS = 6_000


def ask(port: int, token: str | None = TOKEN, **params) -> tuple[int, dict]:
    return get(port, "/v1/recommend?" + urllib.parse.urlencode(params), token=token)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A serving process over a small catalog (written before it starts, as an operator
    would) that has taken the first events of the stream; stopped with SIGTERM at the end
    of the module (the last test checks what it left)."""
    data = tmp_path_factory.mktemp("rec") / "d"
    write_catalog_table(Store(data), catalog_table(WORLD))
    events = events_table(N_EVENTS, WORLD).to_pylist()
    for r in events:
        r["ts"] = r["ts"].isoformat()
    serve = Serve(data, "--app", "recommend", "--token", TOKEN)
    try:
        port = serve.wait_http()
        for lo in range(0, N_EVENTS, 1_500):
            status, counts = post(port, ndjson(events[lo : lo + 1_500]), token=TOKEN)
            assert status == 200 and counts["accepted"] == 1_500, counts
        yield serve, port, data, events
    finally:
        serve.stop()


def settled(port: int, customers: list[str]) -> list[dict]:
    """The customers' answers once everything posted is applied (two rounds agree)."""
    last = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = [ask(port, customer=c, k=10)[1] for c in customers]
        if now == last:
            return now
        last = now
        time.sleep(0.5)
    raise AssertionError("answers kept changing")


def test_recommend_answers_k_items_and_refuses_bad_requests(served):
    serve, port, _, _ = served
    status, body = ask(port, customer="c1", k=7)
    assert status == 200, body
    assert body["customer"] == "c1" and len(body["product_ids"]) == 7
    assert len(body["scores"]) == len(body["reasons"]) == 7
    assert ask(port, customer="a-stranger")[1]["reasons"] == ["popular"] * 10  # default k
    for params, why in [
        ({"k": "5"}, "customer"),
        ({"customer": "c1", "k": "0"}, "'k'"),
        ({"customer": "c1", "k": "abc"}, "must be int"),
        ({"customer": "c1", "k": "1e9"}, "must be int"),
        ({"customer": "c1", "k": "9" * 100}, r"in \[1, 100\]"),
        ({"customer": "c1", "k": "nan"}, "'k'"),
        ({"customer": "c1", "colour": "red"}, "unknown parameters"),
        ({"customer": "c" * 4_000}, "over 256"),
    ]:
        status, body = ask(port, **params)
        assert status == 400, (params, status, body)
        assert "error" in body and re.search(why, body["error"]), (params, body)
    # a 10 KB id is over the HTTP server's request-line limit (8 KB): 400 before any parsing
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/recommend?customer={'c' * 10_240}")
    req.add_header("Authorization", f"Bearer {TOKEN}")
    with pytest.raises(HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 400 and b"8190" in err.value.read()
    # the token guards queries as it guards ingest
    assert ask(port, token=None, customer="c1")[0] == 401
    assert ask(port, token="wrong", customer="c1")[0] == 401
    assert serve.proc.poll() is None


def test_concurrent_requests_each_get_their_own_answer(served):
    _, port, _, _ = served
    customers = [f"c{i}" for i in range(50)]
    single = settled(port, customers)
    assert any(set(a["reasons"]) - {"popular"} for a in single)  # tastes were learned
    with ThreadPoolExecutor(50) as pool:
        got = list(pool.map(lambda c: ask(port, customer=c, k=10), customers * 2))
    for (status, body), want in zip(got, single * 2, strict=True):
        assert status == 200
        assert body == want


def test_offers_land_in_the_offers_table_after_stop(served):
    """Last in the module: stops the service."""
    serve, _, data, events = served
    serve.signal(signal.SIGTERM)
    assert serve.wait(timeout=60) == 0, serve.stderr[-3000:]
    adds = {e["event_id"] for e in events if e["event_type"] == "add_to_cart"}
    offers = Store(data).read("offers")
    assert set(offers["event_id"].to_pylist()) == adds
    assert offers.num_rows == len(adds)
    assert all(0 < len(p) <= 10 for p in offers["product_ids"].to_pylist())


def test_demo_json(tmp_path):
    out = cli_json(
        tmp_path, "demo", "--app", "recommend", "--events", "60000", "--customers", "2000",
        "--data", str(tmp_path / "d"), timeout=300,
    )  # fmt: skip
    report = json.dumps(out)
    for name in ("hit_rate_at_10", "popularity_hit_rate_at_10", "cooccurrence_hit_rate_at_10"):
        assert f'"{name}"' in report, out
