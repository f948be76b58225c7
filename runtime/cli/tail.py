"""``edgecore tail``: follow a topic of a running runtime, or read its log in a data folder.

Where to start: the oldest retained row (``--from-beginning``), an offset of every
partition (``--from``), the first row published at or after a time (``--since``, an
ISO-8601 time or an age such as ``10m``), or (live only) what comes next.
"""

from __future__ import annotations

import datetime
import re
import time
from pathlib import Path
from typing import Any

import typer

from runtime.cli.common import command, dumps, fail, plain, user_errors
from runtime.errors import ConfigError

_AGE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float | None = None) -> float:
    """``--since``: an age (``90s``, ``10m``, ``2h``, ``1d``) before ``now``, or an ISO-8601
    time (local time unless it has an offset or ``Z``), as wall-clock seconds.

    >>> parse_since("10m", now=1_000.0), parse_since("1970-01-01T00:01:00Z")
    (400.0, 60.0)
    >>> parse_since("yesterday")
    Traceback (most recent call last):
    ...
    runtime.errors.ConfigError: --since 'yesterday': give an ISO-8601 time (2025-05-01T12:00:00Z) or an age such as 90s, 10m, 2h, 1d
    """
    m = _AGE.fullmatch(text)
    if m is not None:
        now = time.time() if now is None else now
        return now - float(m.group(1)) * _SECONDS[m.group(2)]
    try:
        return datetime.datetime.fromisoformat(text.strip()).timestamp()
    except (ValueError, OverflowError, OSError):
        raise ConfigError(
            f"--since {text!r}: give an ISO-8601 time (2025-05-01T12:00:00Z) or an age "
            "such as 90s, 10m, 2h, 1d"
        ) from None


def parse_offset(text: str) -> int:
    """``--from``: an offset, an int >= 0.

    >>> parse_offset("42")
    42
    """
    try:
        offset = int(text.strip())
    except ValueError:
        raise ConfigError(f"--from {text!r}: give an offset, an integer >= 0") from None
    if offset < 0:
        raise ConfigError(f"--from {offset}: offsets start at 0")
    return offset


def _line(row: dict[str, Any], as_json: bool) -> str:
    if as_json:
        return dumps(row)
    return "  ".join(
        f"{k}={plain(v) if not isinstance(v, (int, float, str)) else v}" for k, v in row.items()
    )


@command()
@user_errors
def tail(
    topic: str = typer.Argument(..., help="Topic name, e.g. alerts, dead_letters, late_events."),
    address: str = typer.Option("auto", "--address", help="The Ray cluster the runtime runs on."),
    data: Path = typer.Option(
        None,
        "--data",
        help="Read the topic's committed log from this data folder instead (no Ray, no "
        "running runtime needed); prints from the oldest retained row unless --from or "
        "--since, and stops at the last commit.",
    ),
    from_beginning: bool = typer.Option(
        False, "--from-beginning", help="Start at the oldest retained row."
    ),
    from_offset: str = typer.Option(
        None, "--from", help="Start at this offset of every partition (rows before it retained)."
    ),
    since: str = typer.Option(
        None,
        "--since",
        help="Start at the first row published at or after this time: ISO-8601 "
        "(2025-05-01T12:00:00Z; local time without an offset) or an age (90s, 10m, 2h, 1d).",
    ),
    limit: int = typer.Option(
        0, "--limit", help="Stop after this many rows (0: follow until Ctrl-C)."
    ),
    idle_timeout: float = typer.Option(
        0, "--idle-timeout", help="Stop after this many seconds without rows (0: never)."
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per row (JSON lines)."),
) -> None:
    """Follow a topic of a running runtime live (as its own consumer group), or print its
    committed log from a data folder (--data)."""
    if sum([from_beginning, from_offset is not None, since is not None]) > 1:
        fail("--from-beginning, --from and --since each say where to start: give one of them")
    if limit < 0 or idle_timeout < 0:
        fail("--limit and --idle-timeout are >= 0 (0: no limit)")
    offset = parse_offset(from_offset) if from_offset is not None else None
    since_ts = parse_since(since) if since is not None else None
    if data is not None:
        _from_folder(topic, data, offset, since_ts, limit, as_json)
        return
    from runtime.cluster.handles import attach
    from runtime.topics.follow import Follower

    attach(address, hard=True)
    follower = Follower(topic, from_beginning, "tail", offset, since_ts)
    shown, last = 0, time.monotonic()
    try:
        while not limit or shown < limit:
            rows = follower.poll(min(1_000, limit - shown) if limit else 1_000)
            if rows.num_rows == 0:
                if idle_timeout and time.monotonic() - last > idle_timeout:
                    break
                time.sleep(0.2)
                continue
            last = time.monotonic()
            for row in rows.to_pylist():
                typer.echo(_line(row, as_json))
            shown += rows.num_rows
    except KeyboardInterrupt:
        pass


def _from_folder(
    topic: str, data: Path, offset: int | None, since: float | None, limit: int, as_json: bool
) -> None:
    from runtime.topics.folder import committed_topic, offsets_since, read_committed

    saved = committed_topic(data, topic)
    if offset is not None:
        end = max(saved.ends.values(), default=0)
        if offset > end:
            raise ConfigError(
                f"offset {offset} is past the end of topic {topic!r} in {data} (committed "
                f"end offsets: {saved.ends})"
            )
        starts = dict.fromkeys(saved.ends, offset)
    elif since is not None:
        starts = offsets_since(data, saved, since)
    else:
        starts = dict.fromkeys(saved.ends, 0)
    shown = 0
    for rows in read_committed(data, saved, starts):
        for row in rows.slice(0, limit - shown if limit else None).to_pylist():
            typer.echo(_line(row, as_json))
        shown += rows.num_rows
        if limit and shown >= limit:
            return
