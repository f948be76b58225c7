"""edgecore runtime: the engine. Entity kinds hosted in shards, topics, a LanceDB store.

The public API is re-exported here; ``actors/`` builds the applications on it.
"""

import os as _os

_os.environ.setdefault("LANCE_LOG", "error")

from runtime.core import Runtime, RuntimeConfig  # noqa: E402
from runtime.entity import Batch, EntityKind, EntityRef, handler  # noqa: E402
from runtime.errors import (  # noqa: E402
    ActorFailedError,
    ConfigError,
    EdgecoreError,
    NotStartedError,
    SchemaError,
    StoreError,
    UnknownEntityError,
)
from runtime.pipeline import App, RunStats, run  # noqa: E402
from runtime.schema import Column, EventSchema  # noqa: E402
from runtime.sinks import TableSink  # noqa: E402
from runtime.sources import FileSource, IteratorSource, Source  # noqa: E402
from runtime.state import Field  # noqa: E402

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
