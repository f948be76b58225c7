"""The end of a bounded stream (runtime.dataflow.driver): the last commit holds everything
read, and a stream whose last rows a checkpoint already committed does not commit again
(an empty second commit cost a 2M replay ~0.1 s); labels read after the last checkpoint
of the events still are committed."""

from __future__ import annotations

import numpy as np
import pytest

from runtime import Batch, Runtime
from runtime.dataflow.app import App, run
from runtime.state.reader import FolderReader
from runtime.streams.schema import Column, EventSchema
from runtime.testing import MemorySource, Tally

EVENTS = EventSchema("e", [Column("event_id", "int64"), Column("key", "string")])


class Labelled(Tally):
    """A tally that also takes labels (``key``, ``label``), counted per shard replica."""

    name = "labelled"
    feedback = EventSchema("l", [Column("key", "string"), Column("label", "int64")])

    def __init__(self, config: object = None) -> None:
        super().__init__(config)
        self.labels = 0

    def on_feedback(self, batch: Batch) -> None:
        self.labels += batch.events.num_rows

    def snapshot(self) -> bytes:
        return str(self.labels).encode()

    def restore(self, blob: bytes) -> None:
        self.labels = int(blob)

    def merge_snapshots(self, blobs: list[bytes]) -> bytes | None:
        return str(max(int(b) for b in blobs)).encode() if blobs else None


def rows(n: int) -> list[dict]:
    return [{"event_id": i, "key": f"k{i % 4}"} for i in range(n)]


@pytest.mark.parametrize(
    ("n", "every", "commits"),
    [(10, 10, 1), (10, 5, 2), (10, 4, 2), (12, 5, 3), (10, 100, 1), (0, 10, 1)],
)
def test_the_last_commit_holds_every_row_and_is_not_repeated(tmp_path, n, every, commits):
    app = App("t", EVENTS, Tally)
    with Runtime(data_dir=str(tmp_path), mode="local", shards=2, checkpoint_rows=every) as rt:
        stats = run(rt, app, MemorySource(rows(n), batch_size=5))
        folder = FolderReader(str(tmp_path))  # as run left it (a runtime commits at its stop)
        cp = folder.last_checkpoint()
        assert stats.checkpoints == cp.epoch == commits
        assert cp.positions["memory"] == n
        if n:
            assert int(np.sum(folder.read("tallies").column("n"))) == n


def test_labels_after_the_events_last_checkpoint_are_committed(tmp_path):
    app = App("t", EVENTS, Labelled)
    labels = [{"key": f"k{i % 4}", "label": 1} for i in range(15)]
    with Runtime(data_dir=str(tmp_path), mode="local", shards=1, checkpoint_rows=10) as rt:
        # events: 2 batches, committed after the second; labels: 3 batches, the last after it
        stats = run(
            rt,
            app,
            MemorySource(rows(10), batch_size=5),
            feedback=MemorySource(labels, batch_size=5, id="labels"),
        )
        cp = FolderReader(str(tmp_path)).last_checkpoint()
    assert stats.checkpoints == cp.epoch == 2
    assert cp.positions["memory"] == 10
    assert cp.positions["feedback:labels"] == 15
