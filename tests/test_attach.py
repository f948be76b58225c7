"""Commands that attach to a running runtime fail fast, in one line, when none is there."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time

import pytest
from live_helpers import free_port


def edgecore(*args: str) -> tuple[int, str, float]:
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "runtime.cli", *args], capture_output=True, text=True, timeout=60
    )
    return done.returncode, done.stderr, time.monotonic() - t0


COMMANDS = [
    ("tail", "alerts"),
    ("entity", "customer", "c1"),
    ("status",),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_nobody_at_the_address(command):
    rc, err, took = edgecore(*command, "--address", f"127.0.0.1:{free_port()}")
    assert rc == 1
    assert err.strip().count("\n") == 0 and "no Ray cluster answers" in err, err
    assert took < 10


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_something_else_answers_at_the_address(command):
    """A port that accepts connections but speaks no Ray: given up on within 10 s."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)  # keep it open, say nothing

    threading.Thread(target=accept, daemon=True).start()
    try:
        rc, err, took = edgecore(*command, "--address", f"127.0.0.1:{server.getsockname()[1]}")
    finally:
        server.close()
        for c in held:
            c.close()
    assert rc == 1
    assert err.strip().count("\n") == 0 and "did not answer" in err, err
    assert took < 12


def test_a_malformed_address_is_refused_at_once():
    rc, err, took = edgecore("status", "--address", "not-an-address")
    assert rc == 1 and "--address must be" in err and took < 10


BARE_RAY = (
    "import sys, time, ray\n"
    "from runtime.cluster.connect import init_ray\n"
    "init_ray(None, num_cpus=1)\n"
    "print(ray.get_runtime_context().gcs_address, flush=True)\n"
    "time.sleep(300)\n"
)


def test_auto_refuses_to_pick_one_of_two_clusters(monkeypatch):
    """Two runtimes on one machine: ``--address auto`` names both and asks which (Ray's
    own ``auto`` would attach to either, and `sql` would answer from the wrong one)."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # it would choose for the commands
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", BARE_RAY], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        for _ in range(2)
    ]
    try:
        addresses = sorted(p.stdout.readline().decode().strip() for p in procs)
        assert all(":" in a for a in addresses), addresses
        for command in COMMANDS:
            rc, err, _ = edgecore(*command, "--address", "auto")
            assert rc == 1, err
            assert err.strip().count("\n") == 0, err
            assert re.search(r"\d+ Ray clusters run on this machine", err), err  # 2, or more
            assert all(a in err for a in addresses), err
    finally:
        for p in procs:
            p.kill()
            p.wait()
