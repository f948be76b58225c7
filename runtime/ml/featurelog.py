"""A bounded, point-in-time feature log: what a model scored, kept until its label comes.

Labels (chargebacks, analyst verdicts) arrive minutes to days after the event. To learn
from a late label, a model needs the features *as they were when it scored the event*,
not as the profile is now: :class:`FeatureLog` keeps, per scored event, its features,
the score and alert the model gave, the model version and the event time. A label joins
by event id (:meth:`FeatureLog.label`) and the row leaves the log as a :class:`Joined`
row to learn from and to count in prequential metrics (they use the logged score, so
they count only what was known at scoring time).

Labels may also come *before* their event (two streams, no order between them): they
wait as orphans and join when the event is scored. A replay can hold each event's own
label back until event time passes ``ts + delay`` (:meth:`FeatureLog.add` with
``held``), which is how ``--label-delay`` simulates late labels on a labelled file.

Bounded two ways: at most ``capacity`` rows (the oldest leave first) and none older
than ``retention_ms`` of event time; rows that leave unlabelled are counted as expired.
Its state is arrays (:meth:`arrays` / :meth:`from_arrays`), saved per shard.

>>> import numpy as np
>>> log = FeatureLog(n_features=2, capacity=4)
>>> ids = np.array([1, 2, 3]); ts = np.array([0, 10, 20])
>>> _ = log.add(ids, ts, np.ones((3, 2)), np.array([0.1, 0.9, 0.2]), np.array([False, True, False]), 1)
>>> j = log.label(np.array([2, 9]), np.array([True, False]), np.array([500, 500]))
>>> j.event_id.tolist(), j.label.tolist(), j.alert.tolist(), j.delay_ms.tolist()
([2], [True], [True], [490])
>>> log.stats()["waiting"], log.stats()["orphans"]
(2, 1)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NO_DUE = np.iinfo(np.int64).max
NO_LABEL = -1


@dataclass
class Joined:
    """Logged rows whose label is known now."""

    event_id: np.ndarray
    x: np.ndarray  # features as scored (float32)
    score: np.ndarray
    shadow: np.ndarray  # the challenger's score then (NaN: there was none)
    alert: np.ndarray
    version: np.ndarray
    label: np.ndarray  # bool
    delay_ms: np.ndarray  # label time - event time
    tag: np.ndarray | None = None  # what the caller kept with each row (int64), if anything

    def __len__(self) -> int:
        return len(self.event_id)

    @classmethod
    def empty(cls, n_features: int) -> Joined:
        z = np.zeros(0)
        return cls(
            np.zeros(0, np.int64), np.zeros((0, n_features), np.float32), z, z,
            np.zeros(0, bool), np.zeros(0, np.int32), np.zeros(0, bool), np.zeros(0, np.int64),
            np.zeros(0, np.int64),
        )  # fmt: skip


class FeatureLog:
    def __init__(
        self,
        n_features: int,
        capacity: int = 200_000,
        retention_ms: int = 7 * 24 * 3600 * 1000,
        orphan_capacity: int = 100_000,
    ) -> None:
        if capacity <= 0 or orphan_capacity <= 0:
            raise ValueError("feature log capacities must be > 0")
        self.n_features, self.capacity, self.retention_ms = n_features, capacity, retention_ms
        self.orphan_capacity = orphan_capacity
        c = capacity
        self.event_id = np.zeros(c, np.int64)
        self.ts = np.zeros(c, np.int64)
        self.x = np.zeros((c, n_features), np.float32)
        self.score = np.zeros(c)
        self.shadow = np.full(c, np.nan)
        self.alert = np.zeros(c, bool)
        self.version = np.zeros(c, np.int32)
        self.tag = np.zeros(c, np.int64)  # an int the caller keeps with a row (a merchant's hash)
        self.held = np.full(c, NO_LABEL, np.int8)  # a label held back until ``due``
        self.due = np.full(c, NO_DUE, np.int64)
        self.live = np.zeros(c, bool)
        self.head = 0  # next slot written (a ring: the oldest rows are overwritten)
        self.clock = np.iinfo(np.int64).min  # latest event time seen
        self._index: dict[int, int] | None = None  # event id -> slot, built on first label
        # labels that came before their event
        self.o_id = np.zeros(0, np.int64)
        self.o_label = np.zeros(0, bool)
        self.o_ts = np.zeros(0, np.int64)
        # ids of the rows joined lately (a ring as long as the log): a label that comes
        # again for one of them is a duplicate, not an orphan that waits for nothing
        self.done = np.full(capacity, -1, np.int64)
        self.done_head = 0
        self.counts = {"expired": 0, "held_expired": 0, "orphans_expired": 0, "duplicates": 0}

    # -- rows in ----------------------------------------------------------------------------
    def add(
        self,
        event_id: np.ndarray,
        ts: np.ndarray,
        x: np.ndarray,
        score: np.ndarray,
        alert: np.ndarray,
        version: int,
        shadow: np.ndarray | None = None,
        held: np.ndarray | None = None,
        due: np.ndarray | None = None,
        tag: np.ndarray | None = None,
    ) -> Joined:
        """Log scored rows; ``held`` labels (0/1, -1 none) are released at ``due`` event
        time. Returns the rows that orphan labels were waiting for (joined now)."""
        n = len(event_id)
        if n == 0:
            return Joined.empty(self.n_features)
        if n > self.capacity:  # only the newest fit
            keep = slice(n - self.capacity, n)
            lost = 0 if held is None else int((held[: n - self.capacity] != NO_LABEL).sum())
            self.counts["expired"] += n - self.capacity - lost
            self.counts["held_expired"] += lost
            event_id, ts, x, score, alert = (
                event_id[keep],
                ts[keep],
                x[keep],
                score[keep],
                alert[keep],
            )
            shadow = None if shadow is None else shadow[keep]
            held = None if held is None else held[keep]
            due = None if due is None else due[keep]
            tag = None if tag is None else tag[keep]
            n = self.capacity
        slots = (self.head + np.arange(n)) % self.capacity
        self._evict(slots[self.live[slots]])
        self.event_id[slots], self.ts[slots], self.x[slots] = event_id, ts, x
        self.score[slots], self.alert[slots], self.version[slots] = score, alert, version
        self.shadow[slots] = np.nan if shadow is None else shadow
        self.held[slots] = NO_LABEL if held is None else held
        self.due[slots] = NO_DUE if due is None else due
        self.tag[slots] = 0 if tag is None else tag
        self.live[slots] = True
        self.head = int((self.head + n) % self.capacity)
        self.clock = max(self.clock, int(ts.max()))
        if self._index is not None:
            self._index.update(zip(event_id.tolist(), slots.tolist(), strict=True))
        if not len(self.o_id):
            return Joined.empty(self.n_features)
        hit = np.isin(self.o_id, event_id)
        if not hit.any():
            return Joined.empty(self.n_features)
        ids, labels, lts = self.o_id[hit], self.o_label[hit], self.o_ts[hit]
        self.o_id, self.o_label, self.o_ts = self.o_id[~hit], self.o_label[~hit], self.o_ts[~hit]
        order = np.argsort(event_id, kind="stable")
        at = slots[order[np.searchsorted(event_id[order], ids)]]
        return self._take(at, labels, lts)

    def label(self, event_id: np.ndarray, is_fraud: np.ndarray, label_ts: np.ndarray) -> Joined:
        """Join labels to logged rows; a label whose event is not here yet waits as an orphan."""
        if self._index is None:
            live = np.flatnonzero(self.live)
            self._index = dict(zip(self.event_id[live].tolist(), live.tolist(), strict=True))
        found = np.fromiter(
            (self._index.get(e, -1) for e in event_id.tolist()), np.int64, len(event_id)
        )
        here = found >= 0
        # two labels of one event in one batch: the first counts
        _, first = np.unique(event_id, return_index=True)
        once = np.zeros(len(event_id), bool)
        once[first] = True
        self.counts["duplicates"] += int((~once).sum())
        take = here & once
        again = ~here & once & (np.isin(event_id, self.o_id) | np.isin(event_id, self.done))
        missing = ~here & once & ~again
        self.counts["duplicates"] += int(again.sum())
        if missing.any():
            self.o_id = np.concatenate([self.o_id, event_id[missing]])
            self.o_label = np.concatenate([self.o_label, np.asarray(is_fraud)[missing]])
            self.o_ts = np.concatenate([self.o_ts, label_ts[missing]])
            over = len(self.o_id) - self.orphan_capacity
            if over > 0:
                self.counts["orphans_expired"] += over
                self.o_id, self.o_label, self.o_ts = (
                    self.o_id[over:],
                    self.o_label[over:],
                    self.o_ts[over:],
                )
        return self._take(found[take], np.asarray(is_fraud)[take], label_ts[take])

    def release(self, clock: int | None = None) -> Joined:
        """Held labels whose time has come (event time ``clock``, default the latest seen)."""
        clock = self.clock if clock is None else clock
        at = np.flatnonzero(self.live & (self.due <= clock))
        if not len(at):
            return Joined.empty(self.n_features)
        return self._take(at, self.held[at] == 1, self.due[at])

    def expire(self) -> int:
        """Drop rows older than the retention (event time); returns how many."""
        old = np.flatnonzero(self.live & (self.ts < self.clock - self.retention_ms))
        self._evict(old)
        return len(old)

    # -- internals -------------------------------------------------------------------------
    def _evict(self, slots: np.ndarray) -> None:
        if not len(slots):
            return
        held = int((self.held[slots] != NO_LABEL).sum())
        self.counts["expired"] += len(slots) - held
        self.counts["held_expired"] += held  # a held label is lost with its row
        self._drop(slots)

    def _drop(self, slots: np.ndarray) -> None:
        self.live[slots] = False
        if self._index is not None:
            for e in self.event_id[slots].tolist():
                self._index.pop(e, None)

    def _take(self, at: np.ndarray, labels: np.ndarray, label_ts: np.ndarray) -> Joined:
        j = Joined(
            self.event_id[at].copy(), self.x[at].copy(), self.score[at].copy(),
            self.shadow[at].copy(), self.alert[at].copy(), self.version[at].copy(),
            np.asarray(labels, bool), np.asarray(label_ts, np.int64) - self.ts[at],
            self.tag[at].copy(),
        )  # fmt: skip
        self._drop(at)
        ring = (self.done_head + np.arange(len(at))) % self.capacity
        self.done[ring] = j.event_id
        self.done_head = int((self.done_head + len(at)) % self.capacity)
        return j

    def stats(self) -> dict[str, int]:
        return {
            "waiting": int(self.live.sum()),
            "held": int((self.live & (self.held != NO_LABEL)).sum()),
            "orphans": len(self.o_id),
            **self.counts,
        }

    # -- state ------------------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        """The live rows (oldest first) and the orphans, as plain arrays."""
        order = (self.head + np.arange(self.capacity)) % self.capacity
        at = order[self.live[order]]
        return {
            "event_id": self.event_id[at], "ts": self.ts[at], "x": self.x[at],
            "score": self.score[at], "shadow": self.shadow[at], "alert": self.alert[at],
            "version": self.version[at], "held": self.held[at], "due": self.due[at],
            "tag": self.tag[at],
            "o_id": self.o_id, "o_label": self.o_label, "o_ts": self.o_ts,
            "clock": np.asarray(self.clock),
            "done": np.roll(self.done, -self.done_head),
            "counts": np.array([self.counts[k] for k in sorted(self.counts)], np.int64),
        }  # fmt: skip

    def load(self, a: dict[str, np.ndarray]) -> None:
        """Replace the state with saved :meth:`arrays` (the newest rows if they exceed capacity)."""
        self.live[:] = False
        self.head, self._index = 0, None
        self.o_id, self.o_label, self.o_ts = (
            np.zeros(0, np.int64),
            np.zeros(0, bool),
            np.zeros(0, np.int64),
        )
        n = min(len(a["event_id"]), self.capacity)
        if n:
            tail = slice(len(a["event_id"]) - n, None)
            held = a["held"][tail]
            self.add(
                a["event_id"][tail], a["ts"][tail], np.asarray(a["x"][tail], np.float32),
                a["score"][tail], a["alert"][tail], 0, a["shadow"][tail], held, a["due"][tail],
                a["tag"][tail] if "tag" in a else None,
            )  # fmt: skip
            self.version[:n] = a["version"][tail]
        self.o_id, self.o_label, self.o_ts = a["o_id"], a["o_label"].astype(bool), a["o_ts"]
        self.clock = int(a["clock"])
        done = np.asarray(a.get("done", np.zeros(0, np.int64)), np.int64)[-self.capacity :]
        self.done[:] = -1
        self.done[: len(done)] = done
        self.done_head = len(done) % self.capacity
        self.counts = dict(zip(sorted(self.counts), a["counts"].tolist(), strict=True))
