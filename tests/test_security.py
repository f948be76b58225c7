"""Locked-down defaults: the embedded Ray of `serve` and `demo` listens on loopback only and
refuses a client without its token; `cluster.yaml` hands every node the token; an old Ray
is refused. Run as users run the commands (subprocesses), each listener of that process
tree checked — never the machine's, where other Ray sessions may run."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import make_transactions
from live_helpers import Serve, ndjson, post

from runtime.cluster import security
from runtime.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def listeners(root_pid: int) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every TCP socket listening, and every UDP socket
    bound, in the process tree of ``root_pid`` (Ray's GCS, raylet, agents and workers
    are its descendants, even in sessions of their own)."""
    try:
        root = psutil.Process(root_pid)
        procs = {p.pid: p for p in [root, *root.children(recursive=True)]}
    except psutil.NoSuchProcess:
        return []
    found = []
    for c in psutil.net_connections(kind="inet"):
        if c.pid not in procs or not c.laddr:
            continue
        if c.status == psutil.CONN_LISTEN or c.type == socket.SOCK_DGRAM:
            try:
                name = procs[c.pid].name()
            except psutil.NoSuchProcess:
                name = "?"
            found.append((c.laddr.ip, c.laddr.port, name))
    return found


#: Ray's autoscaler monitor, v1 or v2
MONITOR = re.compile(r"autoscaler/(_private|v2)/monitor\.py")


def commands(root_pid: int) -> list[str]:
    """The command lines of the process tree of ``root_pid``."""
    out = []
    with contextlib.suppress(psutil.NoSuchProcess):
        for p in psutil.Process(root_pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                out.append(" ".join(p.cmdline()))
    return out


def off_loopback(found: list[tuple[str, int, str]]) -> list[tuple[str, int, str]]:
    return [f for f in found if not security.is_loopback(f[0])]


def gcs_address(root_pid: int) -> str:
    """The GCS of the Ray that ``root_pid`` started: its gcs_server's listening port."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for ip, port, name in listeners(root_pid):
            if name == "gcs_server":
                return f"127.0.0.1:{port}" if security.is_loopback(ip) else f"{ip}:{port}"
        time.sleep(0.5)
    raise AssertionError("no gcs_server under the process")


def gcs_call(address: str, token: str | None):
    """One read from the GCS (its node table), with or without ``authorization``."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        metadata = [("authorization", f"Bearer {token}")] if token else None
        try:
            reply = stub.GetAllNodeInfo(
                gcs_service_pb2.GetAllNodeInfoRequest(), metadata=metadata, timeout=20
            )
        except grpc.RpcError as err:
            return err.code()
        return [(n.node_manager_address, n.metrics_export_port) for n in reply.node_info_list]


def clean_env() -> dict[str, str]:
    """The environment of a user who chose nothing about Ray's authentication."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")},
        "PYTHONPATH": str(ROOT),
    }


def test_serve_listens_on_loopback_only_and_its_ray_refuses_a_client_without_the_token(
    tmp_path,
):
    serve = Serve(tmp_path / "d", "--app", "fraud", env=clean_env())
    try:
        port = serve.wait_http()
        table = pq.read_table(make_transactions(tmp_path / "t.parquet", 200, 20))
        rows = [{**r, "ts": r["ts"].isoformat()} for r in table.to_pylist()]
        code, body = post(port, ndjson(rows))
        assert code == 200 and body["accepted"] == 200, (
            body
        )  # it takes events: every actor of the pipeline is up
        address = gcs_address(serve.proc.pid)
        found = listeners(serve.proc.pid)
        names = {name for _, _, name in found}
        # not vacuous: Ray's servers are there, and serve's own HTTP port
        assert {"gcs_server", "raylet"} <= names and ("127.0.0.1", port) in {
            (ip, p) for ip, p, _ in found
        }, found
        assert off_loopback(found) == [], found
        # the embedded head runs no autoscaler monitor (connect.lean_head)
        cmds = commands(serve.proc.pid)
        assert not [c for c in cmds if MONITOR.search(c)], cmds
        # not vacuous: Ray's own processes are seen (the log monitor, the API server)
        assert any("log_monitor.py" in c for c in cmds), cmds
        assert any("dashboard/dashboard.py" in c for c in cmds), cmds

        token_file = security.token_for(address)
        assert token_file is not None, f"no token file for {address}"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
        token = token_file.read_text().strip()
        assert len(token) == 64
        import grpc

        assert gcs_call(address, None) == grpc.StatusCode.UNAUTHENTICATED
        assert gcs_call(address, "0" * 64) == grpc.StatusCode.UNAUTHENTICATED
        [(node_ip, metrics_port)] = gcs_call(address, token)  # refused for the token alone
        assert node_ip == "127.0.0.1"
        # Ray's Prometheus endpoint (ray_edgecore_* figures) still answers, on loopback
        assert metrics_port in {p for _, p, _ in found}
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30) as r:
            assert r.status == 200 and b"ray_" in r.read()

        # a user's command finds the token by the address, with nothing set
        done = subprocess.run(
            [sys.executable, "-m", "runtime.cli", "status", "--address", address, "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            env=clean_env(),
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout)
        # another user (no token of this session): refused, in one line, at once
        t0 = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "runtime.cli", "status", "--address", address],
            capture_output=True,
            text=True,
            timeout=120,
            env={**clean_env(), "HOME": str(tmp_path)},
        )
        assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr[-2000:]
        assert f"the Ray cluster at {address} refused no token" in done.stderr
        assert time.monotonic() - t0 < 30
        serve.signal(signal.SIGTERM)
        assert serve.wait(timeout=60) == 0, serve.stderr[-3000:]
        assert security.token_for(address) is None  # gone with the session
        assert not token_file.exists()
    finally:
        serve.stop()


def test_demo_on_a_simulated_cluster_listens_on_loopback_only(tmp_path):
    """`demo --edges 1`: a head and an edge node (ray.cluster_utils), each on loopback."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runtime.cli",
            "demo",
            "--edges",
            "1",
            "--events",
            "6000",
            "--edge-events",
            "1000",
            "--rate",
            "1500",
            "--data",
            str(tmp_path / "d"),
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(),
        start_new_session=True,
    )
    seen: set[tuple[str, int, str]] = set()
    cmds: set[str] = set()
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            seen |= set(listeners(proc.pid))
            cmds |= set(commands(proc.pid))
            time.sleep(1)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(True)]:
                p.kill()
    assert proc.returncode == 0, err[-3000:]
    raylets = [f for f in seen if f[2] == "raylet"]
    assert len({p for _, p, _ in raylets}) >= 4, seen  # two nodes, two ports each
    assert off_loopback(sorted(seen)) == [], seen
    assert json.loads(out)["events"] == 6000
    # its head runs no autoscaler monitor (connect.lean_head)
    assert not [c for c in cmds if MONITOR.search(c)], cmds
    assert any("log_monitor.py" in c for c in cmds), cmds  # not vacuous: Ray's are there


