"""The one place that talks to Ray: spawn plain classes as actors, call them, wait.

Runtime code holds :class:`Handle` objects and :class:`Future` results; in
``local`` mode the same classes run in-process (for tests and debugging, and for
doctests), in ``ray`` mode each becomes a Ray actor via ``ray.remote(cls).options``.
Ray's errors are translated here into :class:`~runtime.errors.ActorFailedError`.

>>> class Echo:
...     def hi(self, x):
...         return f"hi {x}"
>>> h = spawn(Echo, name="echo", mode="local")
>>> resolve([h.call("hi", 1)])
['hi 1']
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.errors import ActorFailedError, ConfigError, EdgecoreError, NotStartedError

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


@dataclass
class LocalFuture:
    value: Any = None
    error: BaseException | None = None

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


@dataclass
class Handle:
    """An actor: ``call(method, *args)`` returns a future; ``resolve`` waits for it."""

    name: str
    mode: str
    target: Any  # the object (local) or the Ray actor handle
    options: dict[str, Any] = field(default_factory=dict)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self.mode == "local":
            try:
                return LocalFuture(getattr(self.target, method)(*args, **kwargs))
            except Exception as err:  # delivered at resolve(), as Ray would
                return LocalFuture(error=err)
        return getattr(self.target, method).remote(*args, **kwargs)

    def node_id(self) -> str:
        if self.mode == "local":
            return "local"
        import ray

        return ray.get(
            self.target.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id())
        )

    def kill(self) -> None:
        if self.mode == "ray":
            import ray

            ray.kill(self.target, no_restart=True)


def spawn(
    cls: type,
    *args: Any,
    name: str,
    mode: str,
    num_cpus: float = 0,
    max_concurrency: int = 1,
    resources: dict[str, float] | None = None,
    label_selector: dict[str, str] | None = None,
    **kwargs: Any,
) -> Handle:
    """Start ``cls(*args, **kwargs)`` as a named actor (or an in-process object)."""
    if mode == "local":
        return Handle(name, mode, cls(*args, **kwargs))
    import ray

    opts: dict[str, Any] = {
        "name": name,
        "num_cpus": num_cpus,
        "max_concurrency": max_concurrency,
        "max_restarts": 0,
    }
    if resources:
        opts["resources"] = resources
    if label_selector:
        opts["label_selector"] = label_selector
    actor = ray.remote(cls).options(**opts).remote(*args, **kwargs)
    return Handle(name, mode, actor, opts)


def resolve(futures: list[Any], timeout: float | None = None) -> list[Any]:
    """Wait for all ``futures``; raise the actor's own error or :class:`ActorFailedError`."""
    if not futures:
        return []
    local = [isinstance(f, LocalFuture) for f in futures]
    if all(local):
        return [f.result() for f in futures]
    if any(local):  # e.g. a topic hosted in shards beside topic actors: each in its way
        remote = iter(
            resolve(
                [f for f, is_local in zip(futures, local, strict=True) if not is_local], timeout
            )
        )
        return [
            f.result() if is_local else next(remote)
            for f, is_local in zip(futures, local, strict=True)
        ]
    import ray

    try:
        return ray.get(list(futures), timeout=timeout)
    except ray.exceptions.RayTaskError as err:
        # the actor's own error as it raised it: its message, not Ray's header (the
        # as_instanceof_cause() wrapper prints only "ray::Actor.method() (pid=...)")
        inner = getattr(err, "cause", None)
        if isinstance(inner, EdgecoreError):
            raise inner from None
        cause = err.as_instanceof_cause()
        if isinstance(cause, EdgecoreError):
            raise cause from None
        raise ActorFailedError(f"an actor call failed: {err}") from err
    except ray.exceptions.RayActorError as err:
        raise ActorFailedError(
            f"a runtime actor died ({err.__class__.__name__}); the runtime recovers from the "
            "last checkpoint when restarted"
        ) from err


async def resolve_async(futures: list[Any]) -> list[Any]:
    """:func:`resolve` for an event loop: awaits Ray's futures without a thread to block
    in (a serving front end waiting in an executor thread pays two thread hand-offs under
    the GIL per batch)."""
    if not futures or any(isinstance(f, LocalFuture) for f in futures):
        return resolve(futures)  # local calls are done already
    import asyncio

    import ray

    try:
        return list(await asyncio.gather(*(asyncio.wrap_future(f.future()) for f in futures)))
    except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError):
        return resolve(futures)  # the same errors, translated the same way


