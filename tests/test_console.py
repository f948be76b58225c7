"""The web console as users meet it: ``edgecore serve --console`` (a subprocess on the
embedded Ray) driven in headless Chromium while events are posted, ``edgecore console
--address`` attached from another process, and hostile requests to its API."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.error import HTTPError

import pyarrow.parquet as pq
import pytest
from conftest import make_transactions
from live_helpers import Serve, free_port, ndjson, post

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"


def artifacts() -> Path:
    out = Path(os.environ.get("EDGECORE_ARTIFACTS") or ROOT / "tests" / "artifacts")
    out.mkdir(parents=True, exist_ok=True)
    return out


def call(
    port: int,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    method: str | None = None,
) -> tuple[int, Any]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, headers=headers or {}, method=method
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            raw, status = resp.read(), resp.status
    except HTTPError as err:
        raw, status = err.read(), err.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def sql(port: int, text: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    body = json.dumps({"sql": text}).encode()
    return call(port, "/api/sql", body, {"Content-Type": "application/json", **(headers or {})})


@pytest.fixture(scope="module")
def events(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("events")
    rows = pq.read_table(make_transactions(folder / "t.parquet", 6_000, 150)).to_pylist()
    for r in rows:
        r["ts"] = r["ts"].isoformat()
    return rows


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One ``serve --console`` for the module: (serve, ingest port, console port)."""
    data = tmp_path_factory.mktemp("served") / "d"
    serve = Serve(data, "--console", "127.0.0.1:0")
    try:
        port = serve.wait_http()
        console = int(serve.wait_for(r"console on http://[^:]+:(\d+)/").group(1))
        yield serve, port, console
        serve.signal(signal.SIGTERM)
        assert serve.wait(timeout=60) == 0, serve.stderr[-3000:]
    finally:
        serve.stop()


class Poster:
    """Posts ``events`` in small requests from a thread, paced, until all are in."""

    def __init__(self, port: int, events: list[dict], per: int = 100, pause: float = 0.1):
        self.sent = 0
        self.thread = threading.Thread(target=self._run, args=(port, events, per, pause))
        self.thread.start()

    def _run(self, port: int, events: list[dict], per: int, pause: float) -> None:
        for i in range(0, len(events), per):
            status, _ = post(port, ndjson(events[i : i + per]))
            assert status == 200
            self.sent = i + per
            time.sleep(pause)

    def join(self) -> None:
        self.thread.join(timeout=300)


