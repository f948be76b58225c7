"""LanceDB behind the in-memory state: batched upserts, point reads, atomic checkpoints.

LanceDB has no transaction across tables, but every write makes a new table
version and any version can be restored. A checkpoint therefore writes the state
tables first and then appends one row to ``_checkpoints`` naming the version of
each table and the source positions the state reflects; that single append is the
commit. Recovery restores every managed table to the version its last commit
names, so a crash in the middle of a checkpoint leaves no half-applied state.

>>> import tempfile, pyarrow as pa
>>> store = Store(tempfile.mkdtemp())
>>> store.upsert("people", pa.table({"id": ["a"], "n": [1]}), key="id")
>>> store.upsert("people", pa.table({"id": ["a", "b"], "n": [2, 3]}), key="id")
>>> sorted(store.read("people").to_pylist(), key=lambda r: r["id"])
[{'id': 'a', 'n': 2}, {'id': 'b', 'n': 3}]
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import shutil
import threading
import time
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from runtime.errors import StoreError
from runtime.state.checkpoints import (  # noqa: F401 - CHECKPOINTS is part of this API
    _CHECKPOINT_SCHEMA,
    CHECKPOINTS,
    Checkpoint,
    latest_checkpoint,
)
from runtime.state.reader import SUFFIX, has_version, table_names

#: LanceDB's caches, per process: its defaults (GiBs) let a process that writes a table
#: every few seconds grow by ~125 KB a write for as long as it runs (the soak's shards and
#: sinks: +180 MB in 10 minutes); bounded, a 1,500-upsert loop levels off at +105 MB
#: instead of climbing past +215 MB. The index cache holds vector and scalar indexes
#: (the recommend app's 1M-product IVF-PQ index needs ~100 MB of it).
INDEX_CACHE_MB = int(os.environ.get("EDGECORE_LANCE_INDEX_CACHE_MB", "256"))
METADATA_CACHE_MB = int(os.environ.get("EDGECORE_LANCE_METADATA_CACHE_MB", "32"))
#: the metadata cache of a store that only writes (a TableSink): it fills with every
#: version's manifest and fragments' metadata and is never read back; with the 32 MB
#: above, each sink's process climbed by ~3 MB every 50 writes up to that cap (the soak's
#: sinks: +26 MB in 10 minutes, in steps); 4 MB holds it at ~5 MB over 450 upserts to
#: 3.4M rows, its writes no slower (18.3 vs 17.8 ms)
WRITER_METADATA_CACHE_MB = int(os.environ.get("EDGECORE_LANCE_WRITER_METADATA_CACHE_MB", "4"))
#: the folder of the data folder holding the tables' create locks (see Store._creating)
LOCKS = "_locks"
_SESSIONS: dict[int, Any] = {}  # metadata cache MB -> the process's session of that size
_SESSIONS_LOCK = threading.Lock()  # a warm() thread and the caller may both ask at once
log = logging.getLogger(__name__)
#: background connects still running; joined at exit, also when a start failed before
#: its runtime could close the store (an import cut off by finalization can crash)
_WARMING: set[threading.Thread] = set()


@atexit.register
def _join_warming() -> None:
    for thread in list(_WARMING):
        thread.join(timeout=10.0)


def _session(metadata_cache_mb: int = METADATA_CACHE_MB) -> Any:
    """The process's LanceDB session with that metadata cache: bounded caches shared by
    every Store asking for the same size (a local run's driver hosts the sinks too)."""
    with _SESSIONS_LOCK:
        if metadata_cache_mb not in _SESSIONS:
            import lancedb

            _SESSIONS[metadata_cache_mb] = lancedb.Session(
                index_cache_size_bytes=INDEX_CACHE_MB << 20,
                metadata_cache_size_bytes=metadata_cache_mb << 20,
            )
        return _SESSIONS[metadata_cache_mb]


class Store:
    """A data folder of LanceDB tables. Safe to open from several processes for reading;
    the runtime's coordinator is the only writer of checkpointed tables."""

    def __init__(self, data_dir: str | Path, warm: bool = False, writer: bool = False) -> None:
        self.path = Path(data_dir)
        #: a store that only writes (a sink) keeps a small metadata cache
        self.metadata_cache_mb = WRITER_METADATA_CACHE_MB if writer else METADATA_CACHE_MB
        self._writer = writer
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot open the data folder {self.path}: {err}") from err
        self._db: Any = None
        self._connecting = threading.Lock()
        self._warming: threading.Thread | None = None
        self._tables: dict[str, Any] = {}
        self._keyed: set[str] = set()  # tables whose upsert key this Store has seen indexed
        if warm:
            self.warm()

    @property
    def db(self) -> Any:
        """The LanceDB connection, made on first use: importing LanceDB costs ~100 MB and
        ~1 s, and a process that only asks whether a table exists (a shard starting on
        a fresh folder) need not pay it. Imported here, not at the top, also because
        LanceDB loaded before Ray forks its services makes every fork warn."""
        with self._connecting:  # once, also when warm() is connecting in the background
            if self._db is None:
                import lancedb

                try:
                    self._db = lancedb.connect(
                        str(self.path), session=_session(self.metadata_cache_mb)
                    )
                except Exception as err:  # pragma: no cover - depends on the filesystem
                    raise StoreError(f"cannot open the data folder {self.path}: {err}") from err
        return self._db

    def warm(self) -> None:
        """Import LanceDB and connect in a background thread, now, so that the first write
        does not wait for it: the coordinator does this once Ray is up (LanceDB loaded
        before Ray forks its services makes each fork warn), and the import (~1 s of CPU)
        overlaps the seconds its actors take to start instead of stalling the first
        checkpoint of a run. An error is left for that first use to raise."""
        if self._warming is None and self._db is None:
            self._warming = threading.Thread(target=self._warm, name="store-warm", daemon=True)
            self._warming.start()
            _WARMING.add(self._warming)

    def _warm(self) -> None:
        with contextlib.suppress(Exception):
            _ = self.db
            if not self._writer:
                # reads go through pylance (``to_lance``), a second import of ~0.3 s that
                # otherwise ran at a replay's first checkpoint; a sink only writes
                import lance  # noqa: F401

    def forget_cached(self) -> None:
        """Start a new LanceDB session (empty caches) for this process's stores of this
        size, from this store's next call on. For after a compaction: it deletes the old
        versions' files, and what the caches hold of them (each version's manifest, each
        rebuilt key index) is never read again, but stays until the LRU's cap (32 MB of
        metadata, 256 MB of indexes). A checkpointing driver grew by ~0.25 MB a
        checkpoint so (+22 MB over a 20-minute soak, still climbing); the next write
        re-reads what it needs of the current version. Other stores sharing the old
        session keep it until they forget theirs."""
        with self._connecting, _SESSIONS_LOCK:
            _SESSIONS.pop(self.metadata_cache_mb, None)
            self._db = None
            self._tables.clear()

    def close(self) -> None:
        """Wait for a :meth:`warm` still importing (not cut off by the interpreter's exit)."""
        if self._warming is not None:
            self._warming.join(timeout=10.0)
            _WARMING.discard(self._warming)

    # -- tables --------------------------------------------------------------------------
    def tables(self) -> list[str]:
        """The tables of the folder, without a folder a create cut off left behind."""
        return table_names(self.path)

    def exists(self, name: str) -> bool:
        # a local table is the folder <name>.lance holding a version: no need to ask
        # LanceDB (which also lists a folder whose create was cut off, see `has_version`)
        return has_version(self.path / f"{name}{SUFFIX}")

    def table(self, name: str) -> Any:
        tbl = self._tables.get(name)
        if tbl is None:
            try:
                tbl = self.db.open_table(name)
            except Exception as err:
                raise StoreError(f"table {name!r} does not exist in {self.path}") from err
            self._tables[name] = tbl
        return tbl

    @contextlib.contextmanager
    def _creating(self, name: str) -> Iterator[None]:
        """Hold the table's create lock: Lance commits a second create of the same table as
        an overwrite of the first, dropping its rows without a word, so two writers' first
        writes to a table (two Stores, two processes) must not both create it. A lock
        file's ``flock`` is released by the kernel if its holder is killed."""
        locks = self.path / LOCKS
        locks.mkdir(exist_ok=True)
        with open(locks / f"{name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _create(self, name: str, data: pa.Table) -> bool:
        """Create the table from ``data``; False if another writer created it first (the
        caller then writes ``data`` into it)."""
        with self._creating(name):
            if has_version(self.path / f"{name}{SUFFIX}"):
                return False
            self._tables[name] = self.db.create_table(name, data, mode="create")
            return True

    def upsert(self, name: str, data: pa.Table, key: str | tuple[str, ...]) -> None:
        """Insert or replace rows by ``key`` (a column, or columns together) in one
        merge_insert (creates the table)."""
        if data.num_rows == 0:
            return
        try:
            if not self.exists(name) and self._create(name, data):
                self._index_key(name, key)
                return
            tbl = self.table(name)
            tbl.checkout_latest()
            self._index_key(name, key)
            keys = [key] if isinstance(key, str) else list(key)
            # a null key matches nothing and is inserted by a scan; a probe of the key's
            # index drops it without a word (lance 14), so such a batch is not probed
            probe = not any(data.column(k).null_count for k in keys)
            (
                tbl.merge_insert(keys)
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .use_index(probe)
                .execute(_conform(data, _evolve(tbl, data)))
            )
        except StoreError:
            raise
        except Exception as err:
            raise StoreError(f"upsert into {name!r} in {self.path} failed: {err}") from err

    def _index_key(self, name: str, key: str | tuple[str, ...]) -> None:
        """A BTREE index on an upsert's key, once per table: merge_insert then probes the
        index instead of hash-joining the whole table, so a write costs the same at 3M
        rows as at 30k (alerts, 7,500 rows a write: 29 ms at 3.4M rows, 188 ms and
        climbing without it). ``compact`` folds new rows into the index. Composite keys
        (model versions) stay unindexed: those tables are small."""
        if name in self._keyed:
            return
        tbl = self.table(name)
        self._keyed.add(name)  # tried once per table: the index is a speed-up, not a must
        if not isinstance(key, str) or not _btree_indexable(tbl.schema.field(key).type):
            return
        if any(list(ix.columns) == [key] for ix in tbl.list_indices()):
            return
        from lancedb.index import BTree

        try:
            tbl.create_index(key, config=BTree(), replace=False)
        except Exception as err:  # another writer indexing it now; the write goes on by scan
            log.warning("no index on %s.%s (%s); its upserts scan the table", name, key, err)

    def append(self, name: str, data: pa.Table) -> None:
        if data.num_rows == 0:
            return
        try:
            if self.exists(name) or not self._create(name, data):
                tbl = self.table(name)
                tbl.checkout_latest()
                tbl.add(_conform(data, _evolve(tbl, data)))
        except Exception as err:
            raise StoreError(f"append to {name!r} in {self.path} failed: {err}") from err

    def read(
        self, name: str, *, where: str | None = None, columns: list[str] | None = None
    ) -> pa.Table:
        """Rows of a table (all of them, or those matching the SQL predicate ``where``)."""
        if not self.exists(name):
            raise StoreError(f"table {name!r} does not exist in {self.path}")
        tbl = self.table(name)
        tbl.checkout_latest()
        if where is None:
            if columns:  # read only those (a key column of 10M rows: 80 MB, not 450)
                return tbl.to_lance().to_table(columns=columns)
            return tbl.to_arrow()
        q = tbl.search().where(where)
        if columns:
            q = q.select(columns)
        return q.limit(None).to_arrow()

    def has_column(self, name: str, column: str) -> bool:
        tbl = self.table(name)
        tbl.checkout_latest()
        return column in tbl.schema.names

    def read_matching(self, name: str, column: str, values: np.ndarray) -> pa.Table:
        """Rows whose int64 ``column`` is one of ``values``, in one streaming scan.

        For many values this is what ``read(where="column IN (...)")`` does 10x faster
        and without the SQL text: 500k of 2M rows in 0.3-0.4 s instead of 3.8 s (and
        peak memory of the rows found, not of the parsed list). Few values: use ``read``.

        >>> import tempfile
        >>> store = Store(tempfile.mkdtemp())
        >>> store.upsert("t", pa.table({"k": [5, 1, 9, 3], "v": ["a", "b", "c", "d"]}), key="k")
        >>> store.read_matching("t", "k", np.array([9, 3, 4])).sort_by("k").to_pylist()
        [{'k': 3, 'v': 'd'}, {'k': 9, 'v': 'c'}]
        """
        tbl = self.table(name)
        tbl.checkout_latest()
        ds = tbl.to_lance()
        want = np.unique(np.asarray(values, dtype=np.int64))
        parts = []
        if len(want):
            for rb in ds.to_batches(batch_size=1 << 18):
                col = rb.column(column).to_numpy(zero_copy_only=False)
                pos = np.minimum(np.searchsorted(want, col), len(want) - 1)
                hit = want[pos] == col
                if hit.any():
                    parts.append(rb.filter(pa.array(hit)))
        if not parts:
            return ds.schema.empty_table()
        return pa.Table.from_batches(parts)

    def version(self, name: str) -> int:
        tbl = self.table(name)
        tbl.checkout_latest()
        return int(tbl.version)

    def drop(self, name: str) -> None:
        with self._creating(name):  # not under a writer creating it now
            if self.exists(name):
                self.db.drop_table(name)
            else:  # a create cut off: its folder holds no version, only orphaned files
                shutil.rmtree(self.path / f"{name}{SUFFIX}", ignore_errors=True)
        self._tables.pop(name, None)
        self._keyed.discard(name)

    def compact(self, name: str, keep_newer_than: float, keep_version: int | None = None) -> None:
        """Merge small fragments; drop versions older than ``keep_newer_than`` (epoch s) but
        never ``keep_version`` (the one the last commit names, needed by recovery)."""
        tbl = self.table(name)
        tbl.checkout_latest()
        cutoff = keep_newer_than
        if keep_version is not None:
            for v in tbl.list_versions():
                if v["version"] == keep_version:
                    # (a naive datetime in local time, as .timestamp() reads it)
                    made = v["timestamp"].timestamp()
                    cutoff = min(cutoff, made - 0.05)  # list_versions and cleanup round differently
        age = max(0.0, time.time() - cutoff)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tbl.optimize(cleanup_older_than=timedelta(seconds=age), delete_unverified=True)

    def n_versions(self, name: str) -> int:
        return len(self.table(name).list_versions())

    # -- checkpoints ---------------------------------------------------------------------
    def last_checkpoint(self) -> Checkpoint:
        if not self.exists(CHECKPOINTS):
            return Checkpoint()
        return latest_checkpoint(self.read(CHECKPOINTS))

    def commit(self, cp: Checkpoint, keep: int = 3) -> None:
        """Record ``cp`` (the commit point), then trim the checkpoint log to ``keep`` rows."""
        row = pa.table(
            {
                "epoch": [cp.epoch],
                "started_at": [cp.started_at],
                "committed_at": [time.time()],
                "positions": [json.dumps(cp.positions)],
                "versions": [json.dumps(cp.versions)],
                "meta": [json.dumps(cp.meta)],
            },
            schema=_CHECKPOINT_SCHEMA,
        )
        self.append(CHECKPOINTS, row)
        tbl = self.table(CHECKPOINTS)
        tbl.delete(f"epoch <= {cp.epoch - keep}")

    def recover(self, managed: list[str]) -> Checkpoint:
        """Bring ``managed`` tables back to what the last commit names; return that commit.

        A table written after the commit is restored to the committed version; one
        created after it (not named by the commit) is dropped.
        """
        cp = self.last_checkpoint()
        for name in managed:
            if not self.exists(name):
                continue
            committed = cp.versions.get(name)
            if committed is None:
                self.drop(name)
            elif self.version(name) != committed:
                try:
                    self.table(name).restore(committed)
                    self._keyed.discard(name)  # that version may predate the key's index
                except Exception as err:
                    raise StoreError(
                        f"cannot restore {name!r} in {self.path} to committed version {committed}: {err}"
                    ) from err
        return cp


def _btree_indexable(t: pa.DataType) -> bool:
    """Key types a BTREE index takes (not large strings, binary, dictionaries, decimals)."""
    return bool(
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_string(t)
        or pa.types.is_timestamp(t)
        or pa.types.is_date(t)
    )


def _evolve(tbl: Any, data: pa.Table) -> pa.Schema:
    """The table's schema, widened first by columns ``data`` brings that it lacks (null in
    the rows written before): an app that adds an output column keeps its old tables."""
    extra = [f for f in data.schema if f.name not in tbl.schema.names]
    if extra:
        tbl.add_columns([pa.field(f.name, f.type, nullable=True) for f in extra])
        tbl.checkout_latest()
    return tbl.schema


def _conform(data: pa.Table, schema: pa.Schema) -> pa.Table:
    """Order and cast columns to an existing table's schema (extra columns are refused)."""
    extra = set(data.column_names) - set(schema.names)
    if extra:
        raise StoreError(f"columns {sorted(extra)} are not in the table schema {schema.names}")
    cols = []
    for f in schema:
        cols.append(
            data.column(f.name).cast(f.type)
            if f.name in data.column_names
            else pa.nulls(data.num_rows, f.type)
        )
    return pa.table(cols, schema=schema)
