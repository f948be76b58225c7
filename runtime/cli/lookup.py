"""Read-side helpers for the CLI: one entity (live or stored) and a data folder's status."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from runtime.cluster import names
from runtime.cluster.handles import attach, named_actors, resolve
from runtime.entities.clients import ShardClient
from runtime.errors import ConfigError, UnknownEntityError
from runtime.state.keys import hash_keys, shard_of
from runtime.state.reader import FolderReader


def _table_for(folder: FolderReader, kind: str) -> str:
    for name in (kind, f"{kind}s"):
        if folder.exists(name) and not name.startswith("_"):
            return name
    kinds = [t for t in folder.tables() if not t.startswith("_")]
    raise ConfigError(f"no entity kind {kind!r} in {folder.path}; tables there: {kinds}")


def stored_entity(data_dir: str | Path, kind: str, key: str) -> dict[str, Any]:
    """The stored profile of ``key``; the table's first column is the entity key."""
    if not Path(data_dir).is_dir():
        raise ConfigError(
            f"no data folder at {data_dir}: pass --data, or run `edgecore demo` first"
        )
    folder = FolderReader(data_dir)
    name = _table_for(folder, kind)
    h = int(hash_keys(pa.array([key])).view("int64")[0])
    rows = folder.read(name, where=f"_key_hash = {h}")
    key_col = folder.schema(name).names[0]
    rows = rows.filter(pa.compute.equal(rows[key_col], key))
    if rows.num_rows == 0:
        raise UnknownEntityError(name, key)
    row = rows.drop_columns(["_key_hash"]).to_pylist()[0]
    return row


def live_entity(address: str, kind: str, key: str) -> dict[str, Any] | None:
    """Ask the shard hosting ``key`` in a running runtime; None if no runtime hosts ``kind``.

    A site-partitioned kind has a set of shards per site (``shard:{kind}:{site}:{i}``) and
    the key lives at one site: the shard its hash picks is asked at every site at once,
    and the one that knows it answers (the others raise UnknownEntityError: not here).
    """
    attach(address, hard=True)
    return shard_entity(kind, key)


def shard_entity(kind: str, key: str) -> dict[str, Any] | None:
    """:func:`live_entity` in a process attached to the runtime already (the console)."""
    for name in (kind, f"{kind}s"):
        by_site: dict[str | None, dict[int, ShardClient]] = {}
        for actor, handle in named_actors(names.shards_of(name)).items():
            shard = names.parse_shard(actor)
            by_site.setdefault(shard.site, {})[shard.index] = ShardClient(handle)
        if not by_site:
            continue
        h = hash_keys(pa.array([key]))
        asked = {
            site: shards[int(shard_of(h, len(shards))[0])].get(key)
            for site, shards in sorted(by_site.items(), key=lambda kv: kv[0] or "")
        }
        if None in asked:  # not partitioned by site: its one shard knows, or raises
            return resolve([asked[None]])[0]
        for future in asked.values():
            try:
                return resolve([future])[0]
            except UnknownEntityError:
                continue  # not at this site
        err = UnknownEntityError(name, key)
        err.args = (f"{err.args[0]} at any of its sites ({', '.join(map(str, asked))})",)
        raise err
    return None


def folder_status(data_dir: str | Path) -> dict[str, Any]:
    if not Path(data_dir).is_dir():
        raise ConfigError(f"no data folder at {data_dir}")
    folder = FolderReader(data_dir)
    cp = folder.last_checkpoint()
    tables = [
        {"name": n, "rows": folder.count_rows(n), "versions": folder.n_versions(n)}
        for n in folder.tables()
    ]
    return {
        "data": str(Path(data_dir).resolve()),
        "tables": tables,
        "checkpoint": {"epoch": cp.epoch, "positions": cp.positions, "versions": cp.versions},
    }
