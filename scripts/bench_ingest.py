"""Live ingest: events/s and latency over HTTP and MQTT, per hop, with the write-ahead log on/off.

Runs the fraud app on an embedded Ray, driven as ``edgecore serve`` drives it (a live
ingest actor with its gate, HTTP front end and MQTT listener), and offers synthetic
transactions open-loop in batches every 10 ms from a separate sender process. One run
measures, each scenario on a fresh live ingest actor of the same runtime:

* latency at 50,000 and 10,000 events/s offered, over HTTP (NDJSON over 4 keep-alive
  connections) and MQTT (a local Mosquitto, QoS 1, one JSON-array message per batch):
  ingest -> alert p50/p99/max, where ingest is when the sender sent the batch and the
  alert is seen by a subscriber of the ``alerts`` topic; and per hop:
  send -> HTTP answer (durable), send -> ``detected_at`` (the shard scored it),
  ``detected_at`` -> subscriber;
* the highest sustained HTTP rate (achieved >= 95 % of offered and p99 ingest -> alert
  <= 100 ms), stepping the offered rate up, for NDJSON and Arrow IPC bodies;
* the write-ahead log's cost: the same high offered rate with the log on and off.

Alerts to events of the first second of a scenario are reported apart (every actor's
first calls).

    python scripts/bench_ingest.py [--seconds 35] [--step-seconds 8] [--quick] [--json]

Latency scenarios last ``--seconds`` (default 35, so that one checkpoint, every 30 s as
``serve`` commits, falls inside them: its cost is in the p99); each step of the
sustained-rate search and the log's on/off pair last ``--step-seconds``.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import pickle
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

BATCH_MS = 10
HTTP_CONNECTIONS = 4
WARM_UP_S = 1.0
ARROW = "application/vnd.apache.arrow.stream"


def payloads(rate: int, seconds: float, fmt: str, id_base: int) -> list[tuple[np.ndarray, bytes]]:
    """Pre-encoded batches (event ids, body), so the sender only sends."""
    import pyarrow as pa

    from actors.fraud.generator import TxnGenerator, TxnGeneratorConfig

    per_batch = max(1, rate * BATCH_MS // 1000)
    gen = TxnGenerator(TxnGeneratorConfig(n_customers=20_000, fraud_rate=0.01))
    out = []
    for rb in gen.batches(int(rate * seconds), batch_size=per_batch):
        rb = rb.set_column(0, "event_id", pa.compute.add(rb.column(0), id_base))
        ids = rb.column("event_id").to_numpy()
        if fmt == "arrow":
            sink = io.BytesIO()
            with pa.ipc.new_stream(sink, rb.schema) as w:
                w.write_batch(rb)
            out.append((ids, sink.getvalue()))
            continue
        rows = rb.to_pylist()
        for r in rows:
            r["ts"] = r["ts"].isoformat()
        out.append((ids, "\n".join(json.dumps(r) for r in rows).encode()))
    return out


# -- the sender process ---------------------------------------------------------------
def send_main(mode: str, target: str, payload_file: str, out_file: str, ctype: str) -> None:
    batches = pickle.loads(Path(payload_file).read_bytes())
    refused = 0
    acked = np.zeros(len(batches))
    workers: list[threading.Thread] = []
    if mode == "http":
        import queue

        host, port = target.split(":")
        queues: list[queue.Queue] = [queue.Queue() for _ in range(HTTP_CONNECTIONS)]

        def worker(q: queue.Queue) -> None:
            nonlocal refused
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
            conn.connect()
            # http.client writes headers and body apart: with Nagle on, the body waits for
            # the server's delayed ACK of the headers (~40 ms a request); clients that
            # post at a high rate turn it off (curl and most HTTP libraries do)
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while (item := q.get()) is not None:
                i, body = item
                while True:  # a 429 means the runtime is backpressuring: retry shortly
                    conn.request("POST", "/v1/events", body, {"Content-Type": ctype})
                    resp = conn.getresponse()
                    resp.read()
                    if resp.status != 429:
                        break
                    refused += 1
                    time.sleep(0.002)
                acked[i] = time.time()

        workers = [threading.Thread(target=worker, args=(q,)) for q in queues]
        for w in workers:
            w.start()

        def send(i: int, body: bytes) -> None:
            queues[i % len(queues)].put((i, body))
    else:
        import paho.mqtt.client as mqtt

        host, port = target.split(":")
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{time.time()}")
        pub.connect(host, int(port))
        pub.loop_start()
        infos: list[Any] = []

        def send(i: int, body: bytes) -> None:  # one message per batch: a JSON array
            infos.append(
                pub.publish("cards/eu-1/txn", b"[" + body.replace(b"\n", b",") + b"]", qos=1)
            )

    sent = np.zeros(len(batches))
    t0 = time.perf_counter()
    for i, (_, body) in enumerate(batches):
        delay = t0 + i * BATCH_MS / 1000 - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent[i] = time.time()
        send(i, body)
    if mode == "http":
        for q in queues:
            q.put(None)
        for w in workers:
            w.join()
    else:
        for info in infos:  # exiting earlier would drop what paho has not sent yet
            info.wait_for_publish(timeout=60)
    elapsed = time.perf_counter() - t0
    Path(out_file).write_bytes(
        pickle.dumps({"sent": sent, "acked": acked, "elapsed": elapsed, "refused": refused})
    )


# -- the runtime side ----------------------------------------------------------------
class AlertProbe:
    """Subscriber of the alerts topic noting when each alert arrived (pushed to it)."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[float, float]] = {}

    def on_batch(self, rows: Any) -> None:
        now = time.time()
        det = rows.column("detected_at").cast("int64").to_pylist()
        for eid, d in zip(rows.column("event_id").to_pylist(), det, strict=True):
            self.seen.setdefault(eid, (now, d / 1000.0))

    def flush(self) -> int:
        return len(self.seen)

    def take(self) -> dict[int, tuple[float, float]]:
        out, self.seen = self.seen, {}
        return out


