"""The NEXMark stream generated while a query reads it: a resumable runtime source.

Flink's NEXMark source generates its events as the job consumes them, so generation is
inside every figure measured with it. :class:`NexmarkSource` does the same: it draws
the stream chunk by chunk (:func:`actors.nexmark.generator.chunks`), turns each chunk
into the unioned stream (:func:`~actors.nexmark.generator.union`) and hands it out in
batches. With ``prefetch`` > 0 a thread generates the next chunks while the runtime
works on the current one (NumPy's random draws and Arrow's kernels release the GIL, so
on a machine with a spare core the two overlap; Flink's source is a task of its own too).

The events are those of :func:`~actors.nexmark.generator.generate` for the same
config, in event order, padded like the reference's (``extra``) unless
``NexmarkConfig.extra_bytes`` says otherwise: a query gives the same answer on this
source as on the pregenerated stream (:func:`pregenerated`).

>>> src = NexmarkSource(NexmarkConfig(events=250, chunk_events=100), batch_size=120)
>>> [(b.num_rows, end) for b, end in src.batches(start=10)]
[(120, 130), (120, 250)]
>>> src.id
'nexmark:seed=1:events=250:chunk_events=100'
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import fields
from typing import TypeVar

import pyarrow as pa

from actors.nexmark.config import NexmarkConfig
from actors.nexmark.generator import chunks, generate, union
from runtime.errors import ConfigError

T = TypeVar("T")
_END = object()


def pregenerated(config: NexmarkConfig) -> pa.Table:
    """The whole stream at once, as :class:`NexmarkSource` yields it (its rows, in order).

    >>> cfg = NexmarkConfig(events=300, chunk_events=100)
    >>> pregenerated(cfg).equals(pa.concat_tables(b for b, _ in NexmarkSource(cfg).batches()))
    True
    """
    return union(generate(config))


class NexmarkSource:
    """``config.events`` NEXMark events, generated batch by batch as they are read.

    ``batch_size``: rows per batch handed to the runtime (the last may be shorter); it
    does not change the stream, ``config.chunk_events`` does. ``prefetch``: chunks a
    background thread generates ahead (0: generate in the reading thread). Position p
    continues the stream at its p-th event, so a restart resumes exactly where the last
    checkpoint left it.
    """

    def __init__(
        self,
        config: NexmarkConfig = NexmarkConfig(),  # noqa: B008 (frozen)
        batch_size: int = 50_000,
        prefetch: int = 2,
    ) -> None:
        if batch_size < 1 or prefetch < 0:
            raise ConfigError(
                f"NexmarkSource: batch_size must be >= 1 and prefetch >= 0, "
                f"not {batch_size} and {prefetch}"
            )
        self.config, self.batch_size, self.prefetch = config, batch_size, prefetch
        # every setting that changes the rows is in the id (those left at their default
        # are not named): a checkpoint of another stream is never resumed by this one
        default = NexmarkConfig()
        changed = [
            f"{f.name}={getattr(config, f.name)}"
            for f in fields(config)
            if f.name not in ("seed", "events")
            and getattr(config, f.name) != getattr(default, f.name)
        ]
        self.id = ":".join(["nexmark", f"seed={config.seed}", f"events={config.events}", *changed])

    def batches(self, start: int = 0) -> Iterator[tuple[pa.Table, int]]:
        """Yield (rows, position after them) from position ``start`` on."""
        parts = ((lo, union(tables)) for lo, tables in chunks(self.config, start))
        if self.prefetch:
            parts = _ahead(parts, self.prefetch)
        pending: list[pa.Table] = []
        held = 0  # rows in pending
        pos = start
        for lo, table in parts:
            if lo < start:
                table = table.slice(start - lo)
            pending.append(table)
            held += table.num_rows
            while held >= self.batch_size:
                batch, pending, held = _take(pending, self.batch_size)
                pos += batch.num_rows
                yield batch, pos
        if held:
            batch, pending, held = _take(pending, held)
            yield batch, pos + batch.num_rows


def _take(pending: list[pa.Table], n: int) -> tuple[pa.Table, list[pa.Table], int]:
    """The first ``n`` rows of ``pending`` as one contiguous table, and what is left."""
    merged = pa.concat_tables(pending) if len(pending) > 1 else pending[0]
    batch, rest = merged.slice(0, n), merged.slice(n)
    if batch.column(0).num_chunks > 1:  # a batch across chunks: one copy, contiguous
        batch = batch.combine_chunks()
    return batch, ([rest] if rest.num_rows else []), rest.num_rows


def _ahead(items: Iterator[T], depth: int) -> Iterator[T]:
    """``items``, produced by a daemon thread up to ``depth`` ahead of the reader; its
    errors are raised in the reader, and closing the reader stops the thread."""
    box: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                box.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_END)
        except BaseException as err:  # handed to the reader, raised there
            put(err)

    worker = threading.Thread(target=work, name="nexmark-generator", daemon=True)
    worker.start()
    try:
        while True:
            item = box.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        worker.join(timeout=10)


__all__ = ["NexmarkSource", "pregenerated"]
