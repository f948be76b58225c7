"""How the deployment sets links up, and what the runtime asks of them.

For an edge kind (partitioned by site) registered with ``forward``, each site gets a
:class:`~runtime.edge.receiver.Receiver` at the core (Ray starts it again if it dies),
and each shard a :class:`~runtime.edge.link.LinkSpec` per forwarded topic, with where
its log is and what the last checkpoint committed of it. :class:`Links` keeps the linked
shards: their state for ``status``, trimming their logs after each commit, and waiting
for them to empty at the end of a run.

The checkpoint's ``meta["edge"]`` holds ``{"sent": {source: seq}, "acks": {core shard:
{source: seq}}}`` (see :func:`merge_cut`).

>>> merge_cut({"sent": {"a": 1}, "acks": {"shard:t:0": {"a": 1}, "shard:u:0": {"b": 2}}},
...           {"sent": {"a": 4}, "acks": {"shard:t:0": {"a": 3}}})
{'sent': {'a': 4}, 'acks': {'shard:u:0': {'b': 2}, 'shard:t:0': {'a': 3}}}
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.cluster import names
from runtime.cluster.handles import dead_actors, ready, resolve
from runtime.cluster.placement import ActorSpec
from runtime.edge.link import LinkSpec
from runtime.edge.receiver import Receiver, ReceiverClient
from runtime.errors import ConfigError

if TYPE_CHECKING:
    from runtime.coordinator.deployment import Deployment
    from runtime.entities.clients import ShardClient
    from runtime.entities.kind import EntityKind

EDGE_FOLDER = "_edge"


def merge_cut(previous: dict[str, Any] | None, cut: dict[str, Any]) -> dict[str, Any]:
    """The links' part of a commit: the new cut over the last (a kind whose shards
    reported replaces every entry of its shards: a new layout drops the old)."""
    previous = previous or {}
    kinds = {names.parse_shard(n).kind for n in cut.get("acks", {})}
    acks = {
        n: a for n, a in previous.get("acks", {}).items() if names.parse_shard(n).kind not in kinds
    }
    return {
        "sent": {**previous.get("sent", {}), **cut.get("sent", {})},
        "acks": {**acks, **cut.get("acks", {})},
    }


def core_acks(meta: dict[str, Any], kind: str, shard_names: list[str]) -> list[dict[str, int]]:
    """What each of a kind's shards applied from edge links at the last commit. A new
    layout (other shards) cannot take per-shard sequence numbers over: refused while an
    edge still holds entries for the kind, else every shard starts from the highest."""
    prefix = names.shards_of(kind)
    saved = {n: a for n, a in meta.get("acks", {}).items() if n.startswith(prefix)}
    if not saved or set(saved) == set(shard_names):
        return [dict(saved.get(n, {})) for n in shard_names]
    sources = {s for a in saved.values() for s in a}
    sent = meta.get("sent", {})
    pending = sorted(
        s for s in sources if sent.get(s, 0) > min(a.get(s, 0) for a in saved.values())
    )
    if pending:
        raise ConfigError(
            f"entity kind {kind!r} was saved with shards {sorted(saved)} while edge links "
            f"still hold entries for it ({', '.join(pending[:3])}); start it with the same "
            "shards until they are delivered"
        )
    top = {s: max(a.get(s, 0) for a in saved.values()) for s in sources}
    return [dict(top) for _ in shard_names]


class Links:
    """The linked shards of a deployment: (shard, [(source, target kind)]) by name."""

    def __init__(self) -> None:
        self.shards: dict[str, tuple[ShardClient, list[tuple[str, str]]]] = {}
        #: receiver name -> what it is started with
        self.receivers: dict[str, tuple[Any, ...]] = {}
        self._asked: dict[str, Any] = {}  # status calls not answered yet
        self._last: dict[str, list[dict[str, Any]]] = {}

    def plan(
        self,
        deployment: Deployment,
        kind_cls: type[EntityKind],
        forward: dict[str, str],
        sites: list[str] | None,
        meta: dict[str, Any],
    ) -> dict[str, Any] | None:
        """Start the receivers of an edge kind's sites; None for a kind with no links."""
        if not (kind_cls.site_key and forward and deployment.config.store_forward):
            return None
        cfg = deployment.config
        remote = cfg.mode == "ray"  # in Ray, shards by name: small arguments to restart from
        targets = {
            k: (d.cls, [s.name for s in d.shards] if remote else d.shards, d.per_site, d.sites())
            for k in sorted(set(forward.values()))
            for d in [deployment.kinds[k]]
        }
        receivers = {}
        for site in sites or []:
            name = names.receiver(kind_cls.name, site)
            self.receivers[name] = (site, targets, cfg.max_inflight)
            receivers[site] = ReceiverClient(self._start(deployment, name))
        return {"forward": forward, "receivers": receivers, "meta": meta}

    def _start(self, deployment: Deployment, name: str) -> Any:
        """Start receiver ``name`` at the core; Ray starts it again if its process dies."""
        spec = ActorSpec(name, "stage", "receiver")
        return deployment.spawn(Receiver, *self.receivers[name], spec=spec, max_restarts=-1)

    def heal(self, deployment: Deployment) -> list[str]:
        """Start again the receivers Ray has given up on (killed for good, or their
        restart failed); the edges' senders find them by name."""
        if deployment.config.mode != "ray" or not self.receivers:
            return []
        gone = dead_actors(list(self.receivers))
        for name in gone:
            self._start(deployment, name)
        return gone

    def specs(
        self, deployment: Deployment, plan: dict[str, Any] | None, shard: str, site: str | None
    ) -> dict[str, LinkSpec]:
        """Each forwarded topic's link of the shard named ``shard``."""
        if plan is None or site is None:
            return {}
        cfg, meta = deployment.config, plan["meta"]
        parsed = names.parse_shard(shard)
        out = {}
        for topic, target in plan["forward"].items():
            source = f"{shard}>{topic}"
            core = [s.name for s in deployment.kinds[target].shards]
            acked = min(meta.get("acks", {}).get(n, {}).get(source, 0) for n in core)
            folder = (
                Path(cfg.data_dir) / EDGE_FOLDER / site / f"{parsed.kind}-{parsed.index}-{topic}"
            )
            out[topic] = LinkSpec(
                topic,
                target,
                plan["receivers"][site],
                str(folder),
                sent=int(meta.get("sent", {}).get(source, 0)),
                acked=int(acked),
                buffer_bytes=cfg.edge_buffer_bytes,
                timeout_s=cfg.link_timeout_s,
            )
        return out

    def add(self, shard: ShardClient, specs: dict[str, LinkSpec]) -> None:
        if specs:
            self.shards[shard.name] = (
                shard,
                [(f"{shard.name}>{t}", s.target) for t, s in specs.items()],
            )

    def close(self) -> None:
        """In-process shards stop their senders (a Ray actor's end with its process)."""
        for shard, _ in self.shards.values():
            if not shard.remote:
                resolve([shard.close_links()])
        self.shards, self.receivers = {}, {}

    # -- what the runtime asks ---------------------------------------------------------------
    def committed(self, deployment: Deployment, meta: dict[str, Any]) -> None:
        """A commit holds ``meta``: each log may forget what every core shard committed."""
        acks = meta.get("acks", {})
        for shard, sources in self.shards.values():
            upto = {}
            for source, target in sources:
                core = [s.name for s in deployment.kinds[target].shards]
                upto[source] = min(acks.get(n, {}).get(source, 0) for n in core)
            shard.trim_links(upto)  # not waited for: trimming is never urgent
        self.heal(deployment)

    def settle(self, timeout_s: float) -> int:
        """Wait until every link delivered what it holds (at most ``timeout_s``); the
        entries still waiting (they stay in the logs for the next start)."""
        return sum(resolve([s.settle_links(timeout_s) for s, _ in self.shards.values()]))

    def status(self, wait_s: float = 0.5) -> list[dict[str, Any]]:
        """Every link's state; a shard that does not answer in ``wait_s`` (its intake
        waits for room) is shown as it last answered."""
        for name, (shard, _) in self.shards.items():
            if name not in self._asked:
                self._asked[name] = shard.link_status()
        asked = list(self._asked.items())
        done, _ = ready([f for _, f in asked], len(asked), timeout=wait_s)
        finished = {id(f) for f in done}
        for name, fut in asked:
            if id(fut) in finished:
                del self._asked[name]
                try:
                    self._last[name] = resolve([fut])[0]
                except Exception:  # a dead shard: the run restarts; nothing to show
                    self._last.pop(name, None)
        # a shard still asked did not answer now: its last answer, marked stale
        return [
            {**s, "stale": name in self._asked}
            for name in self.shards
            for s in self._last.get(name, [])
        ]
