"""Pub-sub: topics with offsets, partitions, retention and consumer groups (``topic``),
and a kind's output topics hosted inside its shards (``colocated``)."""
