"""A kind's feedback input: rows that come on their own stream and join what a kind keeps.

Labels are the example: a chargeback names a transaction hours or days after it was
scored. They are validated against the kind's :attr:`~runtime.entities.kind.EntityKind.feedback`
schema (bad rows become dead letters with the reason, step ``feedback``), routed by the
kind's key and handed to ``on_feedback`` in the shard holding the entity.

:class:`FeedbackFeeder` reads them from a file or any source beside the events
(``edgecore replay --labels FILE``); its position is committed with every checkpoint like
an event source's, and what came after the last checkpoint comes again after a restart
(the kind drops a label it already joined). Their counts are run counters
(``feedback_in``, ``feedback_accepted``, ``feedback_dead_lettered``), apart from the events'.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.dataflow.driver import SourceFeeder, Tick
from runtime.errors import ConfigError
from runtime.streams.sources import Source

if TYPE_CHECKING:
    from runtime.coordinator.runtime import Runtime
    from runtime.dataflow.app import App
    from runtime.entities.kind import EntityKind


class FeedbackFeeder(SourceFeeder):
    """A feedback source (a labels file) read beside the events, for
    :func:`~runtime.dataflow.driver.drive`: a :class:`SourceFeeder` whose rows go to the
    kind's feedback input instead of its events."""

    def __init__(self, source: Source, kind: type[EntityKind] | None = None) -> None:
        super().__init__(source)
        self.kind = kind
        self.id = f"feedback:{source.id}"

    def open(self, rt: Runtime, app: App) -> None:
        self.kind = self.kind or app.kind
        if self.kind.feedback is None:
            raise ConfigError(
                f"app {app.name!r}: its kind {self.kind.name!r} takes no labels or other "
                "feedback input; drop the feedback source"
            )
        super().open(rt, app)

    def step(self, wait: float) -> Tick:
        if self._stopped:
            return Tick(done=True)
        try:
            batch, end = next(self._batches)
        except StopIteration:
            return Tick(done=True)
        assert self.kind is not None
        counts = self.rt.feedback(
            self.kind.name, batch, source=self.source.id, position=self.position, wait=False
        )
        self.position = end
        return Tick(shard_stats=[counts, *self.rt.routing.poll()])
