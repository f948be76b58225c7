"""edgecore runtime: the engine. Entity kinds hosted in shards, topics, a LanceDB store.

The public API is re-exported here, loaded on first use: a topic or sink actor
imports only what it needs, so starting one does not pay for LanceDB, pandas and
scikit-learn (seconds per process on a small machine).
"""

from __future__ import annotations

import importlib
import os as _os
from typing import TYPE_CHECKING, Any

_os.environ.setdefault("LANCE_LOG", "error")
_os.environ.setdefault("LANCEDB_LOG", "error")

_EXPORTS = {
    "Runtime": "runtime.core",
    "RuntimeConfig": "runtime.core",
    "Batch": "runtime.entity",
    "EntityKind": "runtime.entity",
    "EntityRef": "runtime.entity",
    "handler": "runtime.entity",
    "ActorFailedError": "runtime.errors",
    "ConfigError": "runtime.errors",
    "EdgecoreError": "runtime.errors",
    "NotStartedError": "runtime.errors",
    "SchemaError": "runtime.errors",
    "StoreError": "runtime.errors",
    "UnknownEntityError": "runtime.errors",
    "App": "runtime.pipeline",
    "RunStats": "runtime.pipeline",
    "run": "runtime.pipeline",
    "Column": "runtime.schema",
    "EventSchema": "runtime.schema",
    "TableSink": "runtime.sinks",
    "FileSource": "runtime.sources",
    "IteratorSource": "runtime.sources",
    "Paced": "runtime.sources",
    "Source": "runtime.sources",
    "Field": "runtime.state",
}
__all__ = [
    "ActorFailedError",
    "App",
    "Batch",
    "Column",
    "ConfigError",
    "EdgecoreError",
    "EntityKind",
    "EntityRef",
    "EventSchema",
    "Field",
    "FileSource",
    "IteratorSource",
    "NotStartedError",
    "Paced",
    "RunStats",
    "Runtime",
    "RuntimeConfig",
    "SchemaError",
    "Source",
    "StoreError",
    "TableSink",
    "UnknownEntityError",
    "handler",
    "run",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover
    from runtime.core import Runtime, RuntimeConfig
    from runtime.entity import Batch, EntityKind, EntityRef, handler
    from runtime.errors import (
        ActorFailedError,
        ConfigError,
        EdgecoreError,
        NotStartedError,
        SchemaError,
        StoreError,
        UnknownEntityError,
    )
    from runtime.pipeline import App, RunStats, run
    from runtime.schema import Column, EventSchema
    from runtime.sinks import TableSink
    from runtime.sources import FileSource, IteratorSource, Paced, Source
    from runtime.state import Field
