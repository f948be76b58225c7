"""A data folder read without LanceDB's Python package, for the read-only commands.

Each table of a data folder is a Lance dataset, ``<name>.lance``; ``lance`` (pylance:
the format's own reader, which LanceDB is built on) opens it directly. Importing
``lancedb`` costs seconds (its namespace and cloud clients), ``lance`` a fraction of
that, so ``edgecore sql``, ``entity`` and ``status --data`` start fast. Reads see each
table's latest version, as :class:`~runtime.state.store.Store` reads do.

>>> import tempfile, pyarrow as pa
>>> from runtime.state.store import Store
>>> d = tempfile.mkdtemp()
>>> Store(d).upsert("people", pa.table({"id": ["a", "b"], "n": [1, 2]}), key="id")
>>> folder = FolderReader(d)
>>> folder.tables(), folder.read("people", where="n > 1").to_pylist()
(['people'], [{'id': 'b', 'n': 2}])
>>> folder.count_rows("people"), folder.last_checkpoint().epoch
(2, 0)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from runtime.errors import ConfigError, StoreError
from runtime.state.checkpoints import CHECKPOINTS, Checkpoint, latest_checkpoint

SUFFIX = ".lance"


def has_version(table_dir: Path) -> bool:
    """Whether a table's folder holds a table: Lance writes a new table's data files first
    and its first version's manifest last, so a process killed in between (a sink's first
    write cut off by kill -9) leaves a folder that LanceDB lists but cannot open. Such a
    folder holds no row anyone was promised; it is no table, and a write creates the
    table over it.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()) / "t.lance"
    >>> (d / "data").mkdir(parents=True)
    >>> has_version(d)
    False
    """
    try:
        return any(p.name.endswith(".manifest") for p in (table_dir / "_versions").iterdir())
    except OSError:
        return False


def table_names(folder: Path) -> list[str]:
    """The tables of a data folder: its ``<name>.lance`` folders that hold a version."""
    return sorted(
        p.name[: -len(SUFFIX)]
        for p in folder.iterdir()
        if p.name.endswith(SUFFIX) and has_version(p)
    )


class FolderReader:
    """The tables of a data folder, read-only."""

    def __init__(self, data_dir: str | Path) -> None:
        self.path = Path(data_dir)
        if not self.path.is_dir():
            raise ConfigError(
                f"no data folder at {self.path}: run `edgecore demo` or `edgecore replay` "
                "first, or pass --data"
            )
        self._open: dict[str, Any] = {}

    def tables(self) -> list[str]:
        return table_names(self.path)

    def exists(self, name: str) -> bool:
        return has_version(self.path / f"{name}{SUFFIX}")

    def dataset(self, name: str) -> Any:
        ds = self._open.get(name)
        if ds is None:
            import lance  # here: only the commands that read a table pay for it

            if not self.exists(name):
                raise StoreError(f"table {name!r} does not exist in {self.path}")
            try:
                ds = lance.dataset(str(self.path / f"{name}{SUFFIX}"))
            except (OSError, ValueError) as err:
                raise StoreError(f"table {name!r} in {self.path} is unreadable: {err}") from err
            self._open[name] = ds
        return ds

    def schema(self, name: str) -> pa.Schema:
        return self.dataset(name).schema

    def read(
        self, name: str, *, where: str | None = None, columns: list[str] | None = None
    ) -> pa.Table:
        """Rows of a table (all, or those matching the SQL predicate ``where``)."""
        return self.dataset(name).to_table(columns=columns, filter=where)

    def count_rows(self, name: str) -> int:
        return int(self.dataset(name).count_rows())

    def n_versions(self, name: str) -> int:
        return len(self.dataset(name).versions())

    def last_checkpoint(self) -> Checkpoint:
        if not self.exists(CHECKPOINTS):
            return Checkpoint()
        return latest_checkpoint(self.read(CHECKPOINTS))