class Bench:
    def __init__(
        self, work: Path, seconds: float, shards: int | None = None, checkpoint_s: float = 30.0
    ) -> None:
        from actors.fraud import fraud_app
        from runtime import Runtime
        from runtime.dataflow.app import setup

        self.work, self.seconds, self.app = work, seconds, fraud_app
        self.id_base = 0
        t0 = time.perf_counter()
        self.rt = Runtime(
            data_dir=str(work / "data"), checkpoint_seconds=checkpoint_s, shards=shards
        ).start()
        setup(self.rt, fraud_app)
        from runtime.cluster.handles import yield_cpu

        yield_cpu()  # as edgecore serve does: this process only ticks and writes checkpoints
        self.probe = self.rt.subscribe("alerts", AlertProbe, name="bench-probe")
        self.startup_s = time.perf_counter() - t0
        self.broker: subprocess.Popen | None = None
        self.mqtt_port = 0

    def start_broker(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.mqtt_port = s.getsockname()[1]
        conf = self.work / "mosquitto.conf"
        conf.write_text(
            f"listener {self.mqtt_port} 127.0.0.1\nallow_anonymous true\n"
            "max_inflight_messages 0\nmax_queued_messages 1000000\n"
        )
        self.broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=subprocess.DEVNULL)
        time.sleep(0.5)

    def scenario(
        self,
        mode: str,
        rate: int,
        fmt: str = "ndjson",
        durable: bool = True,
        seconds: float | None = None,
    ) -> dict[str, Any]:
        from runtime.cluster.handles import resolve
        from runtime.dataflow.driver import drive
        from runtime.ingest.http import HttpOptions
        from runtime.ingest.live import LiveFeeder
        from runtime.ingest.mqtt import MqttOptions

        seconds = seconds or self.seconds
        self.id_base += 10**9
        batches = payloads(rate, seconds, fmt, self.id_base)
        n = sum(len(ids) for ids, _ in batches)
        (self.work / "payloads").write_bytes(pickle.dumps(batches))
        mqtt = (
            MqttOptions(f"mqtt://127.0.0.1:{self.mqtt_port}/cards/#", client_id="bench")
            if mode == "mqtt"
            else None
        )
        opened = threading.Event()
        feeder = LiveFeeder(
            HttpOptions(port=0), mqtt, durable=durable, on_open=lambda g: opened.set()
        )
        stop = threading.Event()
        result: dict[str, Any] = {}
        runner = threading.Thread(
            target=lambda: result.update(stats=drive(self.rt, self.app, [feeder], stop=stop))
        )
        runner.start()
        assert opened.wait(120), "the live ingest actor did not open"
        gate = next(iter(feeder.gates.values()))
        if mqtt is not None:
            assert resolve([gate.mqtt_connected(30.0)])[0]
        port = feeder.opened["local"]["http_port"]
        resolve([self.probe.ask(AlertProbe.take)])
        target = f"127.0.0.1:{port}" if mode == "http" else f"127.0.0.1:{self.mqtt_port}"
        out = self.work / "sent.pickle"
        cpu0 = cpu_times()
        t0 = time.perf_counter()
        sender = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--send",
                mode,
                "--target",
                target,
                "--payloads",
                str(self.work / "payloads"),
                "--out",
                str(out),
                "--ctype",
                ARROW if fmt == "arrow" else "application/x-ndjson",
            ],
        )
        cpu_sender = cpu_times()  # the sender is a child only while it runs
        while sender.poll() is None:
            time.sleep(0.2)
            cpu_sender = {**cpu_sender, **cpu_times()}
        deadline = time.perf_counter() + 60
        while _input(port) < n and time.perf_counter() < deadline:
            time.sleep(0.01)
        elapsed = time.perf_counter() - t0
        done_at = time.time()
        time.sleep(0.5)  # what is in flight reaches the subscriber before the stop
        cpu = cpu_share(cpu0, {**cpu_sender, **cpu_times()}, elapsed)
        stop.set()
        runner.join(120)
        self.rt.flush_topics()
        seen = resolve([self.probe.ask(AlertProbe.take)])[0]
        res = pickle.loads(out.read_bytes())
        sent_at = np.repeat(res["sent"], [len(ids) for ids, _ in batches])
        acked_at = np.repeat(res["acked"], [len(ids) for ids, _ in batches])
        index = {int(e): i for i, e in enumerate(np.concatenate([ids for ids, _ in batches]))}
        rows = [(index[e], t, d) for e, (t, d) in seen.items() if e in index]
        idx = np.array([r[0] for r in rows], dtype=np.int64)
        got = np.array([r[1] for r in rows])
        det = np.array([r[2] for r in rows])
        sent = sent_at[idx]
        when = sent - res["sent"][0]
        steady = when >= WARM_UP_S

        def pct(values: np.ndarray, q: float) -> float | None:
            return round(float(np.percentile(values, q)), 2) if len(values) else None

        lat = (got - sent) * 1000
        per_second = {}
        for sec in range(int(when.max()) + 1 if len(when) else 0):
            inside = (when >= sec) & (when < sec + 1)
            per_second[sec] = pct(lat[inside], 99)
        out_d: dict[str, Any] = {
            "mode": mode,
            "format": fmt,
            "wal": durable,
            "offered": rate,
            "events": n,
            # from the first event sent to the last one taken in (not the sender's start-up)
            "events_per_s": round(n / max(done_at - res["sent"][0], 1e-9)),
            "alerts": int(steady.sum()),
            "p50_ms": pct(lat[steady], 50),
            "p99_ms": pct(lat[steady], 99),
            "max_ms": pct(lat[steady], 100),
            "warm_up_p99_ms": pct(lat[~steady], 99),
            "p99_by_second_ms": per_second,
            "cpu_percent": cpu,
            "hops_p50_ms": {
                "send->detected": pct(((det - sent) * 1000)[steady], 50),
                "detected->subscriber": pct(((got - det) * 1000)[steady], 50),
            },
            "hops_p99_ms": {
                "send->detected": pct(((det - sent) * 1000)[steady], 99),
                "detected->subscriber": pct(((got - det) * 1000)[steady], 99),
            },
        }
        if mode == "http":
            ack = (acked_at - sent_at) * 1000
            batch_when = res["sent"] - res["sent"][0]
            ack_b = ((res["acked"] - res["sent"]) * 1000)[batch_when >= WARM_UP_S]
            out_d["ack_p50_ms"] = pct(ack_b, 50)
            out_d["ack_p99_ms"] = pct(ack_b, 99)
            out_d["http_429"] = res["refused"]
            del ack
        return out_d

    def close(self) -> None:
        self.rt.stop(checkpoint=False)
        if self.broker is not None:
            self.broker.terminate()


