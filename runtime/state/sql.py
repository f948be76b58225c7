"""SQL over a data folder: every LanceDB table is a DuckDB view of the same name.

>>> import tempfile, pyarrow as pa
>>> from runtime.state.store import Store
>>> d = tempfile.mkdtemp()
>>> Store(d).upsert("people", pa.table({"id": ["a", "b"], "n": [1, 2]}), key="id")
>>> query(d, "SELECT count(*) AS n, max(n) AS top FROM people").to_pylist()
[{'n': 2, 'top': 2}]

The runtime's own tables are there before their first row, empty and with their schema:

>>> query(d, "SELECT count(*) AS n FROM dead_letters").to_pylist()
[{'n': 0}]
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from runtime.errors import ConfigError
from runtime.state.reader import FolderReader
from runtime.streams.schema import DEAD_LETTER_SCHEMA, DEAD_LETTERS

#: tables the runtime writes only once they have a row (``dead_letters``: see
#: ``runtime.coordinator.runtime.DEAD_LETTERS``), queryable before that as empty views
RUNTIME_TABLES = {DEAD_LETTERS: DEAD_LETTER_SCHEMA}
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def register(con: duckdb.DuckDBPyConnection, name: str, data: Any) -> None:
    """``name`` as a view of ``data`` (a table, or a dataset DuckDB scans lazily with
    columns and filters pushed down); replaces one of the same name, so a live table
    shadows the stored one."""
    con.register(f"__{name}", data)
    con.execute(f'CREATE OR REPLACE VIEW "{name}" AS SELECT * FROM "__{name}"')


def register_folder(
    con: duckdb.DuckDBPyConnection, data_dir: str | Path, skip: frozenset[str] = frozenset()
) -> None:
    """One view per table of the data folder (internal ones too), except those in ``skip``:
    each a Lance dataset scanned where the query reads it, not loaded first."""
    folder = FolderReader(data_dir)
    for name in folder.tables():
        if name not in skip:
            register(con, name, folder.dataset(name))
    for name, schema in RUNTIME_TABLES.items():
        if name not in skip and not folder.exists(name):
            register(con, name, schema.empty_table())


def register_parquet(con: duckdb.DuckDBPyConnection, parquet: dict[str, str]) -> list[str]:
    """A view per ``name -> path`` (a Parquet file, a folder of them, or a glob), Hive
    partitions read as columns; returns the folders and files to allow (see :func:`lock`)."""
    allowed: list[str] = []
    for name, where in parquet.items():
        if not NAME_RE.match(name):
            raise ConfigError(
                f"--parquet name {name!r} must be letters, digits and '_' (it names a view)"
            )
        path = Path(where).expanduser().absolute()
        if path.is_dir():
            allowed.append(f"{path}/")
            pattern = f"{path}/**/*.parquet"
        elif path.is_file():
            allowed.append(str(path))
            pattern = str(path)
        else:
            static = _glob_root(path)
            if static is None or not any(static.glob(str(path.relative_to(static)))):
                raise ConfigError(
                    f"--parquet {name}: no Parquet file, folder or glob match at {where}"
                )
            allowed.append(f"{static}/")
            pattern = str(path)
        lit = pattern.replace("'", "''")
        try:
            con.execute(
                f'CREATE OR REPLACE VIEW "{name}" AS SELECT * FROM '
                f"read_parquet('{lit}', hive_partitioning=true, union_by_name=true)"
            )
        except duckdb.Error as err:  # no Parquet there, or not Parquet
            why = " ".join(str(err).splitlines()[0].split())
            raise ConfigError(f"--parquet {name}: cannot read {where}: {why}") from err
    return allowed


def _glob_root(path: Path) -> Path | None:
    """The folder above the first wildcard of ``path``; None if it has none."""
    wild = [i for i, part in enumerate(path.parts) if any(c in part for c in "*?[")]
    return Path(*path.parts[: wild[0]]) if wild else None


def lock(con: duckdb.DuckDBPyConnection, allowed: list[str]) -> None:
    """From now on the SQL reads the registered views and the ``allowed`` paths only: no
    other file is read or written (COPY TO, read_csv('/etc/passwd'), ATTACH, INSTALL are
    refused), and the settings cannot be changed back."""
    dirs = [a for a in allowed if a.endswith("/")]
    files = [a for a in allowed if not a.endswith("/")]
    if dirs:
        con.execute("SET allowed_directories = ?", [dirs])
    if files:
        con.execute("SET allowed_paths = ?", [files])
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def connect(
    data_dir: str | Path | None,
    parquet: dict[str, str] | None = None,
    live: dict[str, pa.Table] | None = None,
) -> duckdb.DuckDBPyConnection:
    """A locked DuckDB connection: a view per table of the data folder (if given), per
    ``live`` table (shadowing the stored one of its name) and per ``parquet`` path."""
    con = duckdb.connect()
    try:
        live = live or {}
        if data_dir is not None:
            register_folder(con, data_dir, skip=frozenset(live))
        for name, table in live.items():
            register(con, name, table)
        allowed = register_parquet(con, parquet or {})
        lock(con, allowed)
    except BaseException:
        con.close()
        raise
    return con


def tables_of(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The views a query can name."""
    views = con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()
    return sorted(r[0] for r in views if not r[0].startswith("__"))


def run(con: duckdb.DuckDBPyConnection, sql: str, where: str) -> pa.Table:
    """``sql`` on ``con``; a failure is one ConfigError line naming the tables (``where``:
    what they are the tables of, for the message)."""
    try:
        rel = con.sql(sql)
        return rel.to_arrow_table() if rel is not None else pa.table({})
    except duckdb.Error as err:
        # one line: DuckDB's message comes with a caret diagram under the query
        why = " ".join(str(err).splitlines()[0].split())
        raise ConfigError(f"SQL failed: {why}; tables {where}: {tables_of(con)}") from err


def query(data_dir: str | Path, sql: str, parquet: dict[str, str] | None = None) -> pa.Table:
    """``sql`` over the data folder's tables (and ``parquet`` views), read-only."""
    con = connect(data_dir, parquet)
    try:
        return run(con, sql, f"in {data_dir}")
    finally:
        con.close()