def test_the_console_in_a_browser(served, events):
    """Acceptance: no console errors; events/s rises while events are posted; an alert
    appears in the feed; the placement lists the shards; a lookup shows a posted customer;
    SQL returns rows. Screenshots are saved as test artifacts."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    serve, port, console = served
    out = artifacts()
    problems: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on(
                "console",
                lambda m: (
                    problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None
                ),
            )
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            requested: list[str] = []
            page.on("request", lambda r: requested.append(r.url))
            page.goto(f"http://127.0.0.1:{console}/")
            expect = sync_api.expect
            expect(page.get_by_test_id("state")).to_have_text("up", timeout=30_000)
            expect(page.get_by_test_id("app")).to_have_text("fraud")
            page.screenshot(path=str(out / "console-idle.png"), full_page=True)

            poster = Poster(port, events)
            try:
                # events/s above zero while events arrive
                page.wait_for_function(
                    "() => parseFloat(document.querySelector('[data-testid=eps]')"
                    ".textContent.replace(/[,k]/g, '')) > 0",
                    timeout=60_000,
                )
                # an alert in the feed, as it happens
                expect(page.locator("[data-testid=feed] li").first).to_contain_text(
                    "alerts", timeout=120_000
                )
                page.screenshot(path=str(out / "console-live.png"), full_page=True)
            finally:
                poster.join()
            assert poster.sent >= len(events)
            expect(page.get_by_test_id("placement")).to_contain_text("shard:customers:0")
            expect(page.get_by_test_id("placement")).to_contain_text("stage:ingest:fraud")

            customer = events[0]["customer_id"]
            page.get_by_test_id("entity-kind").select_option("customers")
            page.get_by_test_id("entity-key").fill(customer)
            page.get_by_test_id("entity-go").click()
            result = page.get_by_test_id("entity-result")
            expect(result).to_contain_text("txn_count", timeout=30_000)
            expect(result).to_contain_text(customer)
            count = sum(1 for e in events if e["customer_id"] == customer)
            txn = result.locator("tr", has_text="txn_count").locator("td").nth(1)
            expect(txn).to_have_text(str(count))

            page.get_by_test_id("sql-text").fill("SELECT count(*) AS n FROM customers")
            page.get_by_test_id("sql-run").click()
            expect(page.get_by_test_id("sql-result").locator("th")).to_have_text(["n"])
            n = int(page.get_by_test_id("sql-result").locator("td").first.inner_text())
            assert n == len({e["customer_id"] for e in events})
            expect(page.get_by_test_id("models")).to_contain_text("customers: version")
            page.wait_for_timeout(1500)  # a second of charts after the burst
            # the whole page in one viewport: a full-page capture would draw the sticky
            # top bar where the viewport ended
            height = page.evaluate("document.documentElement.scrollHeight")
            page.set_viewport_size({"width": 1400, "height": height})
            page.wait_for_timeout(300)
            page.screenshot(path=str(out / "console.png"))
        finally:
            browser.close()
    assert problems == []
    # nothing came from anywhere but the console itself
    assert all(u.startswith(f"http://127.0.0.1:{console}/") for u in requested), requested


def test_the_api_shrugs_off_hostile_requests(served):
    """Each bad request gets a 4xx with a reason; a good one right after still works."""
    _, _, console = served
    good = lambda: call(console, "/api/status")  # noqa: E731
    bad: list[tuple[int, tuple[int, Any]]] = [
        (400, call(console, "/api/entity?kind=nope&key=c1")),
        (400, call(console, "/api/entity?kind=customers&key=" + "x" * 1000)),
        (400, call(console, "/api/entity?kind=customers&key=")),
        (404, call(console, "/api/entity?kind=customers&key=%27%20OR%201%3D1--")),
        (404, call(console, "/api/entity?kind=customers&key=%00%ff")),
        (400, sql(console, "SELEC oops")),
        (400, sql(console, "SELECT * FROM read_csv('/etc/passwd')")),
        (400, sql(console, "COPY customers TO '/tmp/x.csv'")),
        (400, sql(console, "")),
        (400, sql(console, "SELECT 1;" * 5_000)),
        (400, call(console, "/api/sql", b"{not json", {"Content-Type": "application/json"})),
        (400, call(console, "/api/sql", b'{"sql": 5}', {"Content-Type": "application/json"})),
        (400, call(console, "/api/sql", b"[]", {"Content-Type": "application/json"})),
        (415, call(console, "/api/sql", b"sql=SELECT 1", {"Content-Type": "text/plain"})),
        (413, call(console, "/api/sql", b" " * 200_000, {"Content-Type": "application/json"})),
        (403, sql(console, "SELECT 1", {"Origin": "http://evil.example"})),
        (403, call(console, "/api/status", headers={"Host": "evil.example"})),
        (405, call(console, "/api/sql")),
        (404, call(console, "/static/..%2f..%2fserver.py")),
        (404, call(console, "/static/nothing.js")),
        (404, call(console, "/api/nothing")),
    ]
    for want, (status, body) in bad:
        assert status == want, (want, status, body)
        assert isinstance(body, dict) and body.get("error"), body
        assert "Traceback" not in json.dumps(body)
        assert good()[0] == 200
    status, body = sql(console, "SELECT 41 + 1 AS answer, 'x' AS x, 'x' AS x")
    assert status == 200 and body["columns"] == ["answer", "x", "x"]
    assert body["rows"] == [[42, "x", "x"]]
    status, body = sql(console, "SELECT * FROM range(2000)")
    assert status == 200 and len(body["rows"]) == 500 and body["truncated"]
    assert body["row_count"] == 2000
    # the page is served with its policy, and the script is shipped, not fetched
    req = urllib.request.Request(f"http://127.0.0.1:{console}/")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
        page = resp.read().decode()
    assert "<script>" not in page and "http" not in page.replace("http-equiv", "")
    # an SSE stream opens with its hello and a status frame follows
    with urllib.request.urlopen(f"http://127.0.0.1:{console}/api/stream", timeout=30) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        seen = b""
        while b"event: status" not in seen:
            seen += resp.read1(65536)
    assert seen.startswith(b"event: hello\n")


def test_edgecore_console_attaches_to_a_running_serve(served, tmp_path):
    serve, _, console = served
    # the serve's own Ray, as its console shows it: attached by that address (not 'auto',
    # which may find another cluster on a shared machine)
    address = call(console, "/api/status")[1]["ray_address"]
    assert re.fullmatch(r"[\w.\-]+:\d+", address), address
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "console", "--address", address, "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        lines: list[str] = []
        while not any("console on" in line for line in lines):
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "".join(lines)
            lines.append(line)
        port = int(re.search(r"console on http://[^:]+:(\d+)/", lines[-1]).group(1))
        deadline = time.monotonic() + 60
        while True:
            status, body = call(port, "/api/status")
            if status == 200 and body["state"] == "up" and body["kinds"]:
                break
            assert time.monotonic() < deadline, body
            time.sleep(0.5)
        assert body["ray_address"] == address  # the same runtime, not another one here
        actors = [a["actor"] for g in body["placement"] for n in g["nodes"] for a in n["actors"]]
        assert "shard:customers:0" in actors and "fraud" in body["apps"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_off_loopback_needs_a_token_before_anything_starts(tmp_path):
    for args in (
        ["console", "--host", "0.0.0.0", "--port", str(free_port())],
        ["serve", "--console", f"0.0.0.0:{free_port()}", "--data", str(tmp_path / "d")],
        ["serve", "--console", "nonsense", "--data", str(tmp_path / "d")],
    ):
        t0 = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "runtime.cli", *args],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), "EDGECORE_TOKEN": ""},
            timeout=120,
        )
        assert done.returncode == 1, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "token" in done.stderr or "HOST:PORT" in done.stderr
        assert time.monotonic() - t0 < 20  # refused before Ray started


def test_a_token_guards_every_request_and_the_browser_gets_a_cookie():
    """Off loopback: bearer for API clients; ``/?token=`` once sets an HttpOnly,
    SameSite=Strict cookie (not the token itself) and redirects the token out of the URL."""
    from runtime.console import ConsoleData, ConsoleOptions, ConsoleServer

    server = ConsoleServer(ConsoleData(), ConsoleOptions("0.0.0.0", 0, "s3cret"))
    port = server.start()
    try:
        assert call(port, "/api/status")[0] == 401
        assert call(port, "/api/status", headers={"Authorization": "Bearer nope"})[0] == 401
        assert call(port, "/api/status", headers={"Authorization": "Bearer s3cret"})[0] == 200
        assert call(port, "/?token=wrong")[0] == 401
        assert call(port, "/static/console.js")[0] == 200  # code, no data

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: Any) -> None:
                return None

        opener = urllib.request.build_opener(NoRedirect)
        with pytest.raises(HTTPError) as got:
            opener.open(f"http://127.0.0.1:{port}/?token=s3cret", timeout=30)
        assert got.value.code == 303 and got.value.headers["Location"] == "/"
        cookie = got.value.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "s3cret" not in cookie
        value = cookie.split(";")[0]
        assert call(port, "/api/status", headers={"Cookie": value})[0] == 200
        assert call(port, "/api/status", headers={"Cookie": value + "x"})[0] == 401
    finally:
        server.close()


def test_the_page_ships_in_the_package(tmp_path):
    """What setuptools builds for the wheel (build_py of a copy of the project) carries the
    page's files, and the server finds them there through the package's resources."""
    src, built = tmp_path / "src", tmp_path / "built"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("runtime", "actors"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run(
        [sys.executable, "-c", "import setuptools; setuptools.setup()", "-q", "build_py"]
        + ["-d", str(built)],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = subprocess.run(
        [sys.executable, "-c", "from runtime.console.server import static_files as f; "
         "import runtime; print(runtime.__file__, sorted(f()))"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(built)},
        timeout=120,
    )  # fmt: skip
    assert found.returncode == 0, found.stderr[-2000:]
    where, files = found.stdout.split(" ", 1)
    assert where.startswith(str(built))
    assert files.strip() == "['console.css', 'console.js', 'index.html']"