def cpu_times() -> dict[int, tuple[str, float]]:
    """CPU seconds so far of this process and every process below it, by role."""
    import psutil

    me = psutil.Process()
    out = {}
    for p in [me, *me.children(recursive=True)]:
        try:
            cmd = " ".join(p.cmdline())
            t = p.cpu_times()
        except psutil.Error:
            continue
        role = "driver" if p.pid == me.pid else _role(cmd)
        out[p.pid] = (role, t.user + t.system)
    return out


def _role(cmd: str) -> str:
    # Ray titles a worker "ray::<actor name>:<Class.method>" or "ray::<Class>"
    for markers, role in (
        (("--send",), "sender"),
        (("LiveIngest", "stage:ingest"), "gate"),
        (("Shard", "shard:"), "shards"),
        (("Topic", "topic:"), "topics"),
        (("AlertProbe", "bench-probe"), "probe"),
        # the table sinks and the status board share a host process (runtime.cluster.host)
        (("ray::Host", "host:", "TableSink", "sub:"), "sinks"),
        (("StatusBoard", "runtime:status"), "status"),
        (("mosquitto",), "broker"),
        (("raylet",), "raylet"),
        (("gcs_server",), "gcs"),
        (("ray::IDLE",), "idle workers"),
    ):
        if any(m in cmd for m in markers):
            return role
    return "ray system" if "ray" in cmd else "other"


