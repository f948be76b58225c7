"""The feature log that waits for late labels: bounded, point-in-time, each label once."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.ml.featurelog import NO_DUE, FeatureLog


def _add(log: FeatureLog, ids, ts, held=None, due=None):
    ids = np.asarray(ids, np.int64)

    x = np.tile(ids[:, None].astype(np.float32), (1, 2))  # features that name their event
    return log.add(
        ids, np.asarray(ts, np.int64), x, ids / 100.0, ids % 2 == 0, 3,
        held=None if held is None else np.asarray(held, np.int8),
        due=None if due is None else np.asarray(due, np.int64),
    )  # fmt: skip


def test_a_label_joins_the_features_the_event_was_scored_with():
    log = FeatureLog(2, capacity=10)
    _add(log, [5, 6], [1_000, 2_000])
    j = log.label(np.array([6]), np.array([True]), np.array([9_000]))
    assert j.event_id.tolist() == [6]
    assert (
        j.x.tolist() == [[6.0, 6.0]] and j.score.tolist() == [0.06] and j.alert.tolist() == [True]
    )
    assert j.version.tolist() == [3] and j.delay_ms.tolist() == [7_000]
    assert log.stats()["waiting"] == 1


def test_a_label_before_its_event_waits_and_joins_when_it_is_scored():
    log = FeatureLog(2, capacity=10)
    assert len(log.label(np.array([7]), np.array([False]), np.array([50]))) == 0
    assert log.stats()["orphans"] == 1
    j = _add(log, [6, 7], [10, 20])
    assert j.event_id.tolist() == [7] and j.label.tolist() == [False]
    assert log.stats()["orphans"] == 0 and log.stats()["waiting"] == 1


def test_a_label_that_comes_again_is_a_duplicate_not_learned_twice():
    log = FeatureLog(2, capacity=10)
    _add(log, [1, 2], [0, 0])
    assert len(log.label(np.array([1, 1]), np.array([True, True]), np.array([5, 5]))) == 1
    assert len(log.label(np.array([1]), np.array([True]), np.array([6]))) == 0
    assert log.stats()["duplicates"] == 2 and log.stats()["orphans"] == 0


def test_held_labels_are_released_when_event_time_passes_their_due_time():
    log = FeatureLog(2, capacity=10)
    _add(log, [1, 2], [0, 100], held=[1, 0], due=[500, 600])
    assert len(log.release()) == 0  # clock 100
    _add(log, [3], [550], held=[-1], due=[NO_DUE])
    j = log.release()
    assert (
        j.event_id.tolist() == [1] and j.label.tolist() == [True] and j.delay_ms.tolist() == [500]
    )
    _add(log, [4], [10_000])
    assert sorted(log.release().event_id.tolist()) == [2]


def test_bounded_by_rows_and_by_event_time():
    log = FeatureLog(2, capacity=3, retention_ms=1_000)
    _add(log, [1, 2, 3, 4], [0, 1, 2, 3], held=[1, -1, -1, -1], due=[10**9] * 4)
    assert log.stats()["waiting"] == 3 and log.stats()["held_expired"] == 1  # 1 left
    _add(log, [5], [5_000])
    assert log.expire() == 2  # 3 and 4 are older than 1 s before 5 s (2 left with 5)
    assert log.stats()["waiting"] == 1


def test_arrays_round_trip_keeps_waiting_rows_orphans_and_joined_ids():
    log = FeatureLog(2, capacity=5)
    _add(log, [1, 2, 3], [0, 1, 2], held=[1, -1, 0], due=[100, NO_DUE, 200])
    log.label(np.array([2, 99]), np.array([True, False]), np.array([3, 3]))
    copy = FeatureLog(2, capacity=5)
    copy.load(log.arrays())
    assert copy.stats() == log.stats()
    assert len(copy.label(np.array([2]), np.array([True]), np.array([4]))) == 0  # joined before
    assert _add(copy, [99], [3]).event_id.tolist() == [99]  # the orphan was kept
    _add(copy, [4], [1_000])
    assert sorted(copy.release().event_id.tolist()) == [1, 3]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 40), min_size=1, max_size=60, unique=True),
    st.lists(st.integers(0, 60), max_size=80),
    st.randoms(use_true_random=False),
)
def test_every_label_joins_at_most_once_whatever_the_order(events, labels, rnd):
    """Events and labels interleaved at random: each event's label is learned at most
    once, and exactly once when its event and a label both came (nothing overflowed)."""
    log = FeatureLog(2, capacity=1_000, orphan_capacity=1_000)
    ops = [("e", e) for e in events] + [("l", lab) for lab in labels]
    rnd.shuffle(ops)
    joined: list[int] = []
    for op, v in ops:
        if op == "e":
            joined += _add(log, [v], [v]).event_id.tolist()
        else:
            joined += log.label(np.array([v]), np.array([True]), np.array([100])).event_id.tolist()
    assert len(joined) == len(set(joined))
    assert set(joined) == set(events) & set(labels)


def test_capacities_must_be_positive():
    with pytest.raises(ValueError):
        FeatureLog(2, capacity=0)
