"""The core side of a link: each core shard applies every forwarded entry once.

A batch that crossed a link carries its source (the edge shard and topic) and its
sequence number in its schema metadata. A shard keeps, per source, the highest sequence
number it applied (committed with each checkpoint). Every source's entries reach a
shard in order from one caller at a time, each caller's run complete from some point at
or before the first entry the shard lacks (the sender resends from its last
acknowledgement), so "not above the highest applied" is exactly "applied before".

>>> import pyarrow as pa
>>> inbox = Inbox()
>>> batch = link_tag(pa.table({"x": [1]}), "shard:e:eu-1:0>out", 3)
>>> inbox.duplicate(batch)
False
>>> inbox.applied(batch); inbox.duplicate(batch)
True
>>> inbox.mark("shard:e:eu-1:0>out", 5); inbox.acks
{'shard:e:eu-1:0>out': 5}
>>> inbox.duplicate(pa.table({"x": [1]}))  # not from a link
False
"""

from __future__ import annotations

import pyarrow as pa

SOURCE = b"edgecore.link_source"
SEQ = b"edgecore.link_seq"


def link_tag(table: pa.Table, source: str, seq: int) -> pa.Table:
    """Stamp ``table`` with the link entry it came from (kept by Router.send's tags)."""
    meta = dict(table.schema.metadata or {})
    meta[SOURCE], meta[SEQ] = source.encode(), str(int(seq)).encode()
    return table.replace_schema_metadata(meta)


def read_link_tag(table: pa.Table) -> tuple[str, int] | None:
    meta = table.schema.metadata or {}
    if SOURCE not in meta:
        return None
    return meta[SOURCE].decode(), int(meta[SEQ])


class Inbox:
    """Highest applied sequence number per link source, for one core shard."""

    def __init__(self, acks: dict[str, int] | None = None) -> None:
        self.acks: dict[str, int] = dict(acks or {})

    def duplicate(self, events: pa.Table) -> bool:
        """Was this entry's part applied here before?"""
        tag = read_link_tag(events)
        return tag is not None and tag[1] <= self.acks.get(tag[0], 0)

    def applied(self, events: pa.Table) -> None:
        """Record a tagged batch once it is applied (after, so a batch that failed to
        apply is applied when it comes again)."""
        tag = read_link_tag(events)
        if tag is not None:
            self.mark(*tag)

    def mark(self, source: str, seq: int) -> None:
        """Every entry of ``source`` up to ``seq`` is applied (the receiver delivered them
        whole, to every shard)."""
        if seq > self.acks.get(source, 0):
            self.acks[source] = seq
