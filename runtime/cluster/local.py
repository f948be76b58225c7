"""A simulated edge-to-core cluster on one machine, for demos and tests.

One head node plays the core; each edge node gets its own site. All are real Ray
nodes (``ray.cluster_utils.Cluster``), so placement, object transfer between nodes
and node loss behave as on a real cluster, only without the network: as the embedded Ray,
every node listens on 127.0.0.1 only and the cluster requires a token of its own.

    with LocalCluster(edges=2) as cluster:      # sites eu-1, eu-2
        Runtime(address=cluster.address, ...)
"""

from __future__ import annotations

from typing import Any

from runtime.cluster import security
from runtime.errors import ConfigError


class LocalCluster:
    def __init__(self, edges: int, core_cpus: int = 1, edge_cpus: int = 1) -> None:
        if not 1 <= edges <= 8:
            raise ConfigError(f"--edges must be between 1 and 8 on one machine, not {edges}")
        self.edges = edges
        self.core_cpus = core_cpus
        self.edge_cpus = edge_cpus
        self.sites = [f"eu-{i + 1}" for i in range(edges)]
        self.cluster: Any = None
        self.edge_nodes: dict[str, Any] = {}

    @property
    def address(self) -> str:
        return self.cluster.address

    def __enter__(self) -> LocalCluster:
        import ray
        from ray.cluster_utils import Cluster

        if ray.is_initialized():
            raise ConfigError(
                "a Ray session is already running in this process; a local cluster needs its own"
            )
        security.check_ray_version()
        token = security.new_session_token()  # the nodes' processes inherit token mode
        local = {"node_ip_address": security.LOOPBACK}  # so each binds to loopback
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": self.core_cpus,
                "labels": {"role": "core", "site": "core"},
                "include_dashboard": False,
                "no_monitor": True,  # as the embedded Ray (runtime.cluster.connect.lean_head)
                **local,
            },
        )
        for site in self.sites:
            self.edge_nodes[site] = self.cluster.add_node(
                num_cpus=self.edge_cpus, labels={"role": "edge", "site": site}, **local
            )
        self.cluster.wait_for_nodes()
        security.publish_session_token(token, self.cluster.address)
        with security.loopback_node():
            ray.init(address=self.cluster.address, namespace="edgecore", log_to_driver=False)
        return self

    def __exit__(self, *exc: Any) -> None:
        import ray

        ray.shutdown()
        self.cluster.shutdown()
