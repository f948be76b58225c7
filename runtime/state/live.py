"""SQL over the live entity state of a running runtime (``edgecore sql --address``).

Call from a process attached to the runtime (:func:`runtime.cluster.handles.attach`).
:func:`live_tables` asks every shard of every kind for its whole population
(:meth:`runtime.entities.shard.Shard.live_snapshot`): the entities in memory, the
passivated ones in its outbox, those a checkpoint drained but may not have written yet,
and the rest as LanceDB has them. Each table is named and shaped like the LanceDB table
a checkpoint writes (the kind's ``export`` columns, the site column of a site-partitioned
kind, ``_key_hash``), so a query runs unchanged over the live or the stored state.

Consistency, precisely: every shard answers in one call, and a shard runs one call at a
time, so each shard's part is atomic: taken between two batches, with every batch
applied before it in full and none after it. The calls to all shards are issued
together, but there is no global barrier: two shards may stand at different batch
boundaries (one may have applied a batch the other has not yet seen, e.g. a forward
between kinds in flight). The snapshot is not a checkpoint cut; it is exactly equal to
the checkpointed state when no events arrive between a checkpoint and the query.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa

from runtime.cluster import names
from runtime.cluster.handles import named_actors, resolve
from runtime.entities.clients import ShardClient
from runtime.errors import ConfigError
from runtime.state import sql as stored_sql


def kind_shards() -> dict[str, list[ShardClient]]:
    """Every shard of the running runtime by kind (all sites of a site-partitioned kind)."""
    out: dict[str, list[ShardClient]] = {}
    for actor, handle in sorted(named_actors(names.SHARD_PREFIX).items()):
        try:
            shard = names.parse_shard(actor)
        except ValueError:
            continue  # not a shard this version of the runtime named
        out.setdefault(shard.kind, []).append(ShardClient(handle))
    return out


def live_tables(kinds: list[str] | None = None) -> dict[str, pa.Table]:
    """Each entity kind's live state as one Arrow table, named like its LanceDB table.

    ``kinds``: table names (``customers``) or kind names (``customer``); None: every
    kind with state (operators such as windows have no entities and no table). Each
    shard's part is atomic; across shards, each part is at a batch boundary of its own
    (see the module docstring)."""
    by_kind = kind_shards()
    if kinds is not None:
        wanted = []
        for k in kinds:
            name = k if k in by_kind else f"{k}s"
            if name not in by_kind:
                raise ConfigError(
                    f"no entity kind {k!r} in the running runtime; kinds: {sorted(by_kind)}"
                )
            wanted.append(name)
        by_kind = {k: by_kind[k] for k in wanted}
    # every call goes out before any answer is awaited: the shards' cuts are close in time
    futures = [
        (kind, shard.live_snapshot()) for kind, shards in by_kind.items() for shard in shards
    ]
    states = resolve([f for _, f in futures])
    parts: dict[str, list[pa.Table]] = {}
    for (kind, _), state in zip(futures, states, strict=True):
        if state.table is not None:
            parts.setdefault(kind, []).append(state.table)
    return {
        kind: pa.concat_tables(tables, promote_options="default") for kind, tables in parts.items()
    }


def runtime_data_dir() -> Path | None:
    """The data folder of the running runtime, if this machine sees it (the status board
    says where it is)."""
    from runtime.cluster.status import read_board

    where = read_board().get("data")
    return Path(where) if where and Path(where).is_dir() else None


def live_connection(
    data_dir: str | Path | None = None, parquet: dict[str, str] | None = None
) -> Any:
    """A locked DuckDB connection (see :func:`runtime.state.sql.connect`) over the live
    tables, every other LanceDB table of ``data_dir`` and the ``parquet`` views."""
    return stored_sql.connect(data_dir, parquet, live=live_tables())


@contextmanager
def _closing(con: Any) -> Iterator[Any]:
    try:
        yield con
    finally:
        con.close()


def live_query(
    sql: str, data_dir: str | Path | None = None, parquet: dict[str, str] | None = None
) -> pa.Table:
    """``sql`` over the live state (each kind's table, shadowing the stored one), the other
    tables of ``data_dir`` (dead letters, vectors, ...) and ``name -> path`` Parquet views
    (a file, a folder or a glob; Hive partitions as columns). Read-only: no other file can
    be read or written. A failure is a one-line ConfigError naming the tables."""
    with _closing(live_connection(data_dir, parquet)) as con:
        return stored_sql.run(con, sql, _where(data_dir))


def _where(data_dir: str | Path | None) -> str:
    return "live" + (f" and in {data_dir}" if data_dir else "")


#: how a query names a topic of the running runtime for ``--live``: ``alerts_stream``
STREAM_RE = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*?)_stream\b")


def stream_topic(sql: str) -> str:
    """The one topic ``sql`` follows (``... FROM alerts_stream`` -> ``alerts``)."""
    topics = sorted(set(STREAM_RE.findall(sql)))
    if len(topics) != 1:
        raise ConfigError(
            "--live needs exactly one <topic>_stream table in the query (e.g. FROM "
            f"alerts_stream), found {[f'{t}_stream' for t in topics]}"
        )
    return topics[0]


def follow_query(
    sql: str,
    data_dir: str | Path | None = None,
    parquet: dict[str, str] | None = None,
    from_beginning: bool = False,
    idle_timeout: float = 0.0,
    poll_rows: int = 1_000,
) -> Iterator[pa.Table]:
    """A continuous query: ``sql`` over each batch of rows arriving on the topic it names
    as ``<topic>_stream``, one result per batch with rows (filters and projections are per
    row; aggregates and ORDER BY are per batch). The live tables are taken once, when it
    starts; the stored and Parquet views are there for joins too. Ends after
    ``idle_timeout`` seconds without rows (0: never; the caller stops it)."""
    from runtime.topics.follow import Follower

    topic = stream_topic(sql)
    follower = Follower(topic, from_beginning, prefix="sql")
    view = f"{topic}_stream"
    with _closing(live_connection(data_dir, parquet)) as con:
        last = time.monotonic()
        while True:
            rows = follower.poll(poll_rows)
            if rows.num_rows == 0:
                if idle_timeout and time.monotonic() - last > idle_timeout:
                    return
                time.sleep(0.2)
                continue
            last = time.monotonic()
            stored_sql.register(con, view, rows)
            result = stored_sql.run(con, sql, _where(data_dir))
            if result.num_rows:
                yield result
