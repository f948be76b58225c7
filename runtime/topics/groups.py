"""Consumer groups of a topic: pull with at-least-once delivery, partition by partition.

``poll`` hands out rows after the group's position, ``commit`` records what the group
has processed, and a group that restarts (``seek_committed``) is given again everything
after its last commit. A group that retention overtakes moves to the log start and
counts the rows it never got as ``skipped``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pyarrow as pa

from runtime.errors import ConfigError
from runtime.topics.log import GroupCursor, PartitionLog


class ConsumerGroups:
    """Every group's cursor over a topic's partition logs."""

    def __init__(self, logs: list[PartitionLog], log: Callable[[int], PartitionLog]) -> None:
        self.logs = logs
        self.log = log  # a partition's log, its number checked
        self.cursors: dict[str, GroupCursor] = {}

    def cursor(self, group: str, start: str = "earliest") -> GroupCursor:
        if start not in ("earliest", "latest"):
            raise ConfigError(f"start must be 'earliest' or 'latest', not {start!r}")
        g = self.cursors.get(group)
        if g is None:
            at = [log.first() if start == "earliest" else log.next for log in self.logs]
            n = len(self.logs)
            g = GroupCursor(list(at), list(at), list(at), [None] * n, [0] * n)
            self.cursors[group] = g
        return g

    def catch_up(self, g: GroupCursor, p: int) -> None:
        """Move a group behind the log start to it, counting the rows it never got."""
        first = self.logs[p].first()
        if g.position[p] < first:
            g.skipped[p] += max(0, first - g.delivered[p])
            g.position[p] = first
            g.delivered[p] = max(g.delivered[p], first)

    def catch_up_all(self) -> None:
        # at expiry time, so ``groups()`` shows a group falling behind when it happens
        for g in self.cursors.values():
            for p in range(len(self.logs)):
                self.catch_up(g, p)

    def chosen(self, partitions: Iterable[int] | None) -> list[int]:
        if partitions is None:
            return list(range(len(self.logs)))
        chosen = sorted({int(p) for p in partitions})
        for p in chosen:
            self.log(p)  # validates
        return chosen

    def poll(
        self,
        group: str,
        max_rows: int = 10_000,
        start: str = "earliest",
        partitions: Iterable[int] | None = None,
    ) -> list[tuple[int, int, pa.Table]]:
        """The next rows for ``group`` from every partition (or ``partitions``), with the
        offset columns; a new group starts at the ``earliest`` retained offset or the
        ``latest`` (only what comes next).

        ``max_rows`` is shared fairly: each partition gets an equal share, what one
        cannot use goes to the others, and the partition that gets the remainder of an
        uneven split rotates from call to call. Rows come partition by partition, each
        in offset order.
        """
        chosen = self.chosen(partitions)  # validated before a group is made
        g = self.cursor(group, start)
        k = len(chosen)
        turn = g.turn % k if k else 0
        g.turn += 1
        active = chosen[turn:] + chosen[:turn]
        got: dict[int, list[tuple[int, pa.Table]]] = {p: [] for p in chosen}
        budget = max(0, max_rows)
        for p in active:
            self.catch_up(g, p)
        # rounds of equal shares; a partition that returns less than its share is done,
        # so there are at most k rounds
        while budget > 0 and active:
            share, extra = divmod(budget, len(active))
            still = []
            for i, p in enumerate(active):
                want = share + (1 if i < extra else 0)
                if want == 0:
                    still.append(p)
                    continue
                part = self.logs[p].read(g.position[p], want)
                n = sum(rows.num_rows for _, rows in part)
                if n:
                    got[p] += part
                    g.position[p] = part[-1][0] + part[-1][1].num_rows
                    g.delivered[p] = max(g.delivered[p], g.position[p])
                    budget -= n
                if n == want:
                    still.append(p)
            active = still
        return [(p, first, rows) for p in chosen for first, rows in got[p]]

    def commit(self, group: str, offsets: dict[int, int] | int) -> None:
        """``group`` processed everything before ``offsets[p]`` in each partition ``p``
        (an int: partition 0). Commits only move forward."""
        items = offsets if isinstance(offsets, dict) else {0: offsets}
        for p in items:
            self.log(int(p))  # validates
        new = group not in self.cursors
        g = self.cursor(group)
        for p, offset in items.items():
            p, offset = int(p), int(offset)
            if new:  # a group that commits before it polls resumes at its commit
                g.position[p] = g.delivered[p] = g.origin[p] = offset
            c = g.committed[p]
            g.committed[p] = offset if c is None else max(c, offset)

    def committed(self, group: str, partition: int = 0) -> int | None:
        """What ``group`` committed for ``partition`` (None: nothing yet)."""
        g = self.cursors.get(group)
        return None if g is None else g.committed[partition]

    def seek(self, group: str, offsets: dict[int, int] | int) -> int:
        """Move ``group`` to ``offsets[p]`` in each partition ``p`` given (an int: that
        offset in every partition); what it polls next starts there (its commits do not
        move: ``commit`` says what it processed). Returns the sum of its positions.

        An offset before the log start moves the group to the start, and the rows it never
        got count as skipped (a new group seeking there never got any); one past the end
        is refused with ConfigError, as is a negative one.
        """
        n = len(self.logs)
        items = offsets if isinstance(offsets, dict) else dict.fromkeys(range(n), offsets)
        for p, offset in items.items():
            log = self.log(int(p))  # validates
            if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
                raise ConfigError(f"offsets are ints >= 0, not {offset!r} (partition {p})")
            if offset > log.next:
                raise ConfigError(
                    f"offset {offset} of partition {p} is past its end ({log.next}): the "
                    f"offsets there run {log.first()}..{log.next}"
                )
        new = group not in self.cursors
        g = self.cursor(group)
        for p, offset in items.items():
            p = int(p)
            g.position[p] = offset
            if new:  # it was handed nothing: what retention dropped after here is skipped
                g.delivered[p] = g.origin[p] = offset
            self.catch_up(g, p)
        return sum(g.position)

    def seek_committed(self, group: str) -> int:
        """Rewind ``group`` to its last commit in every partition: what it polled since is
        delivered again. Returns the sum of its positions (for one partition: its position);
        ``groups()`` has them per partition.

        Where retention has dropped rows after the commit, the group resumes at the log
        start; rows it was handed before are not counted as skipped again (it got them
        once), rows it never got are."""
        g = self.cursor(group)
        for p in range(len(self.logs)):
            g.position[p] = g.resume_at(p)
            self.catch_up(g, p)
        return sum(g.position)

    def describe(self) -> dict[str, dict[str, Any]]:
        """Per group: position, committed offset, lag (rows not yet committed) and skipped
        (rows retention dropped before the group got them), summed over partitions, and
        the same under ``partitions`` for each partition."""
        out: dict[str, dict[str, Any]] = {}
        for name, g in self.cursors.items():
            per = {
                p: {
                    "position": g.position[p],
                    "committed": g.resume_at(p),
                    "lag": log.next - g.resume_at(p),
                    "skipped": g.skipped[p],
                }
                for p, log in enumerate(self.logs)
            }
            out[name] = {
                k: sum(v[k] for v in per.values())
                for k in ("position", "committed", "lag", "skipped")
            }
            out[name]["partitions"] = per
        return out

    def snapshot(self) -> dict[str, Any]:
        """Each group's committed offsets (where it resumes) and skipped counts."""
        return {
            name: {
                "committed": [g.resume_at(p) for p in range(len(self.logs))],
                "skipped": list(g.skipped),
            }
            for name, g in self.cursors.items()
        }

    def restore(self, saved: dict[str, Any]) -> None:
        """Groups resume from their committed offsets (the logs restored already); those
        before a log's start count as skipped."""
        n, ends = len(self.logs), [log.next for log in self.logs]
        self.cursors = {}
        for name, saved_group in saved.items():
            committed = [
                min(int(c), end) for c, end in zip(saved_group["committed"], ends, strict=False)
            ]
            committed += [0] * (n - len(committed))  # new partitions: from 0
            skipped = [int(s) for s in saved_group.get("skipped", [])]
            skipped += [0] * (n - len(skipped))
            # nothing after the commit is known to have been handed out: ``delivered``
            # starts there, so rows the new log no longer has count as skipped
            self.cursors[name] = GroupCursor(
                list(committed), list(committed), list(committed), [*committed], skipped
            )
        self.catch_up_all()