def test_a_ray_older_than_the_one_relied_on_is_refused_before_anything_starts(monkeypatch):
    import ray

    from runtime.cluster.handles import init_ray

    monkeypatch.setattr(ray, "__version__", "2.52.0")
    with pytest.raises(ConfigError, match=r"Ray 2\.52\.0 is too old: edgecore needs Ray >= 2\.60"):
        init_ray(None, num_cpus=1)
    assert not ray.is_initialized()


def test_pyproject_requires_that_ray():
    text = (ROOT / "pyproject.toml").read_text()
    need = ".".join(map(str, security.RAY_MIN_VERSION))
    assert f'"ray[default]>={need}"' in text
    security.check_ray_version()  # and the installed one meets it


def test_the_embedded_ray_will_not_run_without_a_token(monkeypatch):
    import ray

    from runtime.cluster.handles import init_ray

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with pytest.raises(ConfigError, match="RAY_AUTH_MODE=disabled.*unset RAY_AUTH_MODE"):
        init_ray(None, num_cpus=1)
    assert not ray.is_initialized()


def test_session_tokens_are_private_found_by_address_and_pruned(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    try:
        path = security.new_session_token()
        assert os.environ["RAY_AUTH_MODE"] == "token"
        assert os.environ["RAY_AUTH_TOKEN_PATH"] == str(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert security.token_for("127.0.0.1:6399") is None
        security.publish_session_token(path, "127.0.0.1:6399")
        assert security.token_for("localhost:6399").read_text() == path.read_text()
        # a token chosen in the environment is the one written down (Ray prefers it)
        monkeypatch.setenv("RAY_AUTH_TOKEN", "f" * 64)
        assert security.new_session_token().read_text() == "f" * 64
        # a session killed with SIGKILL left its files: the next start drops them
        dead = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
        )
        stale = path.parent / f"session-{int(dead.stdout)}-00000000.token"
        stale.write_text("x")
        security.publish_session_token(stale, "127.0.0.1:7000")
        security.new_session_token()
        assert not stale.exists() and security.token_for("127.0.0.1:7000") is None
        assert security.token_for("127.0.0.1:6399") is not None  # this process's: alive
    finally:
        monkeypatch.undo()
        security._refresh_token_mode()  # Ray in this process: back to the environment's mode


def test_cluster_yaml_hands_every_node_the_token():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(config))
    mounted = "~/.ray/edgecore-cluster.token"
    # copied from the machine that runs `ray up` (made by the command cluster.yaml gives),
    # never from the repository, which is rsynced to the nodes as well
    assert config["file_mounts"].get(mounted) == mounted, config["file_mounts"]
    assert f"chmod 600 {mounted}" in config["setup_commands"]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts, key
        for command in starts:
            assert "RAY_AUTH_MODE=token" in command, command
            assert "RAY_AUTH_TOKEN_PATH=$HOME/.ray/edgecore-cluster.token" in command, command
    how = (ROOT / "cluster.yaml").read_text()
    assert "umask 077" in how and "secrets.token_hex(32)" in how and mounted in how


def test_a_home_where_no_token_can_be_kept_is_one_clear_error(tmp_path, monkeypatch):
    home = tmp_path / "not-a-folder"
    home.write_text("")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    with pytest.raises(ConfigError, match="cannot keep Ray's session token in .*set HOME"):
        security.new_session_token()
