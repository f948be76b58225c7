"""The soak's view of processes: each of a serve's tree named by its role, and its
resident memory in parts (anonymous, file-backed, shared; and of those the pages of Ray's
object store and of shared libraries' files, which soak_stats sets apart)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import psutil

MB = 2**20


def role(p: psutil.Process) -> str:
    """The driver, a Ray daemon, or an actor's worker named by its class (Ray titles
    a worker ``ray::Class.method`` while busy and ``ray::Class`` while idle)."""
    try:
        cmd = p.cmdline()
    except psutil.Error:
        return "gone"
    head = cmd[0] if cmd else p.name()
    if head.startswith("ray::"):
        return head[5:].split(".")[0].split(" ")[0] or "worker"
    joined = " ".join(cmd)
    for name in ("gcs_server", "raylet", "dashboard_agent", "runtime_env_agent", "log_monitor"):
        if name in joined:
            return name
    if "dashboard/dashboard.py" in joined:
        return "ray_api_server"  # usage stats alone (include_dashboard=False)
    if "autoscaler/_private/monitor.py" in joined or "autoscaler/v2/monitor.py" in joined:
        return "autoscaler_monitor"  # not started by the runtime's embedded head
    if "runtime.cli" in joined:
        return "serve"
    return os.path.basename(head)[:24]


def rss_by_role(root: psutil.Process) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """RSS per role, and its parts per role: anonymous, file-backed, shared memory, and of
    those the pages of Ray's object store (``plasma``: its file in /dev/shm, mapped by every
    worker that reads or writes an object) and of shared libraries' files (``code``); see
    soak_stats."""
    out: dict[str, float] = {}
    parts: dict[str, dict[str, float]] = {}
    for p in [root, *root.children(recursive=True)]:
        try:
            rss = p.memory_info().rss / MB
            status = Path(f"/proc/{p.pid}/status").read_text()
            mapped = mapped_mb(p.pid)
        except (psutil.Error, OSError):
            continue
        r = role(p)
        out[r] = out.get(r, 0.0) + rss
        mine = parts.setdefault(r, {})
        for kind, mb in mapped.items():
            mine[kind] = mine.get(kind, 0.0) + mb
        for line in status.splitlines():
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "RssShmem"):
                kind = key[3:].lower()
                mine[kind] = mine.get(kind, 0.0) + int(value.split()[0]) / 1024
    return out, parts


def _is_library(path: str) -> bool:
    """A shared library's file (``libx.so``, ``libx.so.2600``, ``mod.cpython-311-...so``)."""
    name = os.path.basename(path)
    return name.endswith(".so") or ".so." in name


def mapped_mb(pid: int, smaps: str | None = None) -> dict[str, float]:
    r"""Resident MB in process ``pid`` of Ray's object store (its /dev/shm/plasma* maps) and
    of shared libraries' files (``code``: their code and read-only data, paged in as it
    runs, and the copy-on-write pages of their data segments, bounded by the mappings'
    sizes), and how many library files it maps (``libraries``: a process loading ever more
    of them is growing, whatever each one's pages). ``smaps``: that file's text instead.

    >>> text = (
    ...     "7f00-7f10 r-xp 00000000 08:01 12 /venv/lancedb/_lancedb.abi3.so\n"
    ...     "Rss:                 800 kB\n"
    ...     "7f20-7f30 rw-s 00000000 00:1a 13 /dev/shm/plasma_x (deleted)\n"
    ...     "Rss:                2048 kB\n"
    ...     "7f40-7f50 rw-p 00000000 00:00 0 \n"
    ...     "Rss:                4096 kB\n"
    ...     "7f60-7f70 r--p 00000000 08:01 14 /data/my file.arrow\n"
    ...     "Rss:                1024 kB\n"
    ...     "7f80-7f90 r--p 00000000 08:01 15 /usr/lib/libssl.so.3\n"
    ...     "Rss:                 224 kB\n"
    ... )
    >>> mapped_mb(0, text)
    {'plasma': 2.0, 'code': 1.0, 'libraries': 2}
    """
    totals = {"plasma": 0, "code": 0}
    libraries: set[str] = set()
    kind: str | None = None
    if smaps is None:
        with open(f"/proc/{pid}/smaps") as f:
            smaps = f.read()
    for line in smaps.splitlines():
        if line and line[0] in "0123456789abcdef" and "-" in line.split(" ", 1)[0]:
            fields = line.split(None, 5)
            path = fields[5].strip() if len(fields) > 5 else ""
            kind = None
            if path.startswith("/dev/shm/plasma"):
                kind = "plasma"
            elif path.startswith("/") and _is_library(path):
                kind = "code"
                libraries.add(path)
        elif kind is not None and line.startswith("Rss:"):
            totals[kind] += int(line.split()[1])
    return {**{k: v / 1024 for k, v in totals.items()}, "libraries": len(libraries)}


def object_store_mb(root: psutil.Process) -> float | None:
    """The capacity of the embedded Ray's object store (the raylet's argument)."""
    for p in root.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            for arg in p.cmdline():
                if arg.startswith("--object_store_memory="):
                    return int(arg.split("=", 1)[1]) / MB
    return None
