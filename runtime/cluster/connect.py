"""Starting the embedded Ray, or attaching to a running cluster, in one line or one error.

A bare ``ray.init()`` would join whatever cluster an earlier run left recorded on this
machine; a bare ``ray.init(address=...)`` towards nothing retries for minutes. Here the
embedded Ray is explicit (its own sessions, labels, niceness), and attaching probes the
address first, sends the Ray token of the cluster there, and fails in one line. The
embedded Ray listens on loopback only and requires a token of its own
(:mod:`runtime.cluster.security`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runtime.cluster import security
from runtime.cluster.heap import limit_arenas
from runtime.errors import ConfigError, EdgecoreError, NotStartedError


def init_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    namespace: str = "edgecore",
    quiet: bool = False,
) -> bool:
    """Start an embedded Ray (``address=None``) or attach to ``address``; True if we started it.

    A bare ``ray.init()`` would try to join whatever cluster an earlier run left
    recorded on this machine, even a dead one, so the embedded default is explicit. The
    embedded Ray binds every socket to 127.0.0.1 (its node IP) and requires a token of
    its own; a Ray older than :data:`~runtime.cluster.security.RAY_MIN_VERSION` is refused.
    """
    import ray

    if ray.is_initialized():
        return False
    security.check_ray_version()
    kwargs: dict[str, Any] = {"namespace": namespace, "log_to_driver": True}
    isolate: Any = contextlib.nullcontext()
    token: Path | None = None
    if address is None:
        limit_arenas()  # the embedded Ray's services and workers inherit the cap
        isolate = _embedded_head()
        token = security.new_session_token()
        # the one local node plays both roles
        kwargs.update(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            labels=dict(EMBEDDED_LABELS),
            # with a loopback node IP, Ray binds the GCS, raylet, object manager, workers,
            # agents and its Prometheus endpoints to loopback instead of every interface
            # (ray.init would replace it with the routable IP but for loopback_node below)
            _node_ip_address=security.LOOPBACK,
        )
        kwargs["_system_config"] = {
            "metrics_report_interval_ms": 60_000,
            # Ray runs workers at nice 15 below the driver; here the workers (gates, shards)
            # are the hot path and the driver writes checkpoints: at 15, each LanceDB write
            # of the driver stalled every alert behind it
            "worker_niceness": 0,
        }
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    else:
        if address == "auto":  # named, so that a loopback GCS is kept as loopback below
            address = auto_address()
        kwargs["address"] = address
        _choose_token(address)
        if ":" in address and "//" not in address and security.refuses_our_token(address):
            sent = "our Ray token" if os.environ.get("RAY_AUTH_MODE") == "token" else "no token"
            raise NotStartedError(
                f"the Ray cluster at {address} refused {sent}: run this as the user who "
                "started it, or point RAY_AUTH_TOKEN_PATH at its token (README, Security)"
            )
    if quiet:  # a command that only reads: Ray's own chatter is not its output
        import logging

        kwargs.update(logging_level=logging.ERROR, log_to_driver=False)
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    loopback = address is None or security.is_loopback(address.rpartition(":")[0])
    with isolate, security.loopback_node() if loopback else contextlib.nullcontext():
        ray.init(**kwargs)
    if token is not None:
        _check_loopback(ray)
        security.publish_session_token(token, ray.get_runtime_context().gcs_address)
    return True


def _check_loopback(ray: Any) -> None:
    """Fail closed should another Ray version put the embedded node off loopback."""
    node_ip = ray.util.get_node_ip_address()
    if not security.is_loopback(node_ip):
        ray.shutdown()
        raise EdgecoreError(
            f"the embedded Ray took node IP {node_ip}, not loopback: it would listen on the "
            f"network; edgecore needs Ray >= {'.'.join(map(str, security.RAY_MIN_VERSION))}"
        )


def attach(address: str, timeout: float = 8.0, hard: bool = False) -> None:
    """Attach to the running cluster at ``address`` (``auto``: the one this machine runs),
    or fail with :class:`~runtime.errors.NotStartedError` and a one-line reason.

    A bare ``ray.init(address=...)`` towards nothing retries for minutes and prints pages
    of warnings; here the address is probed first (a TCP connect). ``hard``: for command
    lines — should Ray still not answer within ``timeout`` (something else listens there),
    print the reason and exit 1 rather than hang.
    """
    import ray

    if ray.is_initialized():
        return
    target = auto_address() if address == "auto" else address
    if target != "auto" and not target.startswith("ray://"):
        host, _, port = target.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(
                f"--address must be HOST:PORT, 'auto' or ray://HOST:PORT, not {address!r}"
            )
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=3).close()
        except OSError as err:
            raise NotStartedError(
                f"no Ray cluster answers at {target} ({err.strerror or err}): is the runtime "
                "running? Start it (e.g. `edgecore serve`) or check --address"
            ) from None
    if not hard:
        try:
            init_ray(target)
        except ConnectionError as err:
            raise NotStartedError(f"cannot attach to the Ray cluster at {target}: {err}") from None
        return
    # a command line: Ray's retries, printed by its C++ side, are not our output, and it
    # must not hang if something else answers there
    saved = os.dup(2)

    def give_up() -> None:
        os.write(
            saved,
            f"error: the Ray cluster at {target} did not answer within {timeout:g} s; check --address\n".encode(),
        )
        os._exit(1)

    watchdog = threading.Timer(timeout, give_up)
    watchdog.daemon = True
    watchdog.start()
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 2)
    try:
        init_ray(target, quiet=True)
    except ConnectionError as err:
        raise NotStartedError(f"cannot attach to the Ray cluster at {target}: {err}") from None
    finally:
        watchdog.cancel()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(quiet)


def auto_address() -> str:
    """The address ``--address auto`` means: ``RAY_ADDRESS`` if set, else the one Ray
    cluster whose processes run on this machine; :class:`NotStartedError` if there is
    none or several.

    Ray's own ``auto`` attaches to an arbitrary one of several (the first of a set, or
    the last ``ray start``, with a warning in its log): two runtimes on one machine,
    and ``edgecore sql --address auto`` would answer from either. Which one is the
    user's to say.
    """
    env = os.environ.get("RAY_ADDRESS", "")
    if env and env != "auto":
        return env
    try:
        from ray._private.services import find_gcs_addresses
    except ImportError:  # pragma: no cover - another Ray layout: let ray.init find it
        return "auto"
    # Ray keeps a found list for the life of the process: ask the process table again
    with contextlib.suppress(AttributeError):
        find_gcs_addresses.cache_clear()
    found = sorted(find_gcs_addresses())
    if not found:
        raise NotStartedError(
            "no Ray cluster is running on this machine (--address auto): start the runtime "
            "(e.g. `edgecore serve`) or give the head node's --address HOST:PORT"
        )
    if len(found) > 1:
        raise NotStartedError(
            f"{len(found)} Ray clusters run on this machine ({', '.join(found)}): "
            "choose one with --address HOST:PORT (or RAY_ADDRESS)"
        )
    return found[0]


def _choose_token(address: str) -> None:
    """Send the token of the cluster at ``address``: an embedded Ray's own (this user
    started it: its file names its GCS address), else the machine's if it has one."""
    session_token = security.token_for(address)
    if session_token is not None and os.environ.get("RAY_AUTH_MODE", "token") == "token":
        security.use_token(session_token)
    else:
        _send_token_if_we_have_one()


