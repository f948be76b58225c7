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
    "Runtime": "runtime.coordinator.runtime",
    "RuntimeConfig": "runtime.coordinator.runtime",
    "Batch": "runtime.entities.kind",
    "EntityKind": "runtime.entities.kind",
    "EntityRef": "runtime.entities.kind",
    "handler": "runtime.entities.kind",
    "ActorFailedError": "runtime.errors",
    "ConfigError": "runtime.errors",
    "EdgecoreError": "runtime.errors",
    "NotStartedError": "runtime.errors",
    "SchemaError": "runtime.errors",
    "StoreError": "runtime.errors",
    "UnknownEntityError": "runtime.errors",
    "App": "runtime.dataflow.app",
    "RunStats": "runtime.dataflow.app",
    "run": "runtime.dataflow.app",
    "Column": "runtime.streams.schema",
    "EventSchema": "runtime.streams.schema",
    "TableSink": "runtime.streams.sinks",
    "FileSource": "runtime.streams.sources",
    "IteratorSource": "runtime.streams.sources",
    "Paced": "runtime.streams.sources",
    "Source": "runtime.streams.sources",
    "Field": "runtime.state.fields",
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
    from runtime.coordinator.runtime import Runtime, RuntimeConfig
    from runtime.dataflow.app import App, RunStats, run
    from runtime.entities.kind import Batch, EntityKind, EntityRef, handler
    from runtime.errors import (
        ActorFailedError,
        ConfigError,
        EdgecoreError,
        NotStartedError,
        SchemaError,
        StoreError,
        UnknownEntityError,
    )
    from runtime.state.fields import Field
    from runtime.streams.schema import Column, EventSchema
    from runtime.streams.sinks import TableSink
    from runtime.streams.sources import FileSource, IteratorSource, Paced, Source
