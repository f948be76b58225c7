"""Several of the runtime's light actors in one process: a :class:`Host` per placement.

Every Ray actor is a worker process (~130-230 MB RSS, a second of CPU to start on a small
machine). The status board and the table sinks are idle most of the time, so one process
per node hosts them all (as an Orleans silo hosts many grains): a class that declares
``edgecore_hostable = True`` is started inside the :class:`Host` of its placement instead
of as an actor of its own. Callers do not see the difference: the
:class:`~runtime.cluster.handles.Handle` of a hosted object routes each call through
:meth:`Host.invoke`, and the same typed clients work on it.

What hosting means for the hosted:

- **calls run one at a time, in order** (the host is a sequential Ray actor): what one
  caller sends an object runs in the order sent, as with an actor of its own; a slow call
  of one hosted object delays the others, which is why only classes whose calls are short
  and never wait on the network declare themselves hostable (a user's subscriber, which
  may post to a webhook, keeps an actor of its own);
- **they fail together**: the host dying is each hosted object's actor failure, and the
  runtime recovers from its last checkpoint as for any actor;
- a hosted object's :meth:`~runtime.cluster.handles.Handle.kill` drops it from its host.

>>> class Board:
...     edgecore_hostable = True
...     def __init__(self):
...         self.status = {}
...     def update(self, status):
...         self.status = status
...     def get(self):
...         return self.status
>>> host = Host()
>>> host.add("runtime:status", Board, (), {})
>>> host.invoke("runtime:status", "update", {"ok": 1})
>>> host.invoke("runtime:status", "get")
{'ok': 1}
>>> host.hosted()
['runtime:status']
>>> host.drop("runtime:status")
>>> host.invoke("runtime:status", "get")
Traceback (most recent call last):
...
runtime.errors.ActorFailedError: runtime:status is not hosted here (it was dropped, or its host restarted): restart the runtime
"""

from __future__ import annotations

from typing import Any

from runtime.errors import ActorFailedError


def hostable(cls: type) -> bool:
    """True if ``cls`` asks to share its node's host (``edgecore_hostable = True``)."""
    return getattr(cls, "edgecore_hostable", False) is True


class Host:
    """Plain objects by name, in one process; see the module's docstring."""

    def __init__(self) -> None:
        self._objects: dict[str, Any] = {}
        #: a constructor's error, raised again by every later call (as Ray does for an
        #: actor whose __init__ raised)
        self._failed: dict[str, BaseException] = {}

    def add(self, name: str, cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Start ``cls(*args, **kwargs)`` as ``name`` (one that exists is replaced)."""
        self._failed.pop(name, None)
        try:
            self._objects[name] = cls(*args, **kwargs)
        except Exception as err:
            self._objects.pop(name, None)
            self._failed[name] = err
            raise

    def ready(self, name: str) -> None:
        """Return once ``name`` was started; raise its constructor's error if it failed."""
        self._get(name)

    def invoke(self, name: str, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._get(name), method)(*args, **kwargs)

    def drop(self, name: str) -> None:
        self._objects.pop(name, None)
        self._failed.pop(name, None)

    def hosted(self) -> list[str]:
        """The names of the objects hosted here, sorted."""
        return sorted(self._objects)

    def _get(self, name: str) -> Any:
        if name in self._failed:
            raise self._failed[name]
        try:
            return self._objects[name]
        except KeyError:
            raise ActorFailedError(
                f"{name} is not hosted here (it was dropped, or its host restarted): "
                "restart the runtime"
            ) from None