def cpu_share(before: dict, after: dict, seconds: float) -> dict[str, float]:
    """Per role, the share of one core used between two :func:`cpu_times` readings."""
    share: dict[str, float] = {}
    for pid, (role, t) in after.items():
        used = t - before.get(pid, (role, 0.0))[1]
        share[role] = share.get(role, 0.0) + used
    return {k: round(v / seconds * 100, 1) for k, v in sorted(share.items(), key=lambda x: -x[1])}


def _input(port: int) -> int:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/healthz")
        return int(json.loads(conn.getresponse().read()).get("input", 0))
    except OSError:
        return 0


def sustained(results: list[dict[str, Any]]) -> int:
    ok = [
        r["events_per_s"]
        for r in results
        if r["events_per_s"] >= 0.95 * r["offered"] and (r["p99_ms"] or 1e9) <= 100
    ]
    return max(ok, default=0)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=35.0, help="seconds per latency scenario")
    ap.add_argument("--step-seconds", type=float, default=8.0, help="seconds per rate step")
    ap.add_argument("--quick", action="store_true", help="latency scenarios only")
    ap.add_argument(
        "--only-rates",
        action="store_true",
        help="the sustained-rate search and the log's cost only",
    )
    ap.add_argument(
        "--rates",
        default="100000,150000,200000,250000",
        help="rates to step through for the sustained figure",
    )
    ap.add_argument(
        "--shards", type=int, default=0, help="shards of the customer kind (0: as serve does)"
    )
    ap.add_argument(
        "--checkpoint-seconds", type=float, default=30.0, help="as serve's --checkpoint-seconds"
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--send", help=argparse.SUPPRESS)  # the sender process
    ap.add_argument("--target", help=argparse.SUPPRESS)
    ap.add_argument("--payloads", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--ctype", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.send:
        send_main(args.send, args.target, args.payloads, args.out, args.ctype)
        return
    work = Path(tempfile.mkdtemp(prefix="edgecore-bench-ingest-"))
    t0 = time.perf_counter()
    from runtime.cli import serve_shards

    bench = Bench(work, args.seconds, args.shards or serve_shards(), args.checkpoint_seconds)
    result: dict[str, Any] = {"batch_ms": BATCH_MS, "startup_s": round(bench.startup_s, 2)}
    try:
        have_mqtt = shutil.which("mosquitto") is not None
        if have_mqtt:
            bench.start_broker()
        latency = []
        for rate in () if args.only_rates else (50_000, 10_000):
            latency.append(bench.scenario("http", rate))
            if have_mqtt:
                latency.append(bench.scenario("mqtt", rate))
        result["latency"] = latency
        if not args.quick:
            rates = [int(r) for r in args.rates.split(",")]
            for fmt in ("ndjson", "arrow"):
                steps = []
                for rate in rates:
                    r = bench.scenario("http", rate, fmt, seconds=args.step_seconds)
                    steps.append(r)
                    if r["events_per_s"] < 0.95 * rate or (r["p99_ms"] or 1e9) > 100:
                        break
                result[f"sustained_{fmt}"] = {"steps": steps, "events_per_s": sustained(steps)}
            top = max(result["sustained_ndjson"]["events_per_s"], 100_000)
            on = bench.scenario("http", top, seconds=args.step_seconds)
            off = bench.scenario("http", top, durable=False, seconds=args.step_seconds)
            result["wal"] = {
                "offered": top,
                "on": on,
                "off": off,
                "cost": round(1 - on["events_per_s"] / off["events_per_s"], 3),
            }
    finally:
        bench.close()
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    if args.json:
        print(json.dumps(result))
        return
    report(result)


def report(r: dict[str, Any]) -> None:
    print(
        f"fraud app, embedded Ray, {BATCH_MS} ms batches; start-up {r['startup_s']} s, wall {r['wall_s']} s"
    )
    print(
        f"{'scenario':28} {'events/s':>9} {'p50':>7} {'p99':>7} {'max':>7}  ack p99  send->det p50/p99  det->sub p50/p99"
    )
    rows = list(r["latency"])
    for key in ("sustained_ndjson", "sustained_arrow"):
        rows += r.get(key, {}).get("steps", [])
    if "wal" in r:
        rows += [r["wal"]["on"], r["wal"]["off"]]
    for s in rows:
        name = f"{s['mode']} {s['format']} {s['offered']:,}/s{'' if s['wal'] else ' no-WAL'}"
        hp50, hp99 = s["hops_p50_ms"], s["hops_p99_ms"]
        print(
            f"{name:28} {s['events_per_s']:>9,} {s['p50_ms']!s:>7} {s['p99_ms']!s:>7} {s['max_ms']!s:>7}"
            f"  {s.get('ack_p99_ms', '-')!s:>7}  {hp50['send->detected']}/{hp99['send->detected']}"
            f"  {hp50['detected->subscriber']}/{hp99['detected->subscriber']}"
        )
    print("CPU, % of one core, by process role (2 cores = 200 %):")
    for s in r["latency"]:
        print(
            f"  {s['mode']} {s['offered']:,}/s: "
            + ", ".join(f"{k} {v}" for k, v in s["cpu_percent"].items())
        )
    for key in ("sustained_ndjson", "sustained_arrow"):
        if key in r:
            print(f"{key}: {r[key]['events_per_s']:,} events/s with p99 <= 100 ms")
    if "wal" in r:
        print(
            f"write-ahead log cost at {r['wal']['offered']:,}/s offered: {r['wal']['cost']:.1%} of throughput"
        )


if __name__ == "__main__":
    main()
