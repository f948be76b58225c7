"""The soak's load: fraud transactions posted to ``edgecore serve`` at a steady rate.

Runs as its own process (``python scripts/soak_load.py PORT RATE SECONDS OUT``), so the
sampler and the load never share a GIL. Events come from the fraud app's generator (a
fixed population of customers, so profile state is bounded and any growth the soak sees
is the runtime's, not the data's); a pool of generated rows is cycled with fresh event
ids and current event times, so every event is new to the runtime's deduplication.

Open loop: every 10 ms it owes ``RATE / 100`` events and posts what it owes as one Arrow
IPC body (a late tick posts more, so the rate holds over a second). ``RATE`` 0 posts as
fast as two connections carry (the capacity probe). A ``429``/``503`` answer is retried
after its ``Retry-After``; only ``200`` answers count as acknowledged. It writes
``{"acked", "accepted", "posts", "refused", "errors", "seconds", "max_id"}`` to ``OUT``
every second and at the end.
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

TICK_S = 0.01
POOL_ROWS = 200_000
MAX_BATCH = 5_000
ARROW = "application/vnd.apache.arrow.stream"


def pool() -> pa.Table:
    from actors.fraud.generator import TxnGenerator, TxnGeneratorConfig

    gen = TxnGenerator(TxnGeneratorConfig(n_customers=20_000, fraud_rate=0.005, seed=11))
    table = pa.Table.from_batches(list(gen.batches(POOL_ROWS)))
    return table.drop_columns([c for c in ("is_fraud",) if c in table.column_names])


class Poster:
    """One keep-alive connection with Nagle off (the body must not wait for an ACK)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def post(self, body: bytes) -> tuple[int, dict, float]:
        for attempt in range(2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                    self.conn.connect()
                    self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.conn.request("POST", "/v1/events", body, {"Content-Type": ARROW})
                resp = self.conn.getresponse()
                raw = resp.read()
                retry = float(resp.getheader("Retry-After") or 0)
                return resp.status, (json.loads(raw) if raw else {}), retry
            except (OSError, http.client.HTTPException):
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


class Load:
    def __init__(self, port: int, rate: float, seconds: float, out: Path) -> None:
        self.port, self.rate, self.seconds, self.out = port, rate, seconds, out
        self.rows = pool()
        self.cursor = 0
        self.next_id = 10**12  # far from anything a demo wrote
        self.lock = threading.Lock()
        self.counts = {"acked": 0, "accepted": 0, "posts": 0, "refused": 0, "errors": 0}
        self.t0 = time.monotonic()

    def body(self, n: int) -> bytes:
        with self.lock:
            start = self.cursor
            self.cursor = (self.cursor + n) % self.rows.num_rows
            first = self.next_id
            self.next_id += n
        idx = (np.arange(n) + start) % self.rows.num_rows
        t = self.rows.take(pa.array(idx))
        now_ms = int(time.time() * 1000)
        t = t.set_column(
            t.column_names.index("event_id"), "event_id", pa.array(np.arange(first, first + n))
        )
        ts = pa.array(np.full(n, now_ms, dtype="int64")).cast(pa.timestamp("ms"))
        t = t.set_column(t.column_names.index("ts"), "ts", ts.cast(t.schema.field("ts").type))
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, t.schema) as w:
            w.write_table(t)
        return sink.getvalue().to_pybytes()

    def send(self, poster: Poster, n: int) -> None:
        body = self.body(n)
        while True:
            try:
                code, answer, retry = poster.post(body)
            except (OSError, http.client.HTTPException):
                with self.lock:
                    self.counts["errors"] += 1
                time.sleep(0.2)
                continue
            with self.lock:
                self.counts["posts"] += 1
                if code == 200:
                    self.counts["acked"] += n
                    self.counts["accepted"] += int(answer.get("accepted", 0))
                    return
                self.counts["refused"] += 1
            if code not in (429, 503):
                raise SystemExit(f"soak load: POST answered {code}: {answer}")
            time.sleep(max(retry, 0.05))

    def paced(self) -> None:
        poster, owed, due = Poster(self.port), 0.0, self.t0
        while time.monotonic() - self.t0 < self.seconds:
            due += TICK_S
            owed += self.rate * TICK_S
            n = min(int(owed), MAX_BATCH)
            if n:
                self.send(poster, n)
                owed -= n
            time.sleep(max(0.0, due - time.monotonic()))

    def flat_out(self) -> None:
        poster = Poster(self.port)
        while time.monotonic() - self.t0 < self.seconds:
            self.send(poster, 2_000)

    def report(self) -> None:
        with self.lock:
            out = {**self.counts, "seconds": time.monotonic() - self.t0, "max_id": self.next_id}
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(out))
        tmp.replace(self.out)

    def run(self) -> None:
        work = self.paced if self.rate > 0 else self.flat_out
        threads = [threading.Thread(target=work, daemon=True) for _ in range(1 if self.rate else 2)]
        self.t0 = time.monotonic()
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            time.sleep(1.0)
            self.report()
        self.report()


if __name__ == "__main__":
    port, rate, seconds, out = sys.argv[1:5]
    Load(int(port), float(rate), float(seconds), Path(out)).run()
