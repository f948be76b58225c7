"""Test-only fault injection: crash the process at a named point of the runtime.

Some crashes cannot be timed from outside: "between writing the table versions and the
``_checkpoints`` row" is a few milliseconds of a commit. The runtime marks such places
with :func:`fault_point`; setting ``EDGECORE_FAULT`` makes the process die there with
``os._exit(137)`` (what a SIGKILL looks like to the parent: no cleanup, no flush, no
atexit), as FoundationDB's buggify or CockroachDB's testing knobs do.

    EDGECORE_FAULT=commit:after_tables      # the first time a commit gets there
    EDGECORE_FAULT=commit:after_tables@3    # the third time (counted in this process)

Points: ``commit:after_tables`` (runtime.coordinator.checkpoint: every table of the cut
written, the ``_checkpoints`` row not yet). Never set it in production: it exists for
``scripts/chaos.py`` and the tests. Unset, it costs nothing: the runtime reads the
variable once, at import, and does not import this module.

>>> armed("commit:after_tables@3, other")
{'commit:after_tables': 3, 'other': 1}
>>> armed("")
{}
"""

from __future__ import annotations

import os
import sys

ENV = "EDGECORE_FAULT"
#: how a process killed at a fault point exits (128 + SIGKILL)
EXIT_CODE = 137


def armed(spec: str | None = None) -> dict[str, int]:
    """The points ``spec`` (default: ``$EDGECORE_FAULT``) arms: name -> on which hit."""
    text = os.environ.get(ENV, "") if spec is None else spec
    out: dict[str, int] = {}
    for part in text.split(","):
        name, _, nth = part.strip().partition("@")
        if name:
            out[name] = int(nth) if nth.isdigit() and int(nth) > 0 else 1
    return out


_ARMED = armed()
_hits: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Die here (exit 137, nothing flushed) if ``name`` is armed and this is its hit."""
    if name not in _ARMED:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == _ARMED[name]:
        sys.stderr.write(f"edgecore: {ENV}: crashing at {name} (hit {_hits[name]})\n")
        sys.stderr.flush()
        os._exit(EXIT_CODE)
