"""The ``edgecore`` command line: run the demo, replay files, look at entities, query with SQL.

The commands live by concern in :mod:`runtime.cli.run` (demo, replay, run),
:mod:`runtime.cli.inspect` (entity, sql, status), :mod:`runtime.cli.tail`, :mod:`runtime.cli.serve`,
:mod:`runtime.cli.console` and
:mod:`runtime.cli.model` (the model registry);
importing them registers them on the one typer ``app`` of :mod:`runtime.cli.common`.
``main`` is the ``edgecore`` entry point.
"""

from __future__ import annotations

import importlib

from runtime.cli.common import app, main

for _module in (
    "run",
    "inspect",
    "tail",
    "serve",
    "console",
    "model",
):  # registers their commands, in --help's order
    importlib.import_module(f"runtime.cli.{_module}")

from runtime.cli.serve import serve_shards  # noqa: E402

__all__ = ["app", "main", "serve_shards"]

if __name__ == "__main__":  # pragma: no cover
    main()
