"""What a running runtime reports about itself, readable from another process.

The coordinator keeps a :class:`StatusBoard` actor up to date (throughput, batches in
flight per shard); ``edgecore status --address`` reads it, lists the nodes and where
every runtime actor runs as Ray reports it.

>>> board = StatusBoard()
>>> board.update({"stages": [{"actor": "shard:customers:0", "queue_depth": 1}]})
>>> board.get()["stages"][0]["queue_depth"]
1
"""

from __future__ import annotations

import time
from typing import Any

from runtime.cluster.clients import ActorClient
from runtime.cluster.names import BOARD, role_of


class StatusBoard:
    #: shares its node's host process (runtime.cluster.host): two calls a second at most
    edgecore_hostable = True

    def __init__(self) -> None:
        self._status: dict[str, Any] = {}

    def update(self, status: dict[str, Any]) -> None:
        self._status = {**status, "updated_at": time.time()}

    def get(self) -> dict[str, Any]:
        return self._status


class BoardClient(ActorClient):
    """Calls on the :class:`StatusBoard` actor."""

    __slots__ = ()

    def update(self, status: dict[str, Any]) -> Any:
        return self._call(StatusBoard.update, status)

    def get(self) -> Any:
        return self._call(StatusBoard.get)


def read_board() -> dict[str, Any]:
    """What the running runtime (attached to already) last put on its board; {} if none."""
    from runtime.cluster.handles import named_actors, resolve

    board = named_actors(BOARD).get(BOARD)
    return resolve([BoardClient(board).get()])[0] if board is not None else {}


def cluster_status(address: str) -> dict[str, Any]:
    """Nodes, placement and per-stage figures of the runtime running on ``address``."""
    from runtime.cluster.handles import attach

    attach(address, hard=True)
    return attached_status()


def attached_status() -> dict[str, Any]:
    """:func:`cluster_status` of the runtime this process is attached to already (the
    console, serving from inside ``edgecore serve`` or from ``edgecore console``)."""
    from runtime.cluster.handles import actor_nodes, nodes

    node_list = nodes()
    info = {n["node_id"]: n for n in node_list}
    where = actor_nodes()
    placement = []
    for name, node_id in sorted(where.items()):
        kind = role_of(name)
        if kind is None:
            continue
        node = info.get(node_id, {})
        placement.append(
            {
                "actor": name,
                "kind": kind,
                "role": node.get("role", ""),
                "site": node.get("site", ""),
                "node_id": node_id,
            }
        )
    live = read_board()
    return {
        "nodes": node_list,
        "placement": placement,
        "stages": live.get("stages", []),
        "apps": live.get("apps", {}),
        "models": live.get("models", {}),  # each model kind's version and live metrics
        "links": live.get("links", []),  # edge -> core store-and-forward (runtime.edge)
        # the run's metrics as runtime.observe.metrics.Registry.snapshot() has them
        "metrics": live.get("metrics", {}),
        "updated_at": live.get("updated_at"),
    }
