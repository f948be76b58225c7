"""Running ``edgecore serve`` as users do (a subprocess on an embedded Ray), talking to it,
and killing it; a restartable Mosquitto broker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError

from runtime.testing.procs import Command, free_port  # noqa: F401 - tests import free_port here


def cli_json(cwd: Path, *args: str, timeout: float = 600) -> dict[str, Any]:
    """``edgecore ARGS --json`` as users run it (a subprocess, embedded Ray), from the
    repository's code; its one JSON object, after asserting it exited 0."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-m", "runtime.cli", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(root)},
        cwd=cwd,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def script_json(script: str, *args: str, cwd: Path, timeout: float = 300) -> dict[str, Any]:
    """``python scripts/SCRIPT ARGS --json`` as users run it; the JSON object of its last
    line of output, after asserting it exited 0."""
    path = Path(__file__).resolve().parents[1] / "scripts" / script
    done = subprocess.run(
        [sys.executable, str(path), *args, "--json"],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def ndjson(rows: list[dict]) -> bytes:
    return "\n".join(json.dumps(r, default=str) for r in rows).encode()


def post(
    port: int,
    body: bytes,
    ctype: str = "application/x-ndjson",
    token: str | None = None,
    host: str = "127.0.0.1",
    path: str = "/v1/events",
    timeout: float = 60,
) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(f"http://{host}:{port}{path}", data=body, method="POST")
    req.add_header("Content-Type", ctype)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except HTTPError as err:
        raw = err.read()
        try:
            return err.code, json.loads(raw)
        except ValueError:
            return err.code, {"raw": raw.decode(errors="replace")}


def get(port: int, path: str = "/healthz", token: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except HTTPError as err:
        return err.code, json.loads(err.read())


class Serve(Command):
    """``python -m runtime.cli serve ...`` as users run it (see runtime.testing.procs.Command),
    on a free loopback port unless ``--http`` is given."""

    def __init__(self, data: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port() if "--http" not in args else None
        cmd = ["serve", "--data", str(data)]
        if self.port is not None:
            cmd += ["--http", f"127.0.0.1:{self.port}"]
        cmd += ["--checkpoint-seconds", "2", *args]
        super().__init__(*cmd, env={**os.environ, **(env or {})})

    def wait_http(self, timeout: float = 120) -> int:
        m = self.wait_for(r"on https?://[^:]+:(\d+)/v1/events", timeout)
        self.port = int(m.group(1))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if get(self.port)[0] == 200:
                    return self.port
            except (URLError, OSError):
                time.sleep(0.05)
        raise AssertionError("healthz never answered")

    def wait(self, timeout: float = 60) -> int:  # type: ignore[override]
        rc = super().wait(timeout)
        if rc is None:
            raise AssertionError(f"serve still running after {timeout} s:\n{self.stderr[-3000:]}")
        return rc

    def kill_everything(self) -> None:
        """SIGKILL serve and every process it started, all at once."""
        self.kill_all()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.kill_all()


class Broker:
    """A Mosquitto with persistence, its own port and folder; restartable."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {folder}/\nmax_inflight_messages 0\nmax_queued_messages 100000\n"
            "autosave_interval 1\n"
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stderr=subprocess.PIPE)
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # saves its persistence file
            self.proc.wait(timeout=10)

    def wipe(self) -> None:
        """Forget every session and queued message (a new, empty broker on the same port)."""
        self.stop()
        for f in self.folder.glob("*.db"):
            f.unlink()


def mqtt_client(port: int, client_id: str = "test-devices"):
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    c.reconnect_delay_set(min_delay=0.1, max_delay=1)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def publish(client, rows: list[dict], topic: str = "cards/eu-1/txn", per_message: int = 10) -> None:
    infos = []
    for i in range(0, len(rows), per_message):
        chunk = rows[i : i + per_message]
        payload = json.dumps(chunk[0] if len(chunk) == 1 else chunk, default=str)
        infos.append(client.publish(topic, payload, qos=1))
    for info in infos:
        info.wait_for_publish(timeout=30)


class FrontEnd:
    """A local-mode runtime with one live ingest actor's gate and HTTP front end, in this
    process (fast; `Serve` runs the real command)."""

    def __init__(self, folder: Path, **http: Any) -> None:
        import numpy as np

        from actors.fraud import fraud_app
        from runtime import Runtime
        from runtime.dataflow.app import setup
        from runtime.ingest.http import HttpOptions
        from runtime.ingest.live import LiveIngest

        self.rt = Runtime(data_dir=str(folder), mode="local", shards=2).start()
        setup(self.rt, fraud_app)
        self.ingest = LiveIngest(
            fraud_app,
            "local",
            str(folder),
            self.rt.shards_of("customers"),
            np.zeros(0, dtype=np.int64),
            0,
            http=HttpOptions(port=0, **http),
        )
        self.port = self.ingest.open()["http_port"]
        self.gate = self.ingest.gate

    def profiles(self, keys: list[str]) -> dict[str, dict]:
        """The live profiles of ``keys`` once everything logged is applied."""
        import pyarrow as pa

        self.gate.cut()
        self.gate.resume()
        got = self.rt.lookup("customers", pa.array(keys)).to_pylist()
        return {k: r for k, r in zip(keys, got, strict=True) if r and r["txn_count"] is not None}

    def close(self) -> None:
        self.ingest.close()
        self.rt.stop(checkpoint=False)


class Driven:
    """``drive`` with a live feeder (HTTP and/or MQTT) on a local-mode runtime, in a thread:
    a data folder with checkpoints, as ``edgecore serve`` keeps it."""

    def __init__(self, folder: Path, http: Any = None, mqtt: str | None = None) -> None:
        from actors.fraud import fraud_app
        from runtime import Runtime
        from runtime.ingest.live import LiveFeeder
        from runtime.ingest.mqtt import MqttOptions

        self.folder, self.app = folder, fraud_app
        self.rt = Runtime(data_dir=str(folder), mode="local", shards=2, checkpoint_seconds=0.5)
        self.rt.start()
        self.stop = threading.Event()
        self.opened = threading.Event()
        self.feeder = LiveFeeder(
            http, MqttOptions(mqtt) if mqtt else None, on_open=lambda g: self.opened.set()
        )
        self.stats = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.opened.wait(60)
        client = next(iter(self.feeder.gates.values()))
        self.ingest = client.handle.target  # the LiveIngest object itself (local mode)
        self.gate = self.ingest.gate
        self.port = self.feeder.opened["local"].get("http_port")
        if mqtt:
            assert self.ingest.mqtt_connected(20)

    def _run(self) -> None:
        from runtime.dataflow.driver import drive

        try:
            self.stats = drive(self.rt, self.app, [self.feeder], stop=self.stop)
        except BaseException as err:  # surfaced by finish()
            self.error = err

    def wait_input(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.gate.totals["input"] < n and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.gate.totals["input"] >= n, (n, self.gate.totals)

    def finish(self) -> Any:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "drive did not stop"
        self.rt.stop()
        if self.error is not None:
            raise self.error
        return self.stats
