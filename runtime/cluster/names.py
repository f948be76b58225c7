"""Every runtime actor's name, defined once: built here, parsed here, nowhere else.

Ray names actors in a namespace; a command attached to a running runtime finds its
actors by these names, so building and reading them must never drift apart.

>>> shard("customers", 3)
'shard:customers:3'
>>> shard("devices", 0, site="eu-1")
'shard:devices:eu-1:0'
>>> parse_shard("shard:devices:eu-1:0")
ShardName(kind='devices', site='eu-1', index=0)
>>> parse_shard("shard:customers:3")
ShardName(kind='customers', site=None, index=3)
>>> role_of("sub:alerts->alerts"), role_of("shard:devices:eu-1:0"), role_of("driver")
('subscriber', 'shard', None)
>>> topic("alerts"), subscriber("alerts->alerts"), ingest_stage("fraud", "eu-1")
('topic:alerts', 'sub:alerts->alerts', 'stage:ingest:fraud:eu-1')
>>> receiver("devices", "eu-1"), role_of(receiver("devices", "eu-1"))
('stage:receiver:devices:eu-1', 'stage')
>>> host("core"), host("edge", "eu-1"), role_of(host("any"))
('host:core', 'host:edge:eu-1', 'host')
"""

from __future__ import annotations

from typing import NamedTuple

#: the status board every attached command reads
BOARD = "runtime:status"
SHARD_PREFIX = "shard:"
TOPIC_PREFIX = "topic:"
SUBSCRIBER_PREFIX = "sub:"
STAGE_PREFIX = "stage:"
#: a process hosting several light actors (runtime.cluster.host)
HOST_PREFIX = "host:"


class ShardName(NamedTuple):
    kind: str
    site: str | None
    index: int


def shard(kind: str, index: int, site: str | None = None) -> str:
    """The shard ``index`` of ``kind`` (of ``site``'s shards, for a site-partitioned kind)."""
    return f"{SHARD_PREFIX}{kind}:{site}:{index}" if site else f"{SHARD_PREFIX}{kind}:{index}"


def shards_of(kind: str) -> str:
    """The prefix every shard name of ``kind`` starts with."""
    return f"{SHARD_PREFIX}{kind}:"


def parse_shard(name: str) -> ShardName:
    """What :func:`shard` built (kind and site names have no ``:``)."""
    parts = name.split(":")
    if parts[0] + ":" != SHARD_PREFIX or len(parts) not in (3, 4) or not parts[-1].isdigit():
        raise ValueError(f"not a shard name: {name!r}")
    return ShardName(parts[1], parts[2] if len(parts) == 4 else None, int(parts[-1]))


def topic(name: str) -> str:
    """A topic's own actor (topics hosted in shards have none: see runtime.topics.colocated)."""
    return f"{TOPIC_PREFIX}{name}"


def subscriber(name: str) -> str:
    """A subscriber or sink actor."""
    return f"{SUBSCRIBER_PREFIX}{name}"


def ingest_stage(app: str, site: str) -> str:
    """An app's ingest stage at ``site`` (replay per site, or live HTTP/MQTT)."""
    return f"{STAGE_PREFIX}ingest:{app}:{site}"


def receiver(kind: str, site: str) -> str:
    """The core end of the links of ``kind``'s shards at ``site`` (runtime.edge.receiver)."""
    return f"{STAGE_PREFIX}receiver:{kind}:{site}"


def host(role: str, site: str | None = None) -> str:
    """The host of a placement's light actors (``any``: a cluster without role labels)."""
    return f"{HOST_PREFIX}{role}:{site}" if site else f"{HOST_PREFIX}{role}"


def role_of(name: str) -> str | None:
    """What the actor named ``name`` is (shard, topic, subscriber, stage, runtime), or None
    for a name this module did not build."""
    head, sep, _ = name.partition(":")
    if not sep:
        return None
    return {"sub": "subscriber"}.get(head, head)


def gate_id(app: str, site: str) -> str:
    """The id a live gate writes its accepted batches under (dead letters' ``source``)."""
    return f"live:{app}@{site}"
