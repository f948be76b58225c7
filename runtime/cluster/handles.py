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
from dataclasses import dataclass, field
from typing import Any

from runtime.errors import ActorFailedError, EdgecoreError

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

# starting or attaching to Ray lives in runtime.cluster.connect; callers import it here too
from runtime.cluster.connect import EMBEDDED_LABELS as EMBEDDED_LABELS  # noqa: E402
from runtime.cluster.connect import attach as attach  # noqa: E402
from runtime.cluster.connect import init_ray as init_ray  # noqa: E402
from runtime.cluster.connect import yield_cpu as yield_cpu  # noqa: E402


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
    target: Any  # the object (local), the Ray actor handle, or its host's (hosted)
    options: dict[str, Any] = field(default_factory=dict)
    #: the name of the Host actor this object lives in (runtime.cluster.host), if hosted
    host: str | None = None

    @property
    def actor(self) -> str:
        """The Ray actor that runs it: its own name, or its host's."""
        return self.host or self.name

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` with ``args``; a future among them (another call's result) is
        handed over as its value once it is done, as Ray does for a top-level argument:
        the call waits for it, the caller does not."""
        if self.mode == "local":
            try:
                args = tuple(a.result() if isinstance(a, LocalFuture) else a for a in args)
                return LocalFuture(getattr(self.target, method)(*args, **kwargs))
            except Exception as err:  # delivered at resolve(), as Ray would
                return LocalFuture(error=err)
        if self.host is not None:
            return self.target.invoke.remote(self.name, method, *args, **kwargs)
        return getattr(self.target, method).remote(*args, **kwargs)

    def node_id(self) -> str:
        if self.mode == "local":
            return "local"
        import ray

        return ray.get(
            self.target.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id())
        )

    def kill(self) -> None:
        if self.mode != "ray":
            return
        if self.host is not None:  # its host goes on with the others
            self.target.drop.remote(self.name)
            return
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
    max_restarts: int = 0,
    **kwargs: Any,
) -> Handle:
    """Start ``cls(*args, **kwargs)`` as a named actor (or an in-process object);
    ``max_restarts``: times Ray starts it again after it died (-1: always)."""
    if mode == "local":
        return Handle(name, mode, cls(*args, **kwargs))
    import ray

    opts: dict[str, Any] = {
        "name": name,
        "num_cpus": num_cpus,
        "max_concurrency": max_concurrency,
        "max_restarts": max_restarts,
        # no per-call task events to the GCS (as Ray Serve does for its actors): they cost
        # every call ~20 % in a pipelined loop here, and the GCS kept them in memory (it
        # grew 50 -> 180 MB in a 10-minute soak); actors still show in `ray list actors`
        "enable_task_events": False,
    }
    if resources:
        opts["resources"] = resources
    if label_selector:
        opts["label_selector"] = label_selector
    actor = ray.remote(cls).options(**opts).remote(*args, **kwargs)
    return Handle(name, mode, actor, opts)


def spawn_hosted(host: Handle, cls: type, *args: Any, name: str, **kwargs: Any) -> Handle:
    """Start ``cls(*args, **kwargs)`` as ``name`` inside the ``host`` actor
    (:class:`runtime.cluster.host.Host`); :func:`wait_ready` raises its constructor's error."""
    host.target.add.remote(name, cls, args, kwargs)
    return Handle(name, host.mode, host.target, host.options, host=host.name)


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
    remote = [
        h.target.ready.remote(h.name) if h.host else h.target.__ray_ready__.remote()
        for h in handles
        if h.mode == "ray"
    ]
    if remote:
        resolve(remote, timeout=timeout)


def actor_nodes(namespace: str = "edgecore") -> dict[str, str]:
    """Name -> node id of every alive named actor, as Ray's control store records it, and
    of every object hosted in one (runtime.cluster.host): its host's node."""
    import ray._private.state as state

    from runtime.cluster.names import HOST_PREFIX

    out = {}
    for info in state.state.actor_table(None).values():
        name = info.get("Name")
        if name and info.get("State") == "ALIVE" and info.get("RayNamespace") in (namespace, None):
            out[name] = info["Address"].get("NodeID", "")
    hosts = [n for n in out if n.startswith(HOST_PREFIX)]
    for name, host in _hosted_objects(hosts, namespace).items():
        out[name] = out[host.name]
    return out


def lookup(name: str, namespace: str = "edgecore") -> Handle | None:
    """A handle on the live actor named ``name`` (None if there is none now)."""
    import ray

    try:
        return Handle(name, "ray", ray.get_actor(name, namespace=namespace))
    except ValueError:
        return None


def dead_actors(wanted: list[str], namespace: str = "edgecore") -> list[str]:
    """Those of ``wanted`` that Ray's control store has as dead for good (not restarting)."""
    import ray._private.state as state

    alive = set()
    for info in state.state.actor_table(None).values():
        if info.get("RayNamespace") in (namespace, None) and info.get("State") != "DEAD":
            alive.add(info.get("Name"))
    return [n for n in wanted if n not in alive]


def named_actors(prefix: str, namespace: str = "edgecore") -> dict[str, Handle]:
    """Handles on the running runtime's actors whose names start with ``prefix``, hosted
    ones (runtime.cluster.host) included."""
    import ray

    from runtime.cluster.names import HOST_PREFIX

    names = []
    for entry in ray.util.list_named_actors(all_namespaces=True):
        name, ns = (
            (entry["name"], entry["namespace"]) if isinstance(entry, dict) else (entry, namespace)
        )
        if ns == namespace:
            names.append(name)
    out = {
        n: Handle(n, "ray", ray.get_actor(n, namespace=namespace))
        for n in names
        if n.startswith(prefix)
    }
    hosts = [n for n in names if n.startswith(HOST_PREFIX)]
    for name, host in _hosted_objects(hosts, namespace).items():
        if name.startswith(prefix):
            out[name] = Handle(name, "ray", host.target, host=host.name)
    return out


def _hosted_objects(hosts: list[str], namespace: str) -> dict[str, Handle]:
    """Every object hosted in the host actors named ``hosts`` -> its host's handle (a host
    gone meanwhile hosts nothing)."""
    import ray

    handles = []
    for name in hosts:
        with contextlib.suppress(ValueError):  # gone since its name was listed
            handles.append(Handle(name, "ray", ray.get_actor(name, namespace=namespace)))
    out: dict[str, Handle] = {}
    for host, ref in [(h, h.target.hosted.remote()) for h in handles]:
        try:
            out.update(dict.fromkeys(ray.get(ref, timeout=30), host))
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            continue
    return out
