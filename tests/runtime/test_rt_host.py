"""runtime.cluster.host under a real Ray: light actors share their placement's process,
keep their call order, fail alone when dropped and together when their host dies."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest
from ray import cloudpickle

from runtime.cluster.handles import resolve, wait_ready
from runtime.cluster.placement import ActorSpec
from runtime.coordinator.config import RuntimeConfig
from runtime.coordinator.deployment import Deployment
from runtime.errors import ActorFailedError, ConfigError

# the classes below go to the workers by value: this module is not importable there
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Log:
    edgecore_hostable = True

    def __init__(self, tag: str) -> None:
        self.tag, self.seen = tag, []

    def add(self, x: int) -> None:
        self.seen.append(x)

    def get(self) -> list[int]:
        return self.seen

    def pid(self) -> int:
        return os.getpid()


class OwnLog(Log):
    """The same class, but not hostable: an actor of its own."""

    edgecore_hostable = False


class Refusing:
    edgecore_hostable = True

    def __init__(self) -> None:
        raise ConfigError("refusing: bad table name; name it in the app")


def spec(name: str, kind: str = "sink") -> ActorSpec:
    return ActorSpec(name, kind, name)


@pytest.fixture
def deployment(ray_session, tmp_path):
    d = Deployment(RuntimeConfig(data_dir=str(tmp_path), mode="ray"))
    yield d
    d.kill_all()


def test_hostable_classes_share_one_process_others_get_their_own(deployment):
    a = deployment.spawn(Log, "a", spec=spec("sub:a"))
    b = deployment.spawn(Log, "b", spec=spec("sub:b"))
    own = deployment.spawn(OwnLog, "c", spec=spec("sub:c"))
    wait_ready([a, b, own])
    pa, pb, pc = resolve([a.call("pid"), b.call("pid"), own.call("pid")])
    assert pa == pb != pc and pa != os.getpid()
    assert a.host == b.host == "host:core" and own.host is None
    where = {p["actor"]: p["node_id"] for p in deployment.placement()}
    assert where["sub:a"] == where["sub:b"] == where["host:core"] != ""


def test_calls_run_in_the_order_sent_per_object(deployment):
    a = deployment.spawn(Log, "a", spec=spec("sub:a"))
    b = deployment.spawn(Log, "b", spec=spec("sub:b"))
    futures = []
    for i in range(300):  # pipelined, interleaved between the two hosted objects
        futures += [a.call("add", i), b.call("add", -i)]
    resolve(futures)
    got_a, got_b = resolve([a.call("get"), b.call("get")])
    assert got_a == list(range(300)) and got_b == [-i for i in range(300)]


def test_a_constructor_error_surfaces_as_the_objects_own_error(deployment):
    ok = deployment.spawn(Log, "ok", spec=spec("sub:ok"))
    bad = deployment.spawn(Refusing, spec=spec("sub:bad"))
    with pytest.raises(ConfigError, match="refusing: bad table name"):
        wait_ready([bad])
    with pytest.raises(ConfigError, match="refusing"):  # and on every call after it
        resolve([bad.call("get")])
    resolve([ok.call("add", 1)])
    assert resolve([ok.call("get")]) == [[1]]  # its host goes on


def test_a_dropped_object_fails_alone(deployment):
    a = deployment.spawn(Log, "a", spec=spec("sub:a"))
    b = deployment.spawn(Log, "b", spec=spec("sub:b"))
    wait_ready([a, b])
    deployment.stop_actor("sub:a")
    with pytest.raises(ActorFailedError, match="sub:a is not hosted here"):
        resolve([a.call("get")])
    resolve([b.call("add", 7)])
    assert resolve([b.call("get")]) == [[7]]


def test_the_hosts_death_is_every_hosted_objects_actor_failure(deployment):
    a = deployment.spawn(Log, "a", spec=spec("sub:a"))
    board = deployment.spawn(Log, "board", spec=spec("runtime:status", "stage"))
    pid = resolve([a.call("pid")])[0]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    for handle in (a, board):
        with pytest.raises(ActorFailedError, match="a runtime actor died"):
            while time.monotonic() < deadline:  # Ray notices the death within a moment
                resolve([handle.call("get")], timeout=30)
                time.sleep(0.1)
