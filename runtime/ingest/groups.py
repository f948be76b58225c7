"""What a gate logs: the submissions of one group commit, admitted together, and the
write-ahead log records they become (and are read back from after a crash).

A group commit admits every queued submission (dedup against what was applied or logged
before and within the group, the app's steps, the site check), then logs one record of
accepted events, one of the deduplicated ids when the app's steps may rewrite them, and
one of dead letters; the last record of a group is marked, so a replay after a crash
takes whole groups only.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from runtime.cluster.handles import ready, resolve
from runtime.dataflow.app import App, new_counts
from runtime.dataflow.screen import admit, check_site
from runtime.ingest.wal import WriteAheadLog
from runtime.state.index import SeenSet

if TYPE_CHECKING:
    from runtime.topics.clients import TopicClient


@dataclass
class Submission:
    ok: pa.Table
    dead: pa.Table
    n_input: int
    source: str
    position: int
    future: Future
    #: rows of the kind's feedback input (labels), validated against its feedback schema
    feedback: bool = False


@dataclass
class Logged:
    """One group commit as the dispatcher sends it on."""

    seq: int  # the seq of its last log record: the gate's position is past it once sent
    events: pa.Table | None
    dead: pa.Table | None
    ids: np.ndarray
    counts: dict[str, int]
    #: feedback rows (labels), sent to the shards after the events, and their counts
    labels: pa.Table | None = None
    feedback_counts: dict[str, int] | None = None
    #: when it was logged and acknowledged (epoch seconds): where ingest latency starts
    at: float = field(default_factory=time.time)


def feedback_counts(n_input: int = 0, accepted: int = 0, dead: int = 0) -> dict[str, int]:
    return {"feedback_in": n_input, "feedback_accepted": accepted, "feedback_dead_lettered": dead}


def _add(a: dict[str, int] | None, b: dict[str, int] | None) -> dict[str, int] | None:
    if a is None or b is None:
        return a or b
    return {k: a.get(k, 0) + b.get(k, 0) for k in {*a, *b}}


def merge(items: list[Logged]) -> Logged:
    """Consecutive logged groups as one (their events and dead letters in log order)."""
    if len(items) == 1:
        return items[0]
    events = [i.events for i in items if i.events is not None and i.events.num_rows]
    dead = [i.dead for i in items if i.dead is not None]
    labels = [i.labels for i in items if i.labels is not None and i.labels.num_rows]
    counts = new_counts()
    fb: dict[str, int] | None = None
    for i in items:
        for k, v in i.counts.items():
            counts[k] += v
        fb = _add(fb, i.feedback_counts)
    # labels go after the events of all the groups: one whose event is in a later group
    # would wait for it anyway (the kind keeps labels that come before their events)
    return Logged(
        items[-1].seq,
        pa.concat_tables(events, promote_options="default") if events else None,
        pa.concat_tables(dead, promote_options="default") if dead else None,
        np.concatenate([i.ids for i in items]),
        counts,
        pa.concat_tables(labels, promote_options="default") if labels else None,
        fb,
        min(i.at for i in items),  # the oldest: what waited longest
    )


class Handover:
    """What a gate sent on to its shards since the last cut: the applied ids and the dead
    letters, for the checkpoint; dead letters are on the dead letters' topic at once."""

    def __init__(self, dead_topic: TopicClient | None, max_pending: int = 8) -> None:
        self.dead_topic, self.max_pending = dead_topic, max_pending
        self.ids: list[np.ndarray] = []
        self.dead: list[pa.Table] = []
        self._pending: list[Any] = []

    def sent(self, item: Logged) -> None:
        if item.dead is not None:
            self.dead.append(item.dead)
            if self.dead_topic is not None:  # on the topic now; in the table at the checkpoint
                self._pending.append(self.dead_topic.publish(item.dead))
                if len(self._pending) > self.max_pending:  # bounded: a flood waits for the topic
                    done, self._pending = ready(
                        self._pending, len(self._pending) - self.max_pending
                    )
                    resolve(done)
        self.ids.append(item.ids)

    def take(self) -> tuple[list[np.ndarray], list[pa.Table]]:
        """(ids, dead letters) sent since the last take; the topic has the dead letters."""
        resolve(self._pending)
        self._pending = []
        ids, self.ids = self.ids, []
        dead, self.dead = self.dead, []
        return ids, dead


