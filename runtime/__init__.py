"""edgecore runtime: the engine. Entity kinds hosted in shards, topics, a LanceDB store.

Everything a user needs is named here, and nothing else: what is not in ``__all__`` (the
modules of the subpackages: coordinator, entities, topics, ingest, ...) is internal and
may change between versions. Contract checks and test helpers are in
:mod:`runtime.testing`.

The names are loaded on first use: a topic or sink actor imports only what it needs, so
starting one does not pay for LanceDB, pandas and scikit-learn (seconds per process on a
small machine).

>>> import runtime
>>> sorted(set(runtime.__all__) - set(dir(runtime)))
[]
"""

from __future__ import annotations

import importlib
import os as _os
from typing import TYPE_CHECKING, Any

_os.environ.setdefault("LANCE_LOG", "error")
_os.environ.setdefault("LANCEDB_LOG", "error")

_EXPORTS = {
    # running it
    "Runtime": "runtime.coordinator.runtime",
    "RuntimeConfig": "runtime.coordinator.config",
    "App": "runtime.dataflow.app",
    "RunStats": "runtime.dataflow.app",
    "run": "runtime.dataflow.app",
    "setup": "runtime.dataflow.app",
    # entities
    "Batch": "runtime.entities.kind",
    "EntityKind": "runtime.entities.kind",
    "EntityRef": "runtime.entities.kind",
    "Field": "runtime.state.fields",
    "handler": "runtime.entities.kind",
    # the pipeline builder: steps, event time, windows, joins, lookups, sinks
    "Pipeline": "runtime.dataflow.builder",
    "Step": "runtime.dataflow.app",
    "Stage": "runtime.dataflow.app",
    "EventTime": "runtime.dataflow.app",
    "WindowSpec": "runtime.eventtime.windows",
    "entity_join": "runtime.operators.enrich",
    "TableLookup": "runtime.operators.enrich",
    # streams in and out
    "Column": "runtime.streams.schema",
    "EventSchema": "runtime.streams.schema",
    "Source": "runtime.streams.sources",
    "FileSource": "runtime.streams.sources",
    "IteratorSource": "runtime.streams.sources",
    "Paced": "runtime.streams.sources",
    "TableSink": "runtime.streams.sinks",
    "ParquetSink": "runtime.streams.sinks",
    "WebhookSink": "runtime.streams.sinks",
    "MemorySource": "runtime.testing.fixtures",
    "ListSink": "runtime.testing.fixtures",
    # where actors run
    "PlacementPolicy": "runtime.cluster.placement",
    "DefaultPolicy": "runtime.cluster.placement",
    "ActorSpec": "runtime.cluster.placement",
    "Placement": "runtime.cluster.placement",
    "LocalCluster": "runtime.cluster.local",
    # errors
    "EdgecoreError": "runtime.errors",
    "ActorFailedError": "runtime.errors",
    "ConfigError": "runtime.errors",
    "ContractError": "runtime.errors",
    "NotStartedError": "runtime.errors",
    "SchemaError": "runtime.errors",
    "StoreError": "runtime.errors",
    "UnknownEntityError": "runtime.errors",
}
__all__ = [
    "ActorFailedError",
    "ActorSpec",
    "App",
    "Batch",
    "Column",
    "ConfigError",
    "ContractError",
    "DefaultPolicy",
    "EdgecoreError",
    "EntityKind",
    "EntityRef",
    "EventSchema",
    "EventTime",
    "Field",
    "FileSource",
    "IteratorSource",
    "ListSink",
    "LocalCluster",
    "MemorySource",
    "NotStartedError",
    "Paced",
    "ParquetSink",
    "Pipeline",
    "Placement",
    "PlacementPolicy",
    "RunStats",
    "Runtime",
    "RuntimeConfig",
    "SchemaError",
    "Source",
    "Step",
    "StoreError",
    "TableLookup",
    "TableSink",
    "UnknownEntityError",
    "WebhookSink",
    "WindowSpec",
    "entity_join",
    "handler",
    "run",
    "setup",
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
    from runtime.cluster.local import LocalCluster
    from runtime.cluster.placement import ActorSpec, DefaultPolicy, Placement, PlacementPolicy
    from runtime.coordinator.config import RuntimeConfig
    from runtime.coordinator.runtime import Runtime
    from runtime.dataflow.app import App, EventTime, RunStats, Step, run, setup
    from runtime.dataflow.builder import Pipeline
    from runtime.entities.kind import Batch, EntityKind, EntityRef, handler
    from runtime.errors import (
        ActorFailedError,
        ConfigError,
        ContractError,
        EdgecoreError,
        NotStartedError,
        SchemaError,
        StoreError,
        UnknownEntityError,
    )
    from runtime.eventtime.windows import WindowSpec
    from runtime.operators.enrich import TableLookup, entity_join
    from runtime.state.fields import Field
    from runtime.streams.schema import Column, EventSchema
    from runtime.streams.sinks import ParquetSink, TableSink, WebhookSink
    from runtime.streams.sources import FileSource, IteratorSource, Paced, Source
    from runtime.testing.fixtures import ListSink, MemorySource