def _send_token_if_we_have_one() -> None:
    """Attach with Ray's token when this machine has one and no mode was chosen (a
    cluster started by ``ray start``, e.g. from ``cluster.yaml``).

    Ray 2.59+ turns token authentication on by default for the local clusters it starts
    (the embedded Ray of ``serve``, ``demo``...), but a process attaching by address sends
    no token unless ``RAY_AUTH_MODE=token`` (the default for every cluster from Ray
    2.61): it was refused ("Authentication token is missing or incorrect"). The token
    is the machine's (``~/.ray/auth_token``, ``RAY_AUTH_TOKEN[_PATH]``), as the cluster's.
    """
    if os.environ.get("RAY_AUTH_MODE") is not None:
        return  # chosen by the user (or by a Ray started in this process): respect it
    has_token = bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"))
    if has_token or (Path.home() / ".ray" / "auth_token").is_file():
        os.environ["RAY_AUTH_MODE"] = "token"
        try:  # Ray read the mode when imported: refresh it, as Ray does when it enables it
            from ray._raylet import Config

            Config.initialize("")
        except (ImportError, AttributeError):  # a Ray without it reads the environment
            pass


@contextlib.contextmanager
def _embedded_head() -> Iterator[None]:
    """:func:`_own_sessions`, and a head without the autoscaler monitor (:func:`lean_head`)."""
    with _own_sessions(), lean_head():
        yield