@dataclass
class Admitted:
    """One group, admitted: what is logged and what each submission is answered."""

    events: pa.Table | None
    dead: pa.Table | None
    ids: np.ndarray
    counts: dict[str, int]
    answers: list[tuple[Future, Any]]
    labels: pa.Table | None = None
    feedback_counts: dict[str, int] | None = None


def admit_group(
    app: App, group: list[Submission], seen: SeenSet, site: str | None, source: str
) -> Admitted:
    """Admit ``group`` as one. A submission whose own admission raises gets the error as
    its answer, alone. Feedback submissions (labels) are not deduplicated by event id:
    the id names the event they label, and the kind drops a label it already joined."""
    pending = SeenSet(capacity=1 << 40)  # ids new in this group, until it is durable

    def dedup(ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        fresh = ~seen.contains(ids)
        fresh[fresh] = pending.add_new(ids[fresh])
        return fresh

    site_check = None
    if site:

        def site_check(ok: pa.Table, dead: pa.Table) -> tuple[pa.Table, pa.Table]:
            return check_site(app, [site], ok, dead, source, -1, at_edge=site)

    accepted, dead, answers, labels = [], [], [], []
    counts = new_counts()
    fb: dict[str, int] | None = None
    for sub in group:
        if sub.feedback:
            fb = _add(fb, feedback_counts(sub.n_input, sub.ok.num_rows, sub.dead.num_rows))
            got = {"input": sub.n_input, "accepted": sub.ok.num_rows}
            got["dead_lettered"] = sub.dead.num_rows
            if sub.ok.num_rows:
                labels.append(sub.ok)
            refused = sub.dead
        else:
            try:
                ok, refused, got = admit(
                    app, sub.ok, sub.dead, sub.n_input, sub.source, sub.position, dedup, site_check
                )
            except Exception as err:  # this submission's own problem, e.g. a step's bug
                sub.future.set_exception(err)
                continue
            if ok.num_rows:
                accepted.append(ok)
            for k, v in got.items():
                counts[k] += v
        if refused.num_rows:
            dead.append(refused)
            top = Counter(refused.column("reason").to_pylist()).most_common(5)
            got = {**got, "reasons": dict(top)}  # what a client most needs to fix
        answers.append((sub.future, got))
    return Admitted(
        pa.concat_tables(accepted, promote_options="default") if accepted else None,
        pa.concat_tables(dead, promote_options="default") if dead else None,
        pending.ids(),
        counts,
        answers,
        pa.concat_tables(labels, promote_options="default") if labels else None,
        fb,
    )


def log_records(app: App, a: Admitted) -> list[tuple[dict[str, Any], pa.Table]]:
    """The write-ahead log records of one admitted group (the last one marked)."""
    records: list[tuple[dict[str, Any], pa.Table]] = []
    empty = pa.table({app.event_id: pa.array([], pa.int64())})
    events = a.events if a.events is not None else empty
    records.append(({"type": "events", "counts": a.counts}, events))
    if app.steps:  # the steps may drop or rewrite ids: log the ones deduplicated
        records.append(({"type": "ids"}, pa.table({"event_id": pa.array(a.ids, pa.int64())})))
    if a.labels is not None or a.feedback_counts is not None:
        labels = (
            a.labels if a.labels is not None else pa.table({"event_id": pa.array([], pa.int64())})
        )
        records.append(({"type": "labels", "counts": a.feedback_counts}, labels))
    if a.dead is not None:
        records.append(({"type": "dead"}, a.dead))
    records[-1][0]["last"] = True
    return records


def replay(wal: WriteAheadLog, committed: int, event_id: str) -> Iterator[Logged]:
    """The whole groups logged from ``committed`` on, in order."""
    pending: dict[str, Any] = {}
    for seq, meta, table in wal.replay(committed):
        kind = meta.get("type")
        if kind == "events":
            pending = {"events": table, "counts": meta.get("counts", {}), "dead": None}
            pending["ids"] = table.column(event_id).to_numpy()
        elif kind == "dead":
            pending["dead"] = table
        elif kind == "ids":
            pending["ids"] = table.column("event_id").to_numpy()
        elif kind == "labels":
            pending["labels"] = table if table.num_rows else None
            pending["feedback_counts"] = meta.get("counts")
        if meta.get("last"):
            ids = np.asarray(pending.get("ids", np.zeros(0, np.int64)), dtype=np.int64)
            counts = {**new_counts(), **pending.get("counts", {})}
            yield Logged(
                seq,
                pending.get("events"),
                pending.get("dead"),
                ids,
                counts,
                pending.get("labels"),
                pending.get("feedback_counts"),
            )
            pending = {}