def ready(
    futures: list[Any], num: int = 1, timeout: float | None = None
) -> tuple[list[Any], list[Any]]:
    """Split ``futures`` into (done, the rest) without raising: waits for ``num`` of them,
    or at most ``timeout`` seconds (0 = just look)."""
    if not futures or all(isinstance(f, LocalFuture) for f in futures):
        return list(futures), []
    if any(isinstance(f, LocalFuture) for f in futures):
        done_local = [f for f in futures if isinstance(f, LocalFuture)]
        remote = [f for f in futures if not isinstance(f, LocalFuture)]
        done, rest = ready(remote, max(0, num - len(done_local)) or 1, timeout)
        return done_local + done, rest
    import ray

    done, rest = ray.wait(list(futures), num_returns=min(num, len(futures)), timeout=timeout)
    return done, rest


def init_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    namespace: str = "edgecore",
    quiet: bool = False,
) -> bool:
    """Start an embedded Ray (``address=None``) or attach to ``address``; True if we started it.

    A bare ``ray.init()`` would try to join whatever cluster an earlier run left
    recorded on this machine, even a dead one, so the embedded default is explicit.
    """
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"namespace": namespace, "log_to_driver": True}
    isolate: Any = contextlib.nullcontext()
    if address is None:
        isolate = _own_sessions()
        # the one local node plays both roles
        kwargs.update(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            labels=dict(EMBEDDED_LABELS),
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
        kwargs["address"] = address
    if quiet:  # a command that only reads: Ray's own chatter is not its output
        import logging

        kwargs.update(logging_level=logging.ERROR, log_to_driver=False)
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    with isolate:
        ray.init(**kwargs)
    return True


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
    target = address
    if address == "auto":
        try:
            from ray._private.services import get_ray_address_from_environment

            target = get_ray_address_from_environment("auto", None)
        except ConnectionError:
            raise NotStartedError(
                "no Ray cluster is running on this machine (--address auto): start the runtime "
                "(e.g. `edgecore serve`) or give the head node's --address HOST:PORT"
            ) from None
        except ImportError:  # a Ray without the helper: let ray.init find it
            target = address
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
    _send_token_if_we_have_one()
    if not hard:
        try:
            init_ray(address)
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
        init_ray(address, quiet=True)
    except ConnectionError as err:
        raise NotStartedError(f"cannot attach to the Ray cluster at {target}: {err}") from None
    finally:
        watchdog.cancel()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(quiet)


def _send_token_if_we_have_one() -> None:
    """Attach with Ray's token when this machine has one and no mode was chosen.

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


def nodes() -> list[dict[str, Any]]:
    """Every node Ray knows: id, alive, role and site labels, address."""
    import ray

    out = []
    for n in ray.nodes():
        labels = n.get("Labels") or {}
        out.append(
            {
                "node_id": n["NodeID"],
                "alive": bool(n.get("Alive")),
                "role": labels.get("role", ""),
                "site": labels.get("site", ""),
                "address": n.get("NodeManagerAddress", ""),
            }
        )
    return out


def wait_ready(handles: list[Handle], timeout: float = 60.0) -> None:
    """Wait until the actors behind ``handles`` were created (and so have a node)."""
    remote = [h.target.__ray_ready__.remote() for h in handles if h.mode == "ray"]
    if remote:
        resolve(remote, timeout=timeout)


def actor_nodes(namespace: str = "edgecore") -> dict[str, str]:
    """Name -> node id of every alive named actor, as Ray's control store records it."""
    import ray._private.state as state

    out = {}
    for info in state.state.actor_table(None).values():
        name = info.get("Name")
        if name and info.get("State") == "ALIVE" and info.get("RayNamespace") in (namespace, None):
            out[name] = info["Address"].get("NodeID", "")
    return out


def named_actors(prefix: str, namespace: str = "edgecore") -> dict[str, Handle]:
    """Handles on the running runtime's actors whose names start with ``prefix``."""
    import ray

    out: dict[str, Handle] = {}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        name, ns = (
            (entry["name"], entry["namespace"]) if isinstance(entry, dict) else (entry, namespace)
        )
        if ns == namespace and name.startswith(prefix):
            out[name] = Handle(name, "ray", ray.get_actor(name, namespace=namespace))
    return out
