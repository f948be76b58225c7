"""Reading a topic's committed log straight from a data folder (``edgecore tail --data``).

No Ray, no running runtime: the last checkpoint (``_checkpoints``) says how far each
partition's log is committed, and the segment files under ``<data>/_topics`` hold the
rows (memory-mapped). Rows past the committed end (written by a checkpoint whose commit
never landed, or by one in progress) are not shown.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from runtime.errors import ConfigError
from runtime.topics.log import OFFSET, PARTITION
from runtime.topics.segments import TOPICS_DIR, SegmentError, read_segment, segment_files, topic_dir


@dataclass
class CommittedTopic:
    """A topic as the last commit saved it: per partition, where its log ends on disk."""

    name: str
    ends: dict[int, int]
    labelled: bool  # rows carry ``_partition`` (several partitions, or hosted in shards)


def _partitions(saved: dict[str, Any]) -> list[dict[str, Any]]:
    if "colocated" in saved:  # one partition per shard (runtime.topics.colocated)
        return [part["partitions"][0] for part in saved["colocated"]]
    return list(saved["partitions"])


def committed_topics(data_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Every topic the last commit of ``data_dir`` saved (its snapshot)."""
    from runtime.state.store import Store

    if not Path(data_dir).is_dir():
        raise ConfigError(
            f"no data folder at {data_dir}: pass --data, or run `edgecore demo` first"
        )
    meta = Store(data_dir).last_checkpoint().meta
    return dict(meta.get("topics", {}))


def committed_topic(data_dir: str | Path, topic: str) -> CommittedTopic:
    """``topic`` as the last commit of ``data_dir`` saved it; ConfigError if it has no log
    there (names the topics that have one)."""
    topics = committed_topics(data_dir)
    saved = topics.get(topic)
    if saved is None:
        raise ConfigError(
            f"no topic {topic!r} in the last checkpoint of {data_dir}; topics: {sorted(topics)}"
        )
    parts = _partitions(saved)
    if not all(p.get("persisted") == p.get("next") for p in parts):
        raise ConfigError(
            f"topic {topic!r} of {data_dir} has no log on disk (the runtime ran with "
            "topic_log=False, or a version without it): follow it with --address"
        )
    ends = {i: int(p["next"]) for i, p in enumerate(parts)}
    return CommittedTopic(topic, ends, "colocated" in saved or len(parts) > 1)


def read_committed(
    data_dir: str | Path, topic: CommittedTopic, starts: dict[int, int]
) -> Iterator[pa.Table]:
    """The rows of each partition from ``starts[p]`` to its committed end, partition by
    partition, in offset order, with ``_offset`` (and ``_partition`` when labelled)."""
    root = Path(data_dir) / TOPICS_DIR
    for p, end in sorted(topic.ends.items()):
        start = starts.get(p, end)
        for path in segment_files(topic_dir(root, topic.name, p)):
            try:
                seg, table = read_segment(path)
            except FileNotFoundError:  # retention deleted it meanwhile
                continue
            except SegmentError as err:
                warnings.warn(f"{err}; skipped", stacklevel=2)
                continue
            lo, hi = max(start, seg.first), min(end, seg.end)
            if lo >= hi:
                continue
            rows = table.slice(lo - seg.first, hi - lo)
            if topic.labelled:
                rows = rows.append_column(PARTITION, pa.array(np.full(hi - lo, p, np.int64)))
            yield rows.append_column(OFFSET, pa.array(np.arange(lo, hi, dtype=np.int64)))


def offsets_since(data_dir: str | Path, topic: CommittedTopic, since: float) -> dict[int, int]:
    """Per partition, the first committed offset of a batch published at or after ``since``
    (wall-clock seconds); its end if none was."""
    root = Path(data_dir) / TOPICS_DIR
    out: dict[int, int] = {}
    for p, end in topic.ends.items():
        out[p] = end
        for path in segment_files(topic_dir(root, topic.name, p)):
            try:
                seg, _ = read_segment(path)
            except (FileNotFoundError, SegmentError):
                continue
            hit = next((f for f, _, w in seg.batches if w >= since and f < end), None)
            if hit is not None:
                out[p] = hit
                break
    return out
