"""What the console shows, read through Ray from a process attached to the runtime.

One poller thread reads the status board every second (placement every few), follows
every topic as a consumer group of its own, and keeps the last minutes in memory: each
browser is then served from memory, so ten open consoles cost the runtime what one does.
Entity lookups and SQL go to the runtime per request (the server runs them in threads).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from typing import Any

from runtime.console.figures import (
    RateWindow,
    jsonable,
    latency_buckets,
    placement_map,
    total_events,
    window_percentiles,
)
from runtime.errors import ConfigError, EdgecoreError

#: a board older than this means the runtime stopped updating it (drive loop stuck, or gone)
STALE_S = 5.0
#: the longest key a lookup takes: the same bound ingest puts on ids
MAX_KEY_BYTES = 128
MAX_SQL_CHARS = 20_000
FEED_CELL_CHARS = 300  # a dead letter's raw row can be megabytes: the feed shows its start


def _trim(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in jsonable(row).items():
        if isinstance(v, str) and len(v) > FEED_CELL_CHARS:
            v = v[:FEED_CELL_CHARS] + "…"
        out[k] = v
    return out


class ConsoleData:
    """The console's view of the runtime this process is attached to."""

    def __init__(
        self,
        data_dir: str | None = None,
        interval_s: float = 1.0,
        history_s: float = 300.0,
        feed_size: int = 500,
    ) -> None:
        self.data_dir = data_dir
        self.ray_address: str | None = None
        self.interval_s = interval_s
        self.rates = RateWindow(window_s=5.0)
        self.history: deque[dict[str, Any]] = deque(maxlen=int(history_s / interval_s))
        self.feed: deque[dict[str, Any]] = deque(maxlen=feed_size)
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self._frame: dict[str, Any] = {"state": "starting", "time": time.time()}
        self._status: dict[str, Any] = {}
        self._status_at = 0.0
        self._followers: dict[str, Any] = {}
        self._topics_at = 0.0
        self._latency_seen: deque[tuple[float, dict[str, dict[float, float]]]] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> ConsoleData:
        import ray

        # where to attach other tools (edgecore status/tail/console --address)
        self.ray_address = ray.get_runtime_context().gcs_address if ray.is_initialized() else None
        self.poll()  # the first page load has figures
        self._thread = threading.Thread(target=self._run, name="console-poller", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()

    # -- reading ---------------------------------------------------------------------------
    def frame(self) -> dict[str, Any]:
        with self._lock:
            return self._frame

    def points(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.history)

    def feed_since(self, seq: int, limit: int = 200) -> list[dict[str, Any]]:
        """Feed rows after ``seq`` (oldest first), at most the newest ``limit``."""
        with self._lock:
            rows = [r for r in self.feed if r["seq"] > seq]
        return rows[-limit:]

    def poll(self) -> None:
        """One round: the board, placement (every few seconds), new topic rows."""
        now = time.time()
        try:
            from runtime.cluster.status import attached_status, read_board

            board = read_board()
            if now - self._status_at >= 2.0 or not self._status:
                self._status, self._status_at = attached_status(), now
            error = None
        except Exception as err:  # the runtime is gone or restarting: say so, keep polling
            board, error = {}, f"{type(err).__name__}: {str(err)[:300]}"
        try:
            self._follow(now)
        except Exception as err:
            error = error or f"following topics: {str(err)[:300]}"
        frame = self._compute(board, now, error)
        with self._lock:
            self._frame = frame
            self.history.append(
                {
                    "t": now,
                    "eps": frame["events_per_s"],
                    "p50": (frame["latency"] or {}).get("p50"),
                    "p99": (frame["latency"] or {}).get("p99"),
                }
            )

    def _compute(self, board: dict[str, Any], now: float, error: str | None) -> dict[str, Any]:
        updated = board.get("updated_at")
        total = total_events(board)
        if updated is not None and total is not None:
            self.rates.add(float(updated), total)
        age = now - updated if updated else None
        state = "down" if not board else ("stale" if age is not None and age > STALE_S else "up")
        apps = board.get("apps") or {}
        totals: dict[str, float] = {}
        for summary in apps.values():
            for k in ("input", "accepted", "dead_lettered", "duplicates", "alerts"):
                if isinstance(summary.get(k), int | float):
                    totals[k] = totals.get(k, 0) + summary[k]
        cp = board.get("checkpoint_at")
        status = self._status if board else {}
        return jsonable(
            {
                "time": now,
                "ray_address": self.ray_address,
                "state": state,
                "error": error,
                "apps": apps,
                "updated_at": updated,
                "age_s": age,
                "events_per_s": self.rates.rate() if state == "up" else None,
                "events_source": "metrics" if board.get("metrics") else "apps",
                "totals": totals,
                "restarts": board.get("restarts"),
                "checkpoint_at": cp,
                "checkpoint_age_s": now - cp if cp else None,
                "latency": self._latency(board, now),
                "placement": placement_map({**status, "stages": board.get("stages", [])}),
                "models": board.get("models") or {},
                "kinds": self.kinds(status),
                "topics": sorted(self._followers),
            }
        )

    def _latency(self, board: dict[str, Any], now: float) -> dict[str, Any] | None:
        """Percentiles of what was measured in the last ~10 s (None: nothing measured), for
        the first stage that measured any: ingest to an alert, else to applied (a quiet
        minute has no alerts, but events are still being applied)."""
        found = dict(latency_buckets(board))
        if not found:
            return None
        seen = self._latency_seen
        seen.append((now, found))
        while len(seen) > 1 and seen[1][0] <= now - 10.0:
            seen.popleft()
        before = seen[0][1] if len(seen) > 1 else {}
        for name, buckets in found.items():
            window = window_percentiles(buckets, before.get(name) if len(seen) > 1 else None)
            if window:
                return {"name": name, **window}
        return None

    @staticmethod
    def kinds(status: dict[str, Any]) -> list[str]:
        """Entity kinds with shards in the running runtime."""
        from runtime.cluster import names

        out = set()
        for p in status.get("placement", []):
            try:
                out.add(names.parse_shard(p["actor"]).kind)
            except (ValueError, KeyError):
                continue
        return sorted(out)

    # -- the feed --------------------------------------------------------------------------
    def _follow(self, now: float) -> None:
        from runtime.topics.follow import Follower, topic_names

        if now - self._topics_at >= 5.0 or not self._followers:
            self._topics_at = now
            for topic in topic_names():
                if topic not in self._followers:
                    self._followers[topic] = Follower(topic, prefix="console")
        for topic, follower in list(self._followers.items()):
            try:
                rows = follower.poll(200).to_pylist()
            except EdgecoreError:  # its actors were replaced (a restart): follow anew
                del self._followers[topic]
                continue
            if not rows:
                continue
            with self._lock:
                for row in rows:
                    self.feed.append(
                        {"seq": next(self._seq), "topic": topic, "at": now, "row": _trim(row)}
                    )

    # -- on request ------------------------------------------------------------------------
    def entity(self, kind: str, key: str) -> dict[str, Any]:
        """The live profile of ``key``; ConfigError for a kind the runtime does not host."""
        from runtime.cli.lookup import shard_entity

        if not key or len(key.encode()) > MAX_KEY_BYTES:
            raise ConfigError(f"a key is 1 to {MAX_KEY_BYTES} bytes, not {len(key.encode())}")
        found = shard_entity(kind, key) if 0 < len(kind) <= 64 else None
        if found is None:  # no shards of that kind (asked now, not as of the last poll)
            kinds = self.frame().get("kinds") or []
            raise ConfigError(
                f"no entity kind {kind[:64]!r} in the running runtime; kinds: {kinds}"
            )
        return jsonable(found)

    def sql(self, text: str, max_rows: int = 500) -> dict[str, Any]:
        """``text`` over live entity state and the data folder's tables: the first
        ``max_rows`` rows as lists, with the column names and whether more were cut."""
        if not text.strip():
            raise ConfigError("no SQL given: type a query, e.g. SELECT count(*) FROM customers")
        if len(text) > MAX_SQL_CHARS:
            raise ConfigError(f"the query is over {MAX_SQL_CHARS:,} characters")
        from runtime.state.live import live_query

        table = live_query(text, data_dir=self.data_dir)
        shown = table.slice(0, max_rows)
        columns = [c.to_pylist() for c in shown.columns]
        return jsonable(
            {
                "columns": shown.column_names,
                "rows": [list(r) for r in zip(*columns, strict=True)] if columns else [],
                "row_count": table.num_rows,
                "truncated": table.num_rows > max_rows,
            }
        )
