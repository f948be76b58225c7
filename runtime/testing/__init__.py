"""Testing helpers shipped with the runtime: in-memory sources and sinks, a fake clock and
small kinds (``fixtures``), and the contracts every kind, source and sink must meet
(``checks``)."""

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
    "tally_app",
]
