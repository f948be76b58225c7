"""Testing helpers shipped with the runtime: in-memory sources and sinks, a fake clock and
small kinds (``fixtures``), and the contracts every kind, source and sink must meet
(``checks``)."""

from runtime.testing.checks import (
    check_kind,
    check_sink,
    check_source,
    check_subscriber,
    yield_checks,
)
from runtime.testing.fixtures import (
    EchoTally,
    FakeClock,
    ListSink,
    MemorySource,
    SiteTally,
    SlowSink,
    Tally,
    tally_app,
)

__all__ = [
    "EchoTally",
    "FakeClock",
    "ListSink",
    "MemorySource",
    "SiteTally",
    "SlowSink",
    "Tally",
    "check_kind",
    "check_sink",
    "check_source",
    "check_subscriber",
    "tally_app",
    "yield_checks",
]
