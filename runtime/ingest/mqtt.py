"""MQTT ingest for devices: QoS 1, a persistent session, acknowledged once durable.

A live ingest actor (:mod:`runtime.ingest.live`) subscribes with a persistent session
(``clean_session=False``) and manual acknowledgements. Messages carry one JSON event
or a JSON array of events; a pump thread takes what arrived, decodes every message on
its own (a message that is not JSON, nested too deep, not UTF-8 or not an object is
one dead letter with the raw payload and the reason, and never holds up the others),
hands the rows to the gate, and acknowledges the messages as soon as the gate has
them in its write-ahead log. Redeliveries after a crash are deduplicated by
``event_id``. When the runtime is slower than the devices, the bounded receive queue
stops paho's network loop and the broker queues instead (backpressure); the broker
must let unacknowledged messages pile up meanwhile (mosquitto:
``max_inflight_messages 0``).
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from runtime.errors import ConfigError
from runtime.ingest.decode import decode_messages, malformed
from runtime.ingest.gate import Backpressure, Closed, Gate
from runtime.streams.sources import rows_to_table


def parse_url(url: str) -> tuple[str, int, str]:
    """``mqtt://HOST:PORT/TOPIC-FILTER`` -> (host, port, filter); ``#`` and ``+`` allowed.

    >>> parse_url("mqtt://127.0.0.1:1883/cards/+/txn")
    ('127.0.0.1', 1883, 'cards/+/txn')
    """
    u = urlparse(url)
    if u.scheme != "mqtt" or not u.hostname:
        raise ConfigError(f"--mqtt must look like mqtt://HOST:PORT/TOPIC-FILTER, not {url!r}")
    try:
        port = u.port or 1883
    except ValueError:
        raise ConfigError(f"--mqtt {url!r} has no valid port") from None
    topic = url.split("/", 3)[3] if url.count("/") >= 3 else ""
    if not topic:
        raise ConfigError(
            f"--mqtt {url!r} names no topic filter (e.g. mqtt://127.0.0.1:1883/devices/#)"
        )
    return u.hostname, port, topic


@dataclass(frozen=True)
class MqttOptions:
    """Where to subscribe. ``{site}`` in the topic filter becomes each site's name: with
    several sites, each site's ingest takes its own devices' messages (without it every
    site would get every message)."""

    url: str
    client_id: str | None = None
    #: messages received but not yet taken by the pump; beyond it the network loop waits
    max_queue: int = 20_000
    #: messages taken per pump round (one gate submission)
    max_messages: int = 2_000

    def check(self, sites: int = 1) -> None:
        parse_url(self.url.replace("{site}", "site"))
        if sites > 1 and "{site}" not in self.url:
            raise ConfigError(
                f"--mqtt {self.url!r} with {sites} sites: put {{site}} in the topic filter "
                "(e.g. mqtt://broker:1883/cards/{site}/#) so each site takes its own messages"
            )

    def for_site(self, site: str) -> MqttOptions:
        return MqttOptions(
            self.url.replace("{site}", site), self.client_id, self.max_queue, self.max_messages
        )


class MqttListener:
    """Subscribe for one gate; acknowledge each message once the gate logged it."""

    def __init__(self, gate: Gate, options: MqttOptions) -> None:
        import paho.mqtt.client as mqtt

        self.gate, self.options = gate, options
        self.host, self.port, self.topic = parse_url(options.url)
        self._queue: queue.Queue[tuple[int, int, bytes]] = queue.Queue(maxsize=options.max_queue)
        self.connected = threading.Event()
        self.messages = 0
        self._closing = threading.Event()
        self._pump: threading.Thread | None = None
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=options.client_id or f"edgecore-{gate.app.name}-{gate.name}",
            clean_session=False,  # the broker keeps our subscription and unacked messages
            protocol=mqtt.MQTTv311,
        )
        self.client.manual_ack_set(True)
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=2)
        self.client.on_connect = lambda c, *a: c.subscribe(self.topic, qos=1)
        self.client.on_subscribe = lambda *a: self.connected.set()
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.on_message = self._on_message

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        while not self._closing.is_set():
            try:  # blocking here stops the network loop: the broker holds the rest
                self._queue.put((msg.mid, msg.qos, msg.payload), timeout=0.2)
                return
            except queue.Full:
                continue

    def start(self) -> MqttListener:
        self.client.connect_async(self.host, self.port, keepalive=10)
        self.client.loop_start()
        self._pump = threading.Thread(target=self._run, name="mqtt-pump", daemon=True)
        self._pump.start()
        return self

    def wait_connected(self, timeout: float = 10.0) -> bool:
        return self.connected.wait(timeout)

    # -- the pump --------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._closing.is_set():
            got = self._take(0.05)
            try:
                if got and not self._hand_over(got):
                    return
            except Exception as err:  # a check no one foresaw failed on these messages
                if not self._one_by_one(got, err):
                    return

    def _one_by_one(self, got: list[tuple[int, int, bytes]], err: Exception) -> bool:
        """Hand messages over one at a time after their group failed: one that still fails
        becomes a malformed record (dead-lettered with its payload, acknowledged); if even
        that fails, the gate is failed, so the runtime restarts and the broker redelivers."""
        try:
            for msg in got:
                try:
                    ok = self._hand_over([msg])
                except Exception as one:
                    why = f"cannot be decoded ({type(one).__name__}: {one})"
                    ok = self._hand_over([msg], rows_to_table([malformed(msg[2], why)]))
                if not ok:
                    return False
            return True
        except Exception as still:
            self.gate.fail(still)
            return False

    def _take(self, wait: float) -> list[tuple[int, int, bytes]]:
        got: list[tuple[int, int, bytes]] = []
        try:
            got.append(self._queue.get(timeout=wait))
            while len(got) < self.options.max_messages:
                got.append(self._queue.get_nowait())
        except queue.Empty:
            pass
        return got

    def _hand_over(self, got: list[tuple[int, int, bytes]], table: Any = None) -> bool:
        """Submit the messages' rows; acknowledge them once logged. False: the gate is
        closed, so they stay unacknowledged and the broker delivers them again."""
        if table is None:
            table = decode_messages([payload for _, _, payload in got])
        prepared = self.gate.prepare(table, "mqtt")
        while True:
            try:
                future = self.gate.enqueue(prepared, wait_s=0.2)
                self.gate.commit()
                break
            except Backpressure:
                continue  # hold them: the receive queue fills and the broker keeps the rest
            except Closed:
                return False
        acks = [(mid, qos) for mid, qos, _ in got]
        self.messages += len(got)

        def acknowledge(done: Future) -> None:
            if done.exception() is None:
                for mid, qos in acks:
                    self.client.ack(mid, qos)

        future.add_done_callback(acknowledge)
        return True

    # -- stopping --------------------------------------------------------------------------
    def stop_intake(self, timeout: float = 5.0) -> None:
        """Take no more messages, hand over the ones taken, disconnect cleanly (the broker
        keeps the session and queues what comes next)."""
        if self._closing.is_set():
            return
        self._closing.set()
        if self._pump is not None:
            self._pump.join(timeout)
        deadline = time.monotonic() + timeout
        while not self._queue.empty() and time.monotonic() < deadline:
            got = self._take(0.0)  # received but not handed over: log them too
            if got and not self._hand_over(got):
                break
        self.gate.stop_intake(max(0.1, deadline - time.monotonic()))  # their acks go out
        self.client.disconnect()
        self.client.loop_stop()

    def close(self) -> None:
        self.stop_intake(timeout=1.0)
