"""Where each runtime actor runs: a policy decides role and site, Ray's scheduler enforces it.

Nodes advertise Ray node labels ``role`` (``edge``, ``core``, or ``hybrid`` for a node
that plays both, like the embedded default) and ``site`` (e.g. ``eu-1``). A
:class:`PlacementPolicy` maps every actor the runtime starts (entity shards, pipeline
stages, topics, sinks, models) to a :class:`Placement`; :func:`selector` turns it into
a Ray label selector against the nodes alive now, falling back from a missing site to
another node of the same role elsewhere only for the core, and from a missing edge
site to the core: work never waits for a node that is not there.

>>> policy = DefaultPolicy(overrides={"alerts": Placement("edge", "eu-1")})
>>> policy.place(ActorSpec("shard:devices:eu-2:0", "shard", "devices", site="eu-2"))
Placement(role='edge', site='eu-2')
>>> policy.place(ActorSpec("shard:machines:eu-1:0", "shard", "machines", site="eu-1"))
Placement(role='edge', site='eu-1')
>>> policy.place(ActorSpec("shard:customers:0", "shard", "customers"))
Placement(role='core', site=None)
>>> policy.place(ActorSpec("topic:alerts", "topic", "alerts"))
Placement(role='edge', site='eu-1')
>>> nodes = [{"role": "core", "site": "core"}, {"role": "edge", "site": "eu-1"}]
>>> selector(Placement("edge", "eu-1"), nodes)
({'role': 'in(edge,hybrid)', 'site': 'eu-1'}, Placement(role='edge', site='eu-1'))
>>> selector(Placement("edge", "eu-9"), nodes)   # no node at eu-9: the core takes it
({'role': 'in(core,hybrid)'}, Placement(role='core', site=None))
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from runtime.errors import ConfigError

ROLES = ("edge", "core")
HYBRID = "hybrid"  # a node that plays both roles (the embedded single node)
ACTOR_KINDS = ("shard", "stage", "topic", "sink", "model", "subscriber")


@dataclass(frozen=True)
class Placement:
    role: str = "core"
    site: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ConfigError(f"placement role must be one of {ROLES}, not {self.role!r}")


@dataclass(frozen=True)
class ActorSpec:
    """What the policy is asked about: one actor the runtime is about to start."""

    name: str  # the Ray actor name, e.g. "shard:customers:0"
    kind: str  # one of ACTOR_KINDS
    group: str  # the entity kind, stage, topic or sink name
    site: str | None = None  # the site whose data it serves, for site-partitioned work


class PlacementPolicy(Protocol):
    def place(self, spec: ActorSpec) -> Placement:
        """The role and site ``spec`` should run at."""
        ...


@dataclass(frozen=True)
class DefaultPolicy:
    """Device-side work at the edge of its site; profiles, models, analytics and topics at the core.

    ``edge_kinds`` run at the edge of their site; None (the default) means every kind
    partitioned by site (``site_key``: its entities are the site's devices), a set names
    them (``[]``: none). ``edge_stages`` run at the edge too.
    ``overrides`` maps an entity kind, stage, topic or sink name to a placement; an
    edge override without a site runs at the site of the data the actor serves.
    """

    edge_kinds: frozenset[str] | None = None
    edge_stages: frozenset[str] = frozenset({"ingest", "validate", "pre_aggregate"})
    overrides: Mapping[str, Placement] = field(default_factory=dict)

    def place(self, spec: ActorSpec) -> Placement:
        if spec.group in self.overrides:
            p = self.overrides[spec.group]
            return Placement(p.role, p.site or (spec.site if p.role == "edge" else None))
        at_edge = (
            spec.site is not None if self.edge_kinds is None else spec.group in self.edge_kinds
        )
        if (spec.kind == "shard" and at_edge) or (
            spec.kind == "stage" and spec.group in self.edge_stages
        ):
            return Placement("edge", spec.site)
        return Placement("core", None)

    @classmethod
    def from_file(cls, path: str | Path) -> DefaultPolicy:
        """Read ``{"edge_kinds": [...], "overrides": {"name": {"role": ..., "site": ...}}}``
        from a JSON or TOML file."""
        p = Path(path)
        try:
            text = p.read_text()
            data: dict[str, Any] = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot read placement file {p}: {err}") from err
        unknown = set(data) - {"edge_kinds", "edge_stages", "overrides"}
        if unknown:
            raise ConfigError(f"placement file {p}: unknown keys {sorted(unknown)}")
        overrides = {k: Placement(**v) for k, v in data.get("overrides", {}).items()}
        kinds = data.get("edge_kinds")
        return cls(
            edge_kinds=None if kinds is None else frozenset(kinds),
            edge_stages=frozenset(data.get("edge_stages", cls.edge_stages)),
            overrides=overrides,
        )


def selector(
    want: Placement, nodes: list[dict[str, str]]
) -> tuple[dict[str, str] | None, Placement]:
    """A Ray label selector for ``want`` among alive nodes' labels, and the placement it gives.

    Returns ``(None, want)`` when no node carries a role label (a cluster started
    without edgecore labels): then the actor may run anywhere.
    """
    labelled = [n for n in nodes if n.get("role")]
    if not labelled:
        return None, want

    def has(role: str, site: str | None) -> bool:
        return any(
            n["role"] in (role, HYBRID) and (site is None or n.get("site") == site)
            for n in labelled
        )

    if has(want.role, want.site):
        chosen = want
    elif want.role == "edge":  # the site's edge is gone: the core takes over
        chosen = Placement("core", None)
    else:
        chosen = Placement("core", None)
    if not has(chosen.role, chosen.site):
        raise ConfigError(f"no alive node can host role {chosen.role!r}; nodes: {labelled}")
    sel = {"role": f"in({chosen.role},{HYBRID})"}
    if chosen.site:
        sel["site"] = chosen.site
    return sel, chosen
