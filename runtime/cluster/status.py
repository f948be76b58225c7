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

from runtime.cluster.names import BOARD


class StatusBoard:
    def __init__(self) -> None:
        self._status: dict[str, Any] = {}

    def update(self, status: dict[str, Any]) -> None:
        self._status = {**status, "updated_at": time.time()}

    def get(self) -> dict[str, Any]:
        return self._status


def cluster_status(address: str) -> dict[str, Any]:
    """Nodes, placement and per-stage figures of the runtime running on ``address``."""
    from runtime.cluster.handles import actor_nodes, attach, named_actors, nodes, resolve

    attach(address, hard=True)
    node_list = nodes()
    info = {n["node_id"]: n for n in node_list}
    where = actor_nodes()
    placement = []
    for name, node_id in sorted(where.items()):
        if ":" not in name:
            continue
        kind = {"shard": "shard", "topic": "topic", "sub": "subscriber", "stage": "stage"}.get(
            name.split(":", 1)[0], name.split(":", 1)[0]
        )
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
    board = named_actors(BOARD)
    live = resolve([board[BOARD].call("get")])[0] if BOARD in board else {}
    return {
        "nodes": node_list,
        "placement": placement,
        "stages": live.get("stages", []),
        "apps": live.get("apps", {}),
        "updated_at": live.get("updated_at"),
    }
