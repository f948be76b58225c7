"""The scenarios of the chaos matrix (scripts/chaos.py): each runs the ledger app
(runtime.testing.ledger) through the product under load, breaks one thing at a random
point between 30 % and 70 % of the stream, and accounts for every event afterwards.

How a run is judged (from outside, see runtime.testing.ledger): the committed ``ledgers``
table (its ``n`` and base-3 ``total`` name every event applied 0, 1 or 2 times), the
``entries`` table its sink writes (each valid event's id once), and the dead letters
(each keyless event once). ``lost`` and ``doubled`` count distinct event ids.

``recovery_s``: seconds from the fault (the SIGKILL sent, the broker stopped, the node
removed, the crashed command seen exiting) until the data folder holds a commit past the
last one made before the fault — the runtime is processing and committing events again;
where the command says it restarts from its last checkpoint (an actor killed), a commit
made after that restart. It includes the restart itself, so it is an upper bound by at
most one checkpoint interval.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.error import URLError

import pyarrow as pa
import pyarrow.parquet as pq
from chaos_procs import (
    RESTARTED,
    Broker,
    Command,
    committed_tables,
    find_victim,
    free_port,
    progress,
    wait_until,
)

from runtime.testing.faults import EXIT_CODE
from runtime.testing.ledger import account, dead_letter_ids, ledger_events

APP = "runtime.testing.ledger:ledger_app"
#: what each scenario kills (the actor name prefix, runtime.cluster.names)
VICTIMS = {
    "shard": "shard:ledgers:",
    # the default apps host their output topics inside their shards (no topic actor);
    # dead letters have a topic actor of their own in every run
    "topic": "topic:dead_letters",
    # the table sinks live in their node's host process (runtime.cluster.host), with the
    # status board: killing the sink is killing that process
    "sink": "host:",
    "stage": "stage:ingest:ledger:",
}
SCENARIOS = ("shard", "stage", "topic", "sink", "edge", "commit", "broker")


@dataclass
class Result:
    scenario: str
    seed: int
    events: int
    lost: int = 0
    doubled: int = 0
    recovery_s: float | None = None
    why: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """0 lost, 0 doubled, and the fault really happened and was recovered from."""
        return (
            not self.lost
            and not self.doubled
            and self.recovery_s is not None
            and not any(w.startswith("!") for w in self.why)
        )

    def row(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "seed": self.seed,
            "events": self.events,
            "lost": self.lost,
            "doubled": self.doubled,
            "recovery_s": None if self.recovery_s is None else round(self.recovery_s, 2),
            "ok": self.ok,
            "why": self.why,
        }


def fault_fraction(scenario: str, seed: int) -> float:
    """Where in the stream the fault goes: uniform in [0.3, 0.7], fixed by scenario and seed."""
    return random.Random(f"{scenario}:{seed}").uniform(0.3, 0.7)


def judge(res: Result, events: pa.Table, data: Path, entries: str = "entries") -> Result:
    """Account for every event of ``events`` in what ``data`` committed."""
    kind = "site_ledgers" if entries == "site_entries" else "ledgers"
    tables = committed_tables(data, [kind, entries, "dead_letters"])
    state: dict[str, tuple[int, float]] = {}
    if tables[kind] is not None:
        for r in tables[kind].select(["key", "n", "total"]).to_pylist():
            state[r["key"]] = (r["n"], r["total"])
    got = [] if tables[entries] is None else tables[entries].column("event_id").to_pylist()
    bad = events.column("key").null_count
    dead_rows = tables["dead_letters"]
    dead = [] if dead_rows is None else dead_letter_ids(dead_rows.column("raw").to_pylist())
    found = account(events, state, entries=got, dead=dead if bad else None)
    res.lost, res.doubled = found.n_lost, found.n_doubled
    res.why += found.why
    return res


def _watch_recovery(
    res: Result,
    data: Path,
    before: int,
    t_fault: float,
    ended: Callable[[], bool] = lambda: False,
    restarted: Callable[[], bool] | None = None,
    timeout: float = 600,
) -> None:
    """Wait for a commit past ``before`` (or for the command to end: it was too late then);
    record the seconds since ``t_fault``. With ``restarted`` (the command said it restarts
    from its last commit), the commit must also come after that restart: a commit already
    under way at the fault does not count."""
    if restarted is not None:
        wait_until(lambda: restarted() or ended(), timeout, 0.05)
        before = max(before, progress(data))  # where the restart resumes from
    wait_until(lambda: progress(data) > before or ended(), timeout, 0.05)
    if progress(data) > before:
        res.recovery_s = time.monotonic() - t_fault
    else:
        res.why.append(f"! no commit past position {before} within {timeout:g} s of the fault")


def _late(res: Result, before: int, n: int, ended: bool) -> bool:
    """True (and say so) if the fault would come after the stream's end: a machine too busy
    to watch the stream in time. Else note where the fault came."""
    if ended or before >= n:
        res.why.append(f"! the stream ended before the fault (committed {before} of {n})")
        return True
    res.why.append(f"fault at {before / n:.0%} of the stream (committed)")
    return False


# -- replay: a shard, the dead letters' topic, the sink, or the commit itself -----------------
def run_replay(scenario: str, seed: int, n: int, work: Path, seconds: float) -> Result:
    """``edgecore replay`` of a paced file; SIGKILL the victim's worker (``shard``,
    ``topic``, ``sink``), or crash the command inside a commit and run it again (``commit``)."""
    res = Result(scenario, seed, n)
    events = ledger_events(n, seed, bad_every=50)
    path, data = work / "events.parquet", work / "data"
    pq.write_table(events, path)
    batch = max(20, n // 200)
    every = max(batch, n // 20)
    args = [
        "replay", str(path), "--app", APP, "--data", str(data), "--shards", "2",
        "--rate", f"{n / seconds:.1f}", "--batch-size", str(batch),
        "--checkpoint-every", str(every), "--json",
    ]  # fmt: skip
    at = int(fault_fraction(scenario, seed) * n)
    crash = {}
    if scenario == "commit":  # the commit that covers the fault point's row
        crash = {"EDGECORE_FAULT": f"commit:after_tables@{max(1, math.ceil(at / every))}"}
    cmd = Command(*args, extra_env=crash)
    try:
        if scenario == "commit":
            rc = cmd.wait(timeout=600)
            t_fault = time.monotonic()
            before = progress(data)
            cmd.kill_all()  # Ray's processes of the crashed command, if any remain
            if rc != EXIT_CODE:
                res.why.append(f"! the command exited {rc}, not at the fault point")
                return res
            res.why.append(f"crashed inside a commit: fault at {before / n:.0%} (committed)")
            cmd = Command(*args)
        else:
            name, pid = find_victim(cmd, VICTIMS[scenario], seed)
            if not wait_until(lambda: progress(data) >= at or cmd.proc.poll() is not None, 600):
                res.why.append("! the stream did not reach the fault point")
                return res
            before = progress(data)
            if _late(res, before, n, cmd.proc.poll() is not None):
                return res
            os.kill(pid, signal.SIGKILL)
            t_fault = time.monotonic()
            res.why.append(f"SIGKILL {name} (pid {pid}) after position {before}")
        ended = lambda: cmd.proc.poll() is not None  # noqa: E731
        _watch_recovery(
            res, data, before, t_fault, ended, None if crash else lambda: cmd.said(RESTARTED)
        )
        rc = cmd.wait(timeout=600)
        if rc != 0:
            res.why.append(f"! the command exited {rc}: {cmd.stderr[-800:]}")
        elif scenario != "commit" and not cmd.said(RESTARTED):
            res.why.append("the runtime did not restart (it did not notice the fault)")
    finally:
        cmd.kill_all()
    return judge(res, events, data)


# -- serve: the live ingest stage over HTTP, or the MQTT broker --------------------------------
def _post(port: int, body: bytes, timeout: float = 30) -> bool:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/events", data=body, method="POST")
    req.add_header("Content-Type", "application/x-ndjson")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status == 200
    except (URLError, OSError, ValueError):
        return False


def _chunks(events: pa.Table, size: int) -> list[list[dict[str, Any]]]:
    rows = events.to_pylist()
    return [rows[i : i + size] for i in range(0, len(rows), size)]


class Load:
    """Sends ``chunks`` at ``rate`` events/s from a thread, each until it is acknowledged
    (a client that retries what was not acknowledged: the runtime drops what it applied
    already by event id); ``sent`` counts acknowledged events."""

    def __init__(self, chunks: list[list[dict[str, Any]]], rate: float, send: Any) -> None:
        self.chunks, self.rate, self.send = chunks, rate, send
        self.sent = 0
        self.failures = 0
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        t0 = time.monotonic()
        for chunk in self.chunks:
            lag = t0 + (self.sent + len(chunk)) / self.rate - time.monotonic()
            if lag > 0:
                time.sleep(lag)
            deadline = time.monotonic() + 300
            while not self.send(chunk):
                self.failures += 1
                if time.monotonic() > deadline:
                    self.error = f"a batch was not acknowledged within 300 s (at {self.sent})"
                    return
                time.sleep(0.2)
            self.sent += len(chunk)

    def done(self, timeout: float) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive() and self.error is None


def run_serve(scenario: str, seed: int, n: int, work: Path, seconds: float) -> Result:
    """``edgecore serve`` on live ingest under a paced client: SIGKILL the HTTP ingest
    stage's worker (``stage``), or stop and restart the MQTT broker (``broker``)."""
    res = Result(scenario, seed, n)
    events = ledger_events(n, seed)  # no dead letters: a retried request would log them twice
    data = work / "data"
    chunks = _chunks(events, max(10, n // 200))
    broker = Broker(work / "broker").start() if scenario == "broker" else None
    port = free_port()
    args = ["serve", "--app", APP, "--data", str(data), "--checkpoint-seconds", "1"]
    if broker is not None:
        args += ["--http", "none", "--mqtt", f"mqtt://127.0.0.1:{broker.port}/ledger/#"]
    else:
        args += ["--http", f"127.0.0.1:{port}"]
    cmd = Command(*args)
    client = None
    try:
        ready = "subscribed to" if broker is not None else "/v1/events"
        if not wait_until(lambda: cmd.said(ready) or cmd.proc.poll() is not None, 300):
            res.why.append("! serve did not come up")
            return res
        victim = None
        if scenario == "stage":  # up before the load starts: looking costs seconds
            victim = find_victim(cmd, VICTIMS["stage"], seed)
        if broker is not None:
            client = _mqtt(broker.port, f"chaos-{seed}")
            load = Load(chunks, n / seconds, lambda c: _publish(client, c))
        else:
            load = Load(chunks, n / seconds, lambda c: _post(port, _ndjson(c)))
        at = int(fault_fraction(scenario, seed) * n)
        if not wait_until(lambda: load.sent >= at or not load.thread.is_alive(), 600, 0.01):
            res.why.append("! the load did not reach the fault point")
            return res
        before = progress(data)
        if load.sent >= n:
            res.why.append("! the load was sent before the fault")
            return res
        res.why.append(f"fault at {load.sent / n:.0%} of the stream (acknowledged)")
        if victim is not None:
            os.kill(victim[1], signal.SIGKILL)
            t_fault = time.monotonic()
            res.why.append(f"SIGKILL {victim[0]} (pid {victim[1]}) at {load.sent} sent")
        else:
            assert broker is not None
            broker.stop()
            t_fault = time.monotonic()
            time.sleep(0.5)
            broker.start()
            res.why.append(f"broker restarted at {load.sent} sent")
        _watch_recovery(
            res,
            data,
            before,
            t_fault,
            lambda: cmd.proc.poll() is not None,
            (lambda: cmd.said(RESTARTED)) if victim is not None else None,
        )
        if not load.done(600):
            res.why.append(f"! the client could not send everything: {load.error}")
        # everything is acknowledged (durable); a stop applies and commits it
        wait_until(lambda: _applied(data) >= n, 120, 0.5)
        cmd.proc.send_signal(signal.SIGTERM)
        rc = cmd.wait(timeout=120)
        if rc != 0:
            res.why.append(f"! serve exited {rc}: {cmd.stderr[-800:]}")
        if scenario == "stage" and not cmd.said(RESTARTED):
            res.why.append("the runtime did not restart (it did not notice the fault)")
    finally:
        if client is not None:
            client.loop_stop()
            client.disconnect()
        cmd.kill_all()
        if broker is not None:
            broker.stop()
    return judge(res, events, data)


def _ndjson(rows: list[dict[str, Any]]) -> bytes:
    return "\n".join(json.dumps(r) for r in rows).encode()


def _applied(data: Path) -> int:
    """Events the committed ledger holds (a doubled one counts twice)."""
    try:
        table = committed_tables(data, ["ledgers"])["ledgers"]
    except Exception:  # a commit being written: ask again
        return 0
    return 0 if table is None else int(pa.compute.sum(table.column("n")).as_py() or 0)


def _mqtt(port: int, client_id: str) -> Any:
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    c.reconnect_delay_set(min_delay=0.1, max_delay=1)
    c.connect("127.0.0.1", port)
    c.loop_start()
    wait_until(c.is_connected, 10)
    return c


def _publish(client: Any, rows: list[dict[str, Any]]) -> bool:
    """One QoS 1 message; True once the broker acknowledged it (else the caller sends it
    again: the runtime drops the events it applied already)."""
    if not wait_until(client.is_connected, 5, 0.05):
        return False
    info = client.publish("ledger/eu-1", json.dumps(rows), qos=1)
    try:
        info.wait_for_publish(timeout=5)
    except (RuntimeError, ValueError):
        return False
    return info.is_published()