_LEAN = threading.Lock()


@contextlib.contextmanager
def lean_head() -> Iterator[None]:
    """Start a head without Ray's autoscaler monitor: a Python process (84 MB of RSS in
    the soak, and its imports' CPU while the runtime's own actors start) that watches a
    node which never scales; the runtime asks it nothing. ``ray start --no-monitor`` has
    a flag for it, ``ray.init`` none, so the head's ``start_monitor`` is skipped while it
    starts; a Ray without that method starts as it would. (A ``ray.cluster_utils.Cluster``
    takes ``no_monitor`` in its head's arguments instead: :class:`LocalCluster`.)

    Ray's API server (``dashboard.py``, usage stats alone with ``include_dashboard=False``)
    stays: without its address, every node's dashboard agent logs a traceback a second
    looking for it, for as long as it runs.
    """
    try:
        from ray._private.node import Node
    except ImportError:  # pragma: no cover - another Ray layout: start it whole
        yield
        return
    with _LEAN:  # two starts at once must not restore each other's no-op
        saved = Node.__dict__.get("start_monitor")
        if saved is not None:
            Node.start_monitor = lambda self, *args, **kwargs: None  # type: ignore[method-assign]
        try:
            yield
        finally:
            if saved is not None:
                Node.start_monitor = saved  # type: ignore[method-assign]


@contextlib.contextmanager
def _own_sessions() -> Iterator[None]:
    """Start the embedded Ray's processes (GCS, raylet, and so the workers) in sessions of
    their own, as Ray itself does on Windows: a SIGTERM or SIGINT to the driver's whole
    process group (a shell job, ``kill -- -PGID``) then reaches the driver alone, which
    stops intake, commits through its actors and shuts Ray down. Ray still ends them if
    the driver dies (kernel fate-sharing), which is why this is done only where Ray has it.
    """
    import ray._private.services as services
    import ray._private.utils as utils

    base = services.ConsolePopen
    if sys.platform == "win32" or not utils.detect_fate_sharing_support():
        yield
        return

    class OwnSession(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("start_new_session", True)
            super().__init__(*args, **kwargs)

    services.ConsolePopen = OwnSession
    try:
        yield
    finally:
        services.ConsolePopen = base


EMBEDDED_LABELS = {"role": "hybrid", "site": "local"}


def yield_cpu(by: int = 10) -> bool:
    """Lower this process's CPU priority (every thread of it, LanceDB's included) by ``by``.

    For a coordinator whose own work (checkpoint writes to LanceDB, 50-130 ms of two cores'
    CPU each) is background work next to actors on the hot path: a live ingest's driver.
    Lowering needs no privilege; Linux only (a thread's niceness is its own there, so each
    is set), a no-op elsewhere. True if it was done.
    """
    tasks = "/proc/self/task"
    if not os.path.isdir(tasks):
        return False
    done = False
    for tid in os.listdir(tasks):
        with contextlib.suppress(OSError, ValueError):
            now = os.getpriority(os.PRIO_PROCESS, int(tid))
            os.setpriority(os.PRIO_PROCESS, int(tid), min(19, now + by))
            done = True
    return done
