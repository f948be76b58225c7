"""One exception base for the whole runtime, with specific subclasses.

Every message names the thing that failed (a step, an entity kind, a table) and,
where there is one, the fix. Ray's own errors are translated into these at the
single place that talks to Ray (:mod:`runtime.cluster.handles`).

>>> try:
...     raise UnknownEntityError("customers", "c42")
... except EdgecoreError as err:
...     print(err)
customer 'c42' is not known to kind 'customers': no event for it was applied and no profile is stored
"""

from __future__ import annotations


class EdgecoreError(Exception):
    """Base of every error edgecore raises on purpose."""


class ConfigError(EdgecoreError, ValueError):
    """A setting, a name or a definition is wrong; raised before anything runs."""


class SchemaError(EdgecoreError, ValueError):
    """Input as a whole does not fit the expected schema (e.g. a required column is absent).

    Single bad rows never raise: they go to ``dead_letters`` with a reason.
    """


class UnknownEntityError(EdgecoreError, KeyError):
    """An entity key has neither live state nor a stored profile."""

    def __init__(self, kind: str, key: str) -> None:
        singular = kind[:-1] if kind.endswith("s") else kind
        super().__init__(
            f"{singular} {key!r} is not known to kind {kind!r}: "
            "no event for it was applied and no profile is stored"
        )
        self.kind = kind
        self.key = key

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])

    def __reduce__(self) -> tuple:  # pickled (e.g. by Ray) with the arguments it was made from
        return (type(self), (self.kind, self.key))


class NotStartedError(EdgecoreError, RuntimeError):
    """An API that needs a running runtime was called without one."""


class ActorFailedError(EdgecoreError, RuntimeError):
    """A runtime actor (shard, topic, sink) died or raised; names the actor."""


class StoreError(EdgecoreError, RuntimeError):
    """LanceDB could not be read or written; names the table and the data folder."""


class ContractError(EdgecoreError, AssertionError):
    """A kind, source or sink breaks a contract of :mod:`runtime.testing.checks`; names it,
    the field or column that broke and the fix. An ``AssertionError`` too, so a failed
    check reads as a failed test."""


class SnapshotError(EdgecoreError, ValueError):
    """Saved state (a ``_snapshots`` row, a watermark in a checkpoint, a model) is not an
    edgecore snapshot of the expected kind and format version, or is corrupt: refused,
    never run. Names the row and says how to go on (see :mod:`runtime.state.snapshot`)."""


class EdgeLogError(EdgecoreError, RuntimeError):
    """An edge's forward log lacks or garbles entries a checkpoint relies on."""
