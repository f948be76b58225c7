"""runtime.*.clients: every typed client calls methods its actor class really has."""

from __future__ import annotations

import pytest

from runtime.cluster.clients import ActorClient, check_client
from runtime.cluster.status import BoardClient, StatusBoard
from runtime.entities.clients import ShardClient
from runtime.entities.shard import Shard
from runtime.ingest.live import LiveIngest, LiveIngestClient
from runtime.ingest.sites import IngestStage, IngestStageClient
from runtime.topics.clients import Subscriber, SubscriberClient, TopicClient
from runtime.topics.colocated import ColocatedTopic
from runtime.topics.topic import Topic

PAIRS = [
    (ShardClient, Shard),
    (TopicClient, Topic),
    (SubscriberClient, Subscriber),
    (BoardClient, StatusBoard),
    (LiveIngestClient, LiveIngest),
    (IngestStageClient, IngestStage),
]


@pytest.mark.parametrize(("client", "actor"), PAIRS, ids=[c.__name__ for c, _ in PAIRS])
def test_client_matches_its_actor(client, actor):
    check_client(client, actor)


def test_a_client_calling_a_missing_method_is_caught():
    class Broken(ActorClient):
        def nope(self):
            return self._call(Topic.flush)

    with pytest.raises(AssertionError, match="Broken.nope"):
        check_client(Broken, Topic)


def test_colocated_topic_answers_what_a_topic_client_answers():
    # a topic hosted in shards is restored by its shards as they start, never afterwards
    public = {n for n in vars(TopicClient) if not n.startswith("_")} - {"restore"}
    missing = sorted(n for n in public if not callable(getattr(ColocatedTopic, n, None)))
    assert missing == []


def test_a_client_whose_parameters_drifted_is_caught():
    class Drifted(ActorClient):
        def poll(self, group, limit):  # Topic.poll takes max_rows
            return self._call(Topic.poll, group, limit)

    with pytest.raises(AssertionError, match="does not match"):
        check_client(Drifted, Topic)
