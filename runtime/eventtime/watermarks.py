"""Event-time watermarks per source partition, with idle partitions.

A partition's watermark is the largest event time it delivered minus
``out_of_orderness_ms``: it promises nothing older will follow (what does is late). The
stream's watermark is the smallest over partitions, since each of them may still
deliver events that old. The runtime computes it at the sources and sends it with every
batch to every shard (``Windows.process(batch, watermark=...)``, ``Windows.advance``), so
a shard that got no rows of a key still closes that key's windows.

A partition that delivered nothing for ``idle_ms`` of processing time is idle: it stops
holding the watermark back, or one stalled partition would keep every window open. When
it delivers again its watermark counts again, but the combined watermark never goes
backwards (windows already fired stay fired; its older events are late). When every
partition is idle, the watermark moves up to the most advanced partition's.

>>> from runtime.testing import FakeClock
>>> clock = FakeClock()
>>> marks = Watermarks(out_of_orderness_ms=100, idle_ms=5_000, clock=clock)
>>> marks.current() == np.iinfo(np.int64).min  # nothing seen yet
True
>>> marks.observe("p0", np.array([1_000, 1_500])); marks.observe("p1", np.array([900]))
>>> marks.current()  # p1 is behind and holds the watermark back
800
>>> clock.advance(3); marks.observe("p0", np.array([4_000])); marks.current()
800
>>> clock.advance(3); marks.observe("p0", np.array([7_000])); marks.current()  # p1: 6 s silent
6900
>>> marks.idle()
['p1']
>>> marks.observe("p1", np.array([2_000])); marks.current()  # counts again, never goes back
6900
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from runtime.errors import ConfigError
from runtime.state.snapshot import pack, reading, unpack

_MIN = int(np.iinfo(np.int64).min)


def event_times(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Event times as int64 (timestamps as their integer count of their unit)."""
    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.int64())
    return column.to_numpy().astype(np.int64)


class Watermarks:
    """The watermark of a stream read from several partitions; a plain class, checkpointed
    with :meth:`snapshot`."""

    def __init__(
        self,
        out_of_orderness_ms: int,
        idle_ms: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if out_of_orderness_ms < 0:
            raise ConfigError(f"out_of_orderness_ms must be >= 0, not {out_of_orderness_ms}")
        if idle_ms is not None and idle_ms <= 0:
            raise ConfigError(f"idle_ms must be > 0 (or None: never idle), not {idle_ms}")
        self.out_of_orderness_ms, self.idle_ms, self.clock = out_of_orderness_ms, idle_ms, clock
        self._max: dict[str, int] = {}  # partition -> largest event time delivered
        self._seen: dict[str, float] = {}  # partition -> clock() when it last delivered
        self._wm = _MIN  # the last watermark returned: it never goes back

    def observe(self, partition: str, times: np.ndarray) -> None:
        """Note a batch of event times (ms) from ``partition``; an empty one is no sign of life."""
        if len(times) == 0:
            return
        self._note(partition, int(np.max(np.asarray(times).astype(np.int64, copy=False))))

    def observe_table(
        self,
        table: pa.Table,
        time_col: str,
        partition_col: str | None = None,
        default_partition: str = "0",
    ) -> None:
        """Like :meth:`observe` for a batch whose rows name their partition in ``partition_col``
        (all rows are from ``default_partition`` without one)."""
        times = event_times(table.column(time_col))
        if partition_col is None:
            self.observe(default_partition, times)
            return
        per = (
            pa.table({"p": table.column(partition_col).cast(pa.string()), "t": times})
            .group_by("p")
            .aggregate([("t", "max")])
        )
        # one Python step per partition present (a handful), not per row
        for part, mx in zip(
            per.column("p").to_pylist(), per.column("t_max").to_pylist(), strict=True
        ):
            self._note(part, mx)

    def _note(self, partition: str, max_time: int) -> None:
        self._max[partition] = max(self._max.get(partition, _MIN), max_time)
        self._seen[partition] = self.clock()

    def idle(self) -> list[str]:
        """Partitions that delivered nothing for ``idle_ms``."""
        if self.idle_ms is None:
            return []
        now = self.clock()
        return sorted(p for p, at in self._seen.items() if (now - at) * 1000 >= self.idle_ms)

    def current(self) -> int:
        """The stream's watermark: min over active partitions of their max time - out_of_orderness."""
        if not self._max:
            return self._wm
        idle = set(self.idle())
        active = [m for p, m in self._max.items() if p not in idle]
        mark = min(active) if active else max(self._max.values())
        self._wm = max(self._wm, mark - self.out_of_orderness_ms)
        return self._wm

    def snapshot(self) -> bytes:
        """Everything needed after a restart, as a ``watermarks`` snapshot (JSON, see
        :mod:`runtime.state.snapshot`); processing times are not kept (they are per process)."""
        meta = {
            "out_of_orderness_ms": self.out_of_orderness_ms,
            "idle_ms": self.idle_ms,
            "max": [[p, int(m)] for p, m in self._max.items()],  # pairs: keys keep their type
            "watermark": int(self._wm),
        }
        return pack("watermarks", meta)

    @staticmethod
    def restore(
        blob: bytes, clock: Callable[[], float] = time.monotonic, where: str | None = None
    ) -> Watermarks:
        """The saved state; each partition gets a fresh ``idle_ms`` to show it is alive.
        :class:`~runtime.errors.SnapshotError` (naming ``where``) for anything else.

        >>> again = Watermarks.restore(Watermarks(50, 1_000).snapshot())
        >>> again.out_of_orderness_ms, again.idle_ms, again.current() == _MIN
        (50, 1000, True)
        """
        meta = unpack(blob, "watermarks", where=where).meta
        with reading("watermarks", where):
            marks = Watermarks(int(meta["out_of_orderness_ms"]), meta["idle_ms"], clock)
            marks._max = {p: int(m) for p, m in meta["max"]}
            marks._wm = int(meta["watermark"])
        marks._seen = dict.fromkeys(marks._max, clock())
        return marks
