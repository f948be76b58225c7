"""Processes for the chaos matrix (scripts/chaos.py): the product's commands as users run
them, finding a victim actor's worker process through Ray, and reading a data folder from
outside.

Everything here looks at the runtime the way an operator would: process trees (psutil),
Ray's actor table (by the names runtime.cluster.names builds), the data folder's last
commit; nothing reaches into the runtime's own counters.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psutil

from runtime.testing import procs
from runtime.testing.procs import free_port, wait_until  # noqa: F401 - used by the scenarios

ROOT = Path(__file__).resolve().parents[1]
RESTARTED = "restarting from the last checkpoint"


def env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a command: this checkout's code first, Ray's chatter off."""
    return procs.env(extra, root=ROOT)


class Command(procs.Command):
    """``python -m runtime.cli ARGS`` from this checkout (see runtime.testing.procs.Command),
    and where its embedded Ray's control store listens."""

    def __init__(self, *args: str, extra_env: dict[str, str] | None = None) -> None:
        super().__init__(*args, env=env(extra_env), cwd=ROOT)

    def gcs_address(self) -> str | None:
        """The embedded Ray's GCS address, as its raylet's command line names it."""
        for p in self.tree():
            with contextlib.suppress(psutil.Error):
                for arg in p.cmdline():
                    if arg.startswith("--gcs-address="):
                        return arg.split("=", 1)[1]
        return None


#: run in a process of its own: read the actor table from the runtime's Ray control store
#: (GCS) as Ray's own command line tools do, without joining the cluster as a driver
#: (attaching one costs 20 s on a busy machine), and print every alive named actor's
#: worker pid, one JSON line every 0.2 s, until its stdin closes
_WATCH = """
import json, os, sys, threading, time
from runtime.cluster import security
# that session's Ray token, as `edgecore status --address` finds it: its file appears
# once the command's ray.init returned, a moment after the raylet names the GCS
deadline = time.monotonic() + 120
while security.token_for(sys.argv[1]) is None and time.monotonic() < deadline:
    time.sleep(0.05)
if security.token_for(sys.argv[1]) is not None:
    security.use_token(security.token_for(sys.argv[1]))
import ray._private.state as state
from ray._raylet import GcsClientOptions
state.state._initialize_global_state(GcsClientOptions.create(
    sys.argv[1], None, allow_cluster_id_nil=True, fetch_cluster_id_if_nil=False))
threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
while True:
    table = state.state.actor_table(None).values()
    print(json.dumps({i["Name"]: i["Pid"] for i in table
                      if i.get("Name") and i.get("State") == "ALIVE"}), flush=True)
    time.sleep(0.2)
"""


class ActorWatch:
    """The actors of the Ray cluster at ``address`` and their worker pids, kept fresh by a
    process attached to it (attaching costs seconds: once, not per look)."""

    def __init__(self, address: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WATCH, address],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env(),
            cwd=ROOT,
        )
        self.pids: dict[str, int] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.pids = {k: int(v) for k, v in json.loads(line).items()}

    def close(self) -> None:
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def find_victim(cmd: Command, prefix: str, pick: int, timeout: float = 180) -> tuple[str, int]:
    """(name, pid) of an actor whose name starts with ``prefix`` (the ``pick``-th of them,
    modulo their number), once the command's Ray has one."""
    address = wait_until(lambda: cmd.gcs_address() or cmd.proc.poll() is not None, timeout)
    if not isinstance(address, str):
        raise RuntimeError(f"the command's Ray did not start:\n{cmd.stderr[-2000:]}")
    watch = ActorWatch(address)
    try:

        def found() -> list[str] | bool:
            names = sorted(n for n in watch.pids if n.startswith(prefix))
            return names or cmd.proc.poll() is not None

        names = wait_until(found, timeout, 0.05)
        if not isinstance(names, list):
            raise RuntimeError(f"no actor {prefix}* came up:\n{cmd.stderr[-2000:]}")
        name = names[pick % len(names)]
        return name, watch.pids[name]
    finally:
        watch.close()


# -- the data folder, from outside --------------------------------------------------------------
def progress(data: Path) -> int:
    """How far the data folder's last commit is: the sum of its source positions (0: none)."""
    from runtime.state.store import Store

    if not Store(data).exists("_checkpoints"):
        return 0
    try:
        return int(sum(Store(data).last_checkpoint().positions.values()))
    except Exception:  # a commit being written: ask again
        return -1


def committed_tables(data: Path, names: list[str]) -> dict[str, Any]:
    """Each table of ``names`` at the version the last commit names (a table the commit
    does not manage, e.g. a sink's, at its latest); None for a table that is not there."""
    from runtime.state.store import Store

    store = Store(data)
    cp = store.last_checkpoint()
    out: dict[str, Any] = {}
    for name in names:
        if not store.exists(name):
            out[name] = None
            continue
        tbl = store.table(name)
        if name in cp.versions:
            tbl.checkout(cp.versions[name])
        else:
            tbl.checkout_latest()
        out[name] = tbl.to_arrow()
    return out


class Broker:
    """A Mosquitto on loopback with persistence, its own port and folder; restartable."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {folder}/\nmax_inflight_messages 0\n"
            "max_queued_messages 1000000\nautosave_interval 1\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Broker:
        self.proc = subprocess.Popen(
            ["mosquitto", "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not wait_until(lambda: _listening(self.port), 10, 0.05):
            raise RuntimeError("mosquitto did not start")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # it saves its persistence file
            self.proc.wait(timeout=10)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
