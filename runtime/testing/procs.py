"""Process helpers shared by the tests and the fault and soak harnesses in ``scripts/``:
a free loopback port, waiting for a condition, the environment a command runs in, and
:class:`Command`, an ``edgecore`` command run as users run it (a subprocess in its own
session, stderr followed line by line, every process it starts killable by pid).

>>> port = free_port(); 1024 <= port < 65536
True
>>> wait_until(lambda: 7, timeout=1.0), wait_until(lambda: None, timeout=0.05, every=0.01)
(7, None)
>>> env({"X": "1"}, root="/repo")["PYTHONPATH"].split(os.pathsep)[0], env(root="/r")["LANCE_LOG"]
('/repo', 'error')
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

# Ports the kernel never hands out on its own: below its ephemeral range (where every
# outgoing connection and every ``bind(0)`` of Ray's many processes lands) and above Ray's
# default worker ports (10002-19999). A port picked by ``bind(0)`` and bound again later
# was taken in between by Ray in one CI run (EADDRINUSE; serve gave up after 3 restarts).
_QUIET_PORTS = (20000, 32768)
_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _QUIET_PORTS[1]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now that the caller binds soon after: outside the
    kernel's ephemeral range and Ray's default ports, so nothing else takes it meanwhile,
    and never the same one twice in a process."""

    hi = min(_QUIET_PORTS[1], _ephemeral_low())
    for _ in range(200):
        port = random.randrange(_QUIET_PORTS[0], hi) if hi > _QUIET_PORTS[0] + 100 else 0
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            got = int(s.getsockname()[1])
        if got not in _handed_out:
            _handed_out.add(got)
            return got
    raise RuntimeError("no free loopback port found in 200 tries")


def wait_until(what: Callable[[], Any], timeout: float, every: float = 0.1) -> Any:
    """``what()``'s first truthy answer within ``timeout`` seconds, else None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(every)
    return None


def env(extra: dict[str, str] | None = None, root: str | Path | None = None) -> dict[str, str]:
    """The environment of an ``edgecore`` subprocess: ``root`` (a checkout) first on the
    path, Ray's usage report and LanceDB's chatter off, then ``extra``."""
    parts = [str(root)] if root is not None else []
    path = os.pathsep.join([*parts, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {
        **os.environ,
        "PYTHONPATH": path,
        "RAY_USAGE_STATS_ENABLED": "0",
        "LANCE_LOG": "error",
        **(extra or {}),
    }


def fresh_python(code: str, *args: str, root: str | Path | None = None) -> list[str]:
    """The words ``code`` prints, run by a new interpreter with ``args`` (what a module
    imports is the point: this process has imported everything already).

    >>> fresh_python("import sys; print(sys.argv[1:])", "a")
    ["['a']"]
    """
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
        env=env(root=root),
    ).stdout.split()


class Command:
    """``python -m runtime.cli ARGS`` in its own session (as a shell job), stderr followed
    line by line in :attr:`lines`.

    Every process it starts (Ray's GCS, raylet and workers live in sessions of their own)
    is remembered while it runs, so :meth:`kill_all` ends them by pid, never by name.

    >>> c = Command("--help")
    >>> c.wait(60), c.said("Usage"), c.tree() == []
    (0, False, True)
    """

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, cwd: str | Path | None = None
    ) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runtime.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env if env is not None else dict(os.environ),
            cwd=cwd,
            start_new_session=True,  # its own process group, as a shell job has
        )
        self.lines: list[str] = []
        self.known: dict[int, psutil.Process] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip())

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def said(self, pattern: str) -> bool:
        """Whether a line of stderr so far matches ``pattern`` (a regex)."""
        return any(re.search(pattern, line) for line in list(self.lines))

    def wait_for(self, pattern: str, timeout: float = 120) -> re.Match[str]:
        """The first stderr line matching ``pattern``; AssertionError (with the stderr's
        tail) if the command exits first or nothing matches within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                m = re.search(pattern, line)
                if m:
                    return m
            if self.proc.poll() is not None:
                self._reader.join(timeout=5)
                raise AssertionError(
                    f"{self.args[0]} exited {self.proc.returncode}:\n{self.stderr[-3000:]}"
                )
            time.sleep(0.05)
        raise AssertionError(f"{self.args[0]} did not print {pattern!r}:\n{self.stderr[-3000:]}")

    def tree(self) -> list[psutil.Process]:
        """The command's process and everything under it (remembered for kill_all)."""
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(self.proc.pid)
            for p in [root, *root.children(recursive=True)]:
                self.known.setdefault(p.pid, p)
        return [p for p in self.known.values() if p.is_running()]

    def signal(self, sig: int, group: bool = False) -> None:
        """Send ``sig`` to the command (``group``: to its whole process group, as a
        terminal's Ctrl-C does)."""
        if group:
            os.killpg(os.getpgid(self.proc.pid), sig)
        else:
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if it is still running after ``timeout`` s."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self._reader.join(timeout=5)
        return rc

    def kill_all(self) -> None:
        """SIGKILL the command and every process it started that is still there, all at
        once: a machine crash as far as the data folder can tell."""
        procs = self.tree()
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGKILL)
        psutil.wait_procs(procs, timeout=30)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
