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

from pathlib import Path

import duckdb
import pyarrow as pa

from runtime.errors import ConfigError
from runtime.state.store import Store
from runtime.streams.schema import DEAD_LETTER_SCHEMA, DEAD_LETTERS

#: tables the runtime writes only once they have a row (``dead_letters``: see
#: ``runtime.coordinator.runtime.DEAD_LETTERS``), queryable before that as empty views
RUNTIME_TABLES = {DEAD_LETTERS: DEAD_LETTER_SCHEMA}


def connect(data_dir: str | Path) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with one view per table of the data folder (internal ones too)."""
    path = Path(data_dir)
    if not path.is_dir():
        raise ConfigError(
            f"no data folder at {path}: run `edgecore demo` or `edgecore replay` first, or pass --data"
        )
    store = Store(path)
    con = duckdb.connect()
    for name in store.tables():
        # Arrow tables are scanned by DuckDB without a copy
        data = store.read(name)
        con.register(f"__{name}", data)
        con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM "__{name}"')
    for name, schema in RUNTIME_TABLES.items():
        if not store.exists(name):
            con.register(f"__{name}", schema.empty_table())
            con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM "__{name}"')
    return con


def query(data_dir: str | Path, sql: str) -> pa.Table:
    con = connect(data_dir)
    try:
        rel = con.sql(sql)
        return rel.to_arrow_table() if rel is not None else pa.table({})
    except duckdb.Error as err:
        views = con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()
        tables = [r[0] for r in views if not r[0].startswith("__")]
        # one line: DuckDB's message comes with a caret diagram under the query
        why = " ".join(str(err).splitlines()[0].split())
        raise ConfigError(f"SQL failed: {why}; tables in {data_dir}: {sorted(tables)}") from err
    finally:
        con.close()
