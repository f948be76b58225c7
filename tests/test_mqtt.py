"""MQTT ingest through a real Mosquitto broker on loopback: delivery, broker restart, ingest crash."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import make_transactions

from actors.fraud import fraud_app
from runtime import Runtime
from runtime.mqtt import MqttIngest
from runtime.store import Store

if shutil.which("mosquitto") is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI must install mosquitto (see .ci/run)")
    pytest.skip("mosquitto is not installed (apt-get install mosquitto)", allow_module_level=True)


class Broker:
    """A Mosquitto with persistence, its own port and folder; restartable."""

    def __init__(self, folder: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        folder.mkdir(parents=True, exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {folder}/\nmax_inflight_messages 0\nmax_queued_messages 100000\n"
            "autosave_interval 1\n"
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stderr=subprocess.PIPE)
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc:
            self.proc.send_signal(signal.SIGTERM)  # saves its persistence file
            self.proc.wait(timeout=10)


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


def publisher(port: int):
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-devices", clean_session=False)
    c.reconnect_delay_set(min_delay=0.1, max_delay=1)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def publish(client, rows: list[dict], per_message: int = 10) -> None:
    infos = []
    for i in range(0, len(rows), per_message):
        chunk = rows[i : i + per_message]
        payload = json.dumps(chunk[0] if len(chunk) == 1 else chunk, default=str)
        infos.append(client.publish("cards/eu-1/txn", payload, qos=1))
    for info in infos:
        info.wait_for_publish(timeout=30)


@pytest.fixture
def rows(tmp_path):
    table = pq.read_table(make_transactions(tmp_path / "t.parquet", 2_000, 100))
    out = table.to_pylist()
    for r in out:
        r["ts"] = r["ts"].isoformat()
    return out


def wait_subscribed(proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    for line in proc.stderr:
        if b"subscribed to" in line:
            return
        assert time.monotonic() < deadline, "serve did not subscribe"
    raise AssertionError("serve exited before it subscribed")


def pump_until(feed: MqttIngest, n_events: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while feed.totals["input"] < n_events and time.monotonic() < deadline:
        feed.pump(wait=0.2)
    assert feed.totals["input"] >= n_events, feed.totals


def test_events_arrive_and_bad_messages_are_dead_lettered(broker, rows, tmp_path):
    with Runtime(data_dir=str(tmp_path / "d"), mode="local", shards=2) as rt:
        feed = MqttIngest(rt, fraud_app, f"mqtt://127.0.0.1:{broker.port}/cards/+/txn").start()
        assert feed.wait_connected()
        pub = publisher(broker.port)
        publish(pub, rows)
        pub.publish("cards/eu-1/txn", b"{not json", qos=1).wait_for_publish()
        pub.publish(
            "cards/eu-1/txn", json.dumps({**rows[0], "event_id": 7_777_777, "amount": -3}), qos=1
        ).wait_for_publish()
        pump_until(feed, len(rows) + 2)
        feed.checkpoint()
        feed.stop()
        pub.loop_stop()
    assert feed.totals["accepted"] == len(rows) and feed.totals["dead_lettered"] == 2
    got = {
        r["customer_id"]: r["txn_count"]
        for r in Store(tmp_path / "d").read("customers").to_pylist()
    }
    assert got == dict(Counter(r["customer_id"] for r in rows))
    reasons = Store(tmp_path / "d").read("dead_letters").column("reason").to_pylist()
    assert any("malformed" in r for r in reasons) and any("amount" in r for r in reasons)


def test_broker_restart_mid_stream_loses_nothing(broker, rows, tmp_path):
    with Runtime(data_dir=str(tmp_path / "d"), mode="local", shards=2) as rt:
        feed = MqttIngest(rt, fraud_app, f"mqtt://127.0.0.1:{broker.port}/cards/#").start()
        assert feed.wait_connected()
        pub = publisher(broker.port)
        publish(pub, rows[:1_000])
        pump_until(feed, 500)
        feed.checkpoint()
        broker.stop()
        broker.start()  # clients reconnect; the broker kept unacked messages and sessions
        assert feed.wait_connected(20)
        deadline = time.monotonic() + 20
        while not pub.is_connected() and time.monotonic() < deadline:
            time.sleep(0.1)
        publish(pub, rows[1_000:])
        pump_until(feed, len(rows), timeout=90)
        feed.checkpoint()
        feed.stop()
        pub.loop_stop()
    # redeliveries after the restart were applied once
    got = {
        r["customer_id"]: r["txn_count"]
        for r in Store(tmp_path / "d").read("customers").to_pylist()
    }
    assert got == dict(Counter(r["customer_id"] for r in rows))


def test_killed_ingest_gets_unacked_messages_again(broker, rows, tmp_path):
    """SIGKILL the serving process: messages not yet committed are redelivered and applied once."""
    data = tmp_path / "d"
    cmd = [
        sys.executable,
        "-m",
        "runtime.cli",
        "serve",
        "--http",
        "none",
        "--local",
        "--data",
        str(data),
        "--mqtt",
        f"mqtt://127.0.0.1:{broker.port}/cards/#",
        "--checkpoint-seconds",
        "0.5",
    ]
    first = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    wait_subscribed(first)  # the broker now keeps a persistent session for it
    pub = publisher(broker.port)
    publish(pub, rows[:1_500])
    time.sleep(1.0)
    first.send_signal(signal.SIGKILL)
    first.wait()
    publish(pub, rows[1_500:])  # queued by the broker for the persistent session
    second = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(1)
        if (data / "customers.lance").exists():
            total = sum(r["txn_count"] for r in Store(data).read("customers").to_pylist())
            if total >= len(rows):
                break
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=60) == 0, second.stderr.read().decode()[-3000:]
    assert (data / "customers.lance").exists(), second.stderr.read().decode()[-3000:]
    pub.loop_stop()
    got = {r["customer_id"]: r["txn_count"] for r in Store(data).read("customers").to_pylist()}
    assert got == dict(Counter(r["customer_id"] for r in rows))
