"""What a shard answers about links (a mixin of :class:`~runtime.entities.shard.Shard`).

An edge shard's forwarded topics may be :class:`~runtime.edge.link.EdgeLink` s (its
``forwards``); every shard has an :class:`~runtime.edge.inbox.Inbox` for what reaches it
over a link. The runtime asks for the links' state, tells them what the core committed
(so their logs may forget it) and, at the end of a run, waits for them to empty.
"""

from __future__ import annotations

import threading
from typing import Any

from runtime.edge.inbox import Inbox
from runtime.edge.link import EdgeLink, LinkSpec
from runtime.entities.calls import serialized


def open_links(links: dict[str, LinkSpec] | None, channel: str, site: str | None) -> dict:
    """The :class:`EdgeLink` of each linked topic of the shard named ``channel``."""
    return {t: EdgeLink(spec, channel, site) for t, spec in (links or {}).items()}


class LinkCalls:
    """Shard methods for links: the edge side (its links) and the core side (its inbox)."""

    _lock: threading.RLock
    forwards: dict[str, Any]
    inbox: Inbox

    def _links(self) -> list[EdgeLink]:
        return [f for f in self.forwards.values() if isinstance(f, EdgeLink)]

    @serialized
    def link_mark(self, source: str, seq: int) -> None:
        """(core) Every entry of ``source`` up to ``seq`` is applied where it belongs."""
        self.inbox.mark(source, seq)

    def link_status(self) -> list[dict[str, Any]]:
        """(edge) Each link's state: up, buffered bytes and rows, sequence numbers."""
        return [link.status() for link in self._links()]

    def trim_links(self, upto: dict[str, int]) -> None:
        """(edge) The core committed each source's entries up to ``upto[source]``."""
        for link in self._links():
            if link.source in upto:
                link.trim(upto[link.source])

    def settle_links(self, timeout_s: float) -> int:
        """(edge) Wait until the core answered for everything logged (at most
        ``timeout_s``); the entries still waiting."""
        return sum(link.settle(timeout_s) for link in self._links())

    def close_links(self) -> None:
        """Stop the senders and close the logs (an in-process shard going away)."""
        for link in self._links():
            link.close()

    def link_cut(self) -> dict[str, Any] | None:
        """What a checkpoint commits of the links: per source the last entry logged
        (edge), and per source the last entry applied here (core)."""
        sent = {link.source: link.log.last for link in self._links()}
        if not sent and not self.inbox.acks:
            return None
        return {"sent": sent, "acks": dict(self.inbox.acks)}
