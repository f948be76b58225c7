"""Entities: the kinds users define (``kind``), the shard actors that host many entities
each (``shard``) and the router that sends each batch to its shards (``router``)."""
