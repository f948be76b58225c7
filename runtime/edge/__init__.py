"""Store-and-forward between an edge site and the core.

What an edge shard forwards to a core kind goes through a durable log at the edge
(:mod:`runtime.edge.log`), is shipped in order by a sender in the shard
(:mod:`runtime.edge.link`) to a receiver per site at the core (:mod:`runtime.edge.receiver`),
and is applied once by the core's shards, which drop what they applied before
(:mod:`runtime.edge.inbox`). A checkpoint commits how far each edge logged and how far
each core shard applied; the log is trimmed only to what the core committed.
"""
