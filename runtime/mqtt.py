"""MQTT ingest for edge devices: QoS 1, a persistent session, acks only after a commit.

Messages carry one JSON event or a JSON array of events. The client acknowledges a
message only once a checkpoint has committed the state it produced, so if this
process dies the broker delivers it again (persistent session), and the runtime's
dedup by ``event_id`` applies it once. The broker must allow unacknowledged
messages to pile up for a checkpoint interval (mosquitto: ``max_inflight_messages
0``); when the runtime is slower than the devices, the bounded receive queue stops
the network loop and the broker queues instead (backpressure).
"""

from __future__ import annotations

import json
import queue
import threading
import time
from typing import Any
from urllib.parse import urlparse

from runtime.core import Runtime
from runtime.errors import ConfigError
from runtime.pipeline import App, ingest, new_counts, setup
from runtime.schema import MALFORMED
from runtime.sources import rows_to_table


def parse_url(url: str) -> tuple[str, int, str]:
    """``mqtt://HOST:PORT/TOPIC-FILTER`` -> (host, port, filter); ``#`` and ``+`` allowed."""
    u = urlparse(url)
    if u.scheme != "mqtt" or not u.hostname:
        raise ConfigError(f"--mqtt must look like mqtt://HOST:PORT/TOPIC-FILTER, not {url!r}")
    topic = url.split("/", 3)[3] if url.count("/") >= 3 else ""
    if not topic:
        raise ConfigError(
            f"--mqtt {url!r} names no topic filter (e.g. mqtt://127.0.0.1:1883/devices/#)"
        )
    return u.hostname, u.port or 1883, topic


def parse_message(payload: bytes) -> list[dict[str, Any]]:
    """One event, or an array of events; anything else is one malformed record."""
    try:
        data = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return [{MALFORMED: payload[:4096].decode("utf-8", errors="replace")}]
    items = data if isinstance(data, list) else [data]
    return [r if isinstance(r, dict) else {MALFORMED: json.dumps(r)[:4096]} for r in items]


class MqttIngest:
    def __init__(
        self,
        rt: Runtime,
        app: App,
        url: str,
        client_id: str | None = None,
        lock: threading.Lock | None = None,
        max_queue: int = 20_000,
    ) -> None:
        import paho.mqtt.client as mqtt

        self.rt, self.app = rt, app
        self.host, self.port, self.topic = parse_url(url)
        self.lock = lock or threading.Lock()
        self.source_id = f"mqtt:{self.host}:{self.port}/{self.topic}"
        self.received = 0
        self.totals = {**new_counts(), "messages": 0}
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._unacked: list[tuple[int, int]] = []  # (mid, qos) applied but not yet committed
        self.connected = threading.Event()
        setup(rt, app)
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"edgecore-{app.name}",
            clean_session=False,  # the broker keeps our subscription and unacked messages
            protocol=mqtt.MQTTv311,
        )
        self.client.manual_ack_set(True)
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=2)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.on_message = lambda c, u, msg: self._queue.put((msg.mid, msg.qos, msg.payload))

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        client.subscribe(self.topic, qos=1)

    def _on_subscribe(self, *args: Any) -> None:
        self.connected.set()  # connected and subscribed: the broker now queues for us

    def start(self) -> MqttIngest:
        self.client.connect_async(self.host, self.port, keepalive=10)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def pump(self, max_messages: int = 200, wait: float = 0.1) -> int:
        """Apply what arrived (up to ``max_messages``); returns how many messages."""
        got: list[tuple[int, int, bytes]] = []
        try:
            got.append(self._queue.get(timeout=wait))
            while len(got) < max_messages:
                got.append(self._queue.get_nowait())
        except queue.Empty:
            pass
        if not got:
            return 0
        rows = [row for _, _, payload in got for row in parse_message(payload)]
        table = rows_to_table(rows)
        with self.lock:
            counts = ingest(self.rt, self.app, table, self.source_id, self.received)
            self.received += table.num_rows
            self.rt.poll()
        self._unacked.extend((mid, qos) for mid, qos, _ in got)
        for k, v in counts.items():
            self.totals[k] += v
        self.totals["messages"] += len(got)
        return len(got)

    def checkpoint(self) -> None:
        """Commit, then acknowledge every message the commit covers."""
        with self.lock:
            self.rt.drain_inflight()
            self.rt.checkpoint()
        acks, self._unacked = self._unacked, []
        for mid, qos in acks:
            self.client.ack(mid, qos)

    def wait_connected(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.connected.wait(0.1):
                return True
        return False
