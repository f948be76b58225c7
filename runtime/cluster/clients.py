"""Typed clients over actors: the one way runtime code calls an actor.

Each actor class (a shard, a topic, a subscriber, an ingest stage, the status board) is
a plain class; :func:`~runtime.cluster.handles.spawn` hosts it (a Ray actor, or the object
itself in ``local`` mode) and a client wraps the handle, as ``ray.util.queue.Queue`` wraps
its private actor class. Callers call methods: they never spell a method name as a string
and never see ``.remote()``. Each client method names its target by the class's own
function (``self._call(Shard.drain)``), so renaming a method breaks at import, not on a
live call, and :func:`check_client` verifies every client against its class.

Client methods return futures (pipelined, like Ray's): wait with
:func:`~runtime.cluster.handles.resolve`,.

>>> from runtime.cluster.handles import resolve, spawn
>>> class Echo:
...     def hi(self, x):
...         return f"hi {x}"
>>> class EchoClient(ActorClient):
...     def hi(self, x):
...         return self._call(Echo.hi, x)
>>> echo = EchoClient(spawn(Echo, name="echo", mode="local"))
>>> resolve([echo.hi(1)])
['hi 1']
>>> check_client(EchoClient, Echo)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from runtime.cluster.handles import Handle
from runtime.cluster.wire import pack_for


class ActorClient:
    """A typed client over one actor; subclasses add one method per actor method."""

    __slots__ = ("_handle",)

    def __init__(self, handle: Handle) -> None:
        self._handle = handle

    @property
    def name(self) -> str:
        """The actor's name (see :mod:`runtime.cluster.names`)."""
        return self._handle.name

    @property
    def handle(self) -> Handle:
        """The handle underneath, for the Ray boundary's own functions (readiness, kill)."""
        return self._handle

    @property
    def remote(self) -> bool:
        """True if the actor runs in Ray (its arguments cross a process boundary)."""
        return self._handle.mode == "ray"

    def kill(self) -> None:
        self._handle.kill()

    def node_id(self) -> str:
        return self._handle.node_id()

    def ask(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call one of the actor's own methods, named by its function (``probe.ask(Probe.take)``):
        for methods of a user's class that its typed client does not list."""
        return self._handle.call(method.__name__, *args, **kwargs)

    _call = ask

    def _pack(self, rows: pa.Table) -> Any:
        """Rows as this actor takes them: Arrow IPC bytes across Ray, the table in-process."""
        return pack_for(self._handle, rows)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def check_client(client_cls: type[ActorClient], actor_cls: type) -> None:
    """Every public method of ``client_cls`` exists on ``actor_cls`` and takes the same
    parameters (beyond ``self``; options of the client's own may follow, with defaults), so
    no call through the client can miss its method."""
    for name, fn in inspect.getmembers(client_cls, inspect.isfunction):
        if name.startswith("_") or name in vars(ActorClient):
            continue
        target = getattr(actor_cls, name, None)
        if target is None or not callable(target):
            raise AssertionError(
                f"{client_cls.__name__}.{name} calls {actor_cls.__name__}.{name}, which does not exist"
            )
        mine = list(inspect.signature(fn).parameters.values())[1:]
        theirs = [p.name for p in list(inspect.signature(target).parameters.values())[1:]]
        # Ray's tracing adds this to the methods of a class it has made an actor of
        theirs = [p for p in theirs if p != "_ray_trace_ctx"]
        # the client may add options of its own after the actor's parameters, with defaults
        extra = mine[len(theirs) :]
        if [p.name for p in mine[: len(theirs)]] != theirs or any(
            p.default is inspect.Parameter.empty for p in extra
        ):
            raise AssertionError(
                f"{client_cls.__name__}.{name}{tuple(p.name for p in mine)} does not match "
                f"{actor_cls.__name__}.{name}{tuple(theirs)}"
            )
