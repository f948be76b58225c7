"""The runtime's settings: only settings; live state is rebuilt from the data folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runtime.errors import ConfigError


@dataclass(frozen=True)
class RuntimeConfig:
    """Settings only; live state is rebuilt from the data folder when the runtime starts."""

    data_dir: str = "./edgecore-data"
    #: None: start an embedded local Ray; "auto" or "ray://..."/"host:port": attach
    address: str | None = None
    #: "ray" (actors in Ray) or "local" (in-process, for tests and debugging)
    mode: str = "ray"
    #: shards per entity kind; default: the number of CPUs
    shards: int | None = None
    #: memory for entity state per shard; the least recently used are passivated beyond it
    shard_memory_mb: float = 1024.0
    #: or a budget in entities per shard (overrides shard_memory_mb)
    max_active: int | None = None
    #: passivate entities not touched for this long (None: only when over budget)
    idle_seconds: float | None = 3600.0
    #: batches in flight per shard; bounds memory when a shard is slower than its source
    max_inflight: int = 2
    #: checkpoint after this many accepted events, or this many seconds
    checkpoint_rows: int = 2_000_000
    checkpoint_seconds: float = 30.0
    #: merge kind-wide state across shards (e.g. average model replicas) this often
    sync_rows: int = 250_000
    #: compact tables and drop old versions every N checkpoints
    compact_every: int = 5
    #: how many applied event ids are remembered for deduplication
    dedup_capacity: int = 50_000_000
    topic_retention_rows: int = 1_000_000
    topic_retention_bytes: int | None = 256 * 2**20
    topic_retention_seconds: float | None = 24 * 3600.0
    #: keep topics' rows on disk (``<data_dir>/_topics``), written with each checkpoint,
    #: so a restart keeps them (the retention limits above apply on disk); False: in
    #: memory only, a restart keeps offsets and consumer groups but not the rows
    topic_log: bool = True
    #: topics split into partitions: name -> (partitions, key column or None for round-robin)
    topic_partitions: dict[str, tuple[int, str | None]] = field(default_factory=dict)
    num_cpus: int | None = None
    #: where each actor runs (default: device work at the edge, the rest at the core)
    policy: Any = None
    #: analytics exports: Hive-partitioned Parquet of the input events, the output topics
    #: and the profiles of each checkpoint (see runtime.streams.export); None: none
    export_dir: str | None = None
    #: restarts from the last checkpoint after actor failures before a run gives up
    max_restarts: int = 3
    #: what an edge kind (partitioned by site) forwards to a core kind goes through a
    #: durable log at the edge and a receiver at the core (runtime.edge): the edge goes
    #: on while the core is out of reach; False: shard to shard, as between core kinds
    store_forward: bool = True
    #: bytes an edge link holds for the core before the edge's intake waits for room
    edge_buffer_bytes: int = 256 * 2**20
    #: a call to the core's receiver not answered within this counts as the link down
    link_timeout_s: float = 10.0
    #: at the end of a run, wait this long for the links to deliver what they hold
    link_settle_s: float = 120.0

    def __post_init__(self) -> None:
        if self.mode not in ("ray", "local"):
            raise ConfigError(f"mode must be 'ray' or 'local', not {self.mode!r}")
        if self.shards is not None and not 1 <= self.shards <= 65_535:
            raise ConfigError(f"shards must be between 1 and 65535, not {self.shards}")

    @property
    def retention(self) -> tuple[int, int | None, float | None]:
        """A topic's retention: rows, bytes, seconds."""
        return (
            self.topic_retention_rows,
            self.topic_retention_bytes,
            self.topic_retention_seconds,
        )
