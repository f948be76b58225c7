"""Contracts every entity kind, source and sink must meet, checked with one call.

In the style of river's ``utils.estimator_checks``: :func:`yield_checks` lists the
checks that apply to an object, and :func:`check_kind`, :func:`check_source`,
:func:`check_sink` and :func:`check_subscriber` run them all. A broken contract raises
:class:`~runtime.errors.ContractError` (an ``AssertionError`` too) naming the kind,
source or sink, the key and field or the column that broke, and the fix.

Entity kinds (:mod:`runtime.testing.checks_kinds`), each in a local runtime:

* ``check_definition``: ``check()`` passes, the events have the columns ``needs()``
  names, ``active_topics()`` are declared.
* ``check_restore``: entity state and the kind snapshot survive a checkpoint and a
  restart, and the rest of the events give what a run that never stopped gives.
* ``check_batch_independence``: one batch or many small ones, same state and outputs.
* ``check_on_event_matches_apply`` (kinds defining both): the same state, field by field.
* ``check_handlers`` (kinds with handlers): each runs and returns something picklable.

Sources and subscribers (:mod:`runtime.testing.checks_io`): ``check_resume`` (a
source resumed at a position yields exactly the tail), ``check_subscriber_api``
(``on_batch`` takes an empty and a full batch, ``flush`` runs) and, for sinks with a
``key``, ``check_idempotent`` (a redelivered batch changes nothing).

A kind, source or sink that cannot meet a check by design says so in a class attribute
``contract_exempt = {"check_name": "why"}``; the check is reported as exempt with the
reason. A kind's ``volatile_columns`` are emitted columns that differ between runs by
design (wall-clock time) and are not compared.

>>> from runtime.entities.kind import EntityKind
>>> class Clicks(EntityKind):
...     name, key, state = "clicks", "user_id", {"clicks": "int64"}
...     def on_event(self, state, event):
...         state["clicks"] += 1
>>> check_kind(Clicks, [{"user_id": "a"}, {"user_id": "b"}, {"user_id": "a"}])
... # doctest: +NORMALIZE_WHITESPACE
{'check_definition': 'passed', 'check_restore': 'passed',
 'check_batch_independence': 'passed'}
>>> from runtime.testing import MemorySource, ListSink
>>> check_source(MemorySource([{"x": i} for i in range(5)], batch_size=2))
{'check_resume': 'passed'}
>>> import pyarrow as pa
>>> check_subscriber(ListSink, pa.table({"x": [1, 2]}))
{'check_subscriber_api': 'passed'}
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

from runtime.entities.kind import EntityKind
from runtime.testing.checks_io import check_idempotent, check_resume, check_subscriber_api
from runtime.testing.checks_kinds import (
    Case,
    check_batch_independence,
    check_definition,
    check_handlers,
    check_on_event_matches_apply,
    check_restore,
    defines_both,
)

Check = Callable[..., None]


def is_kind(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, EntityKind)


def is_source(obj: Any) -> bool:
    return callable(getattr(obj, "batches", None))


def yield_checks(obj: Any) -> Iterator[Check]:
    """The checks that apply to ``obj``: an entity kind (the class), a source or a
    subscriber/sink (an instance).

    >>> from runtime.testing import Tally, ListSink
    >>> [c.__name__ for c in yield_checks(Tally)]
    ['check_definition', 'check_restore', 'check_batch_independence']
    >>> [c.__name__ for c in yield_checks(ListSink())]
    ['check_subscriber_api']
    """
    if is_kind(obj):
        yield from (check_definition, check_restore, check_batch_independence)
        if defines_both(obj):
            yield check_on_event_matches_apply
        if obj.handlers():
            yield check_handlers
    elif is_source(obj):
        yield check_resume
    else:
        yield check_subscriber_api
        if getattr(obj, "key", None):  # unkeyed sinks are at-least-once by design
            yield check_idempotent


def exemption(obj: Any, check: Check) -> str | None:
    """Why ``obj`` is exempt from ``check`` (its ``contract_exempt``), or None."""
    cls = obj if isinstance(obj, type) else type(obj)
    return dict(getattr(cls, "contract_exempt", {})).get(check.__name__)


def run_checks(obj: Any, *args: Any) -> dict[str, str]:
    """Run every check of ``obj`` with ``args``; returns each check's outcome."""
    report = {}
    for check in yield_checks(obj):
        why = exemption(obj, check)
        if why:
            report[check.__name__] = f"exempt: {why}"
            continue
        check(*args)
        report[check.__name__] = "passed"
    return report


def check_kind(
    kind_cls: type[EntityKind],
    events: pa.Table | list[dict[str, Any]],
    config: Any = None,
    watermark: int | None = None,
) -> dict[str, str]:
    """Run every kind check on ``kind_cls`` (with ``config``) over ``events``.

    ``watermark``: event time sent after the events, for kinds that fire on it (windows,
    joins). Give at least two entities' events, a few each: the checks cut them in halves
    and in small batches."""
    return run_checks(kind_cls, Case(kind_cls, events, config, watermark))


def _factory(obj: Any) -> tuple[Any, Callable[[], Any]]:
    """An instance to inspect and a maker of fresh ones (``obj`` is either)."""
    if isinstance(obj, type) or (callable(obj) and not is_source(obj) and not _has_io(obj)):
        return obj(), obj
    return obj, lambda: obj


def _has_io(obj: Any) -> bool:
    return callable(getattr(obj, "on_batch", None))


def check_source(source: Any) -> dict[str, str]:
    """Run the source checks. ``source``: a source, or a function making a fresh one (for
    sources that cannot be read twice)."""
    inst, make = _factory(source)
    return run_checks(inst, make)


def check_subscriber(subscriber: Any, rows: pa.Table) -> dict[str, str]:
    """Run the subscriber checks with ``rows`` as a topic would deliver them.
    ``subscriber``: a class or a function making a fresh instance (each check gets one)."""
    inst, make = _factory(subscriber)
    return run_checks(inst, make, rows)


def check_sink(
    sink: Any, rows: pa.Table, read: Callable[[Any], pa.Table] | None = None
) -> dict[str, str]:
    """Run the sink checks: the subscriber ones and, for a sink with a ``key``, that a
    redelivered batch is idempotent. ``read(sink)`` returns what it wrote (default: a
    table sink's LanceDB table). ``sink``: a class or a function making a fresh one."""
    inst, make = _factory(sink)
    report = {}
    for check in yield_checks(inst):
        why = exemption(inst, check)
        if why:
            report[check.__name__] = f"exempt: {why}"
        elif check is check_idempotent:
            check(make, rows, read)
            report[check.__name__] = "passed"
        else:
            check(make, rows)
            report[check.__name__] = "passed"
    return report


__all__ = [
    "check_batch_independence",
    "check_definition",
    "check_handlers",
    "check_idempotent",
    "check_kind",
    "check_on_event_matches_apply",
    "check_restore",
    "check_resume",
    "check_sink",
    "check_source",
    "check_subscriber",
    "check_subscriber_api",
    "exemption",
    "run_checks",
    "yield_checks",
]
