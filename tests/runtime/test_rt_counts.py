"""SlidingCounts against a brute-force reference: random streams, pane boundaries, late
additions, and a round trip through arrays mid-stream."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.errors import ConfigError
from runtime.eventtime.counts import SlidingCounts

W, PANES = 1_000, 4
P = W // PANES


class Reference:
    """Every accepted event kept; a count is the sum over events whose pane is still in
    the window: pane(ts) > (now - window) // pane_ms."""

    def __init__(self, window_ms: int, panes: int) -> None:
        self.w, self.p = window_ms, window_ms // panes
        self.events: list[tuple[int, int, float]] = []
        self.now = -(2**62)
        self.late = 0.0

    def first_live(self) -> int:
        return (self.now - self.w) // self.p

    def add(self, keys, ts, weights) -> None:
        if len(keys) == 0:
            return
        self.now = max(self.now, max(ts))
        for k, t, w in zip(keys, ts, weights, strict=True):
            if t // self.p > self.first_live():
                self.events.append((k, t, w))
            else:
                self.late += w

    def advance(self, now: int) -> None:
        self.now = max(self.now, now)

    def counts(self) -> dict[int, float]:
        out: dict[int, float] = {}
        for k, t, w in self.events:
            if t // self.p > self.first_live():
                out[k] = out.get(k, 0.0) + w
        return out


def check(c: SlidingCounts, ref: Reference) -> None:
    want = ref.counts()
    got = dict(zip(c.keys.tolist(), c.counts.tolist(), strict=True))
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-9)
    assert c.late == pytest.approx(ref.late)
    assert (np.diff(c.keys) > 0).all()  # sorted, unique
    probe = np.array([*want, -1, 10**9], np.int64)
    np.testing.assert_allclose(c.get(probe), [*want.values(), 0.0, 0.0])


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("add"),
            st.lists(
                st.tuples(st.integers(0, 12), st.integers(-300, 150), st.sampled_from([1.0, 2.5])),
                max_size=12,
            ),
        ),
        st.tuples(st.just("advance"), st.integers(0, 400)),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(ops, st.integers(0, 3_000))
def test_matches_brute_force_on_random_streams(steps, start):
    c, ref = SlidingCounts(W, PANES), Reference(W, PANES)
    clock = start  # event time drifts forward; additions may be up to 300 ms behind it
    for op, arg in steps:
        if op == "add":
            keys = [k for k, _, _ in arg]
            ts = [max(0, clock + d) for _, d, _ in arg]
            w = [x for _, _, x in arg]
            c.add(np.array(keys, np.int64), np.array(ts, np.int64), np.array(w))
            ref.add(keys, ts, w)
            clock = max([clock, *ts])
        else:
            clock += arg
            c.advance(clock)
            ref.advance(clock)
        check(c, ref)


@settings(max_examples=60, deadline=None)
@given(ops, st.integers(0, 30))
def test_arrays_round_trip_mid_stream_behaves_the_same_after(steps, cut):
    a = SlidingCounts(W, PANES)
    clock = 2_000
    b = None
    for i, (op, arg) in enumerate(steps):
        if i == cut:  # save and load as data (npz, no pickle), then go on with both
            buf = io.BytesIO()
            np.savez(buf, **a.arrays("x_"))
            with np.load(io.BytesIO(buf.getvalue()), allow_pickle=False) as z:
                b = SlidingCounts.from_arrays({k: z[k] for k in z.files}, "x_")
        targets = [a] if b is None else [a, b]
        if op == "add":
            keys = np.array([k for k, _, _ in arg], np.int64)
            ts = np.array([max(0, clock + d) for _, d, _ in arg], np.int64)
            for t in targets:
                t.add(keys, ts)
            clock = max([clock, *ts.tolist()])
        else:
            clock += arg
            for t in targets:
                t.advance(clock)
        if b is not None:
            np.testing.assert_array_equal(a.keys, b.keys)
            np.testing.assert_allclose(a.counts, b.counts)
            assert (a.now, a.late) == (b.now, b.late)
            assert a.range(3, 9)[0].tolist() == b.range(3, 9)[0].tolist()


def test_expiry_is_exact_at_pane_boundaries():
    c = SlidingCounts(window_ms=W, panes=PANES)  # panes of 250 ms
    c.add(np.array([1, 2, 3]), np.array([0, P - 1, P]))  # 1, 2 in pane 0; 3 in pane 1
    c.advance(W + P - 1)  # (now - W) // P = 0: pane 0 has left (first live is pane 1)
    assert c.get(np.array([1, 2, 3])).tolist() == [0.0, 0.0, 1.0]
    c = SlidingCounts(window_ms=W, panes=PANES)
    c.add(np.array([1, 2, 3]), np.array([0, P - 1, P]))
    c.advance(W - 1)  # (W - 1 - W) // P = -1: pane 0 still counts
    assert c.get(np.array([1, 2, 3])).tolist() == [1.0, 1.0, 1.0]
    c.advance(W)  # exactly a window after pane 0 began: it leaves
    assert c.get(np.array([1, 2, 3])).tolist() == [0.0, 0.0, 1.0]
    c.advance(W + P)  # and pane 1 a pane later
    assert len(c) == 0 and c.get(np.array([3])).tolist() == [0.0]
    assert not c._panes  # dropped, not kept as zeros


def test_late_additions_are_counted_in_late_not_in_the_window():
    c = SlidingCounts(window_ms=W, panes=PANES)
    c.add(np.array([1]), np.array([5 * W]))
    c.add(np.array([2, 3, 1]), np.array([0, 4 * W, 5 * W - 10]), np.array([2.0, 3.0, 1.0]))
    assert c.late == 5.0  # keys 2 and 3 came more than a window late
    assert c.get(np.array([1, 2, 3])).tolist() == [2.0, 0.0, 0.0]
    # a batch that itself spans more than a window: its old rows are late at once
    c.add(np.array([7, 8]), np.array([5 * W, 7 * W]))
    assert c.late == 6.0 and c.get(np.array([7, 8])).tolist() == [0.0, 1.0]


def test_range_answers_what_follows_a_key_prefix():
    n = 100
    c = SlidingCounts(window_ms=W, panes=PANES)
    a = np.array([3, 3, 3, 4, 2])
    b = np.array([7, 7, 9, 1, 99])
    c.add(a * n + b, np.zeros(5, np.int64))
    keys, counts = c.range(3 * n, 4 * n)
    assert (keys - 3 * n).tolist() == [7, 9] and counts.tolist() == [2.0, 1.0]
    assert c.range(5 * n, 6 * n)[0].tolist() == []


def test_bad_settings_and_empty_adds():
    for window, panes in ((0, 1), (1_000, 0), (1_000, 3)):
        with pytest.raises(ConfigError):
            SlidingCounts(window, panes)
    c = SlidingCounts(W, PANES)
    c.add(np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert len(c) == 0 and c.get(np.array([1])).tolist() == [0.0]
    back = SlidingCounts.from_arrays(c.arrays())
    assert len(back) == 0 and back.now == c.now
