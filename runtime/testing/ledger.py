"""An app whose output proves, event by event, that nothing was lost or applied twice.

Fault tests (``scripts/chaos.py``, ``tests/test_chaos.py``) need to tell, after a run with
a crash in it, exactly which events the committed state is missing and which it holds
twice, from outside the runtime and without trusting its counters. Counts alone cannot:
one lost and one doubled event of a key cancel out. Here every key gets at most
:data:`MAX_PER_KEY` events and its ``j``-th event carries the value ``3**j``: a key's
committed ``total`` written in base 3 has digit ``j`` = how many times its ``j``-th event
was applied (exact in float64 up to 3**33), so :func:`account` names every lost (digit 0)
and every doubled (digit 2) event. Multiplicities of 3 or more carry into the next digit;
the count ``n`` catches that (the digits then do not add up to it).

The :class:`Ledger` kind also publishes each event's id to the ``entries`` topic, which
``ledger_app`` persists to the ``entries`` table keyed by ``event_id`` (a sink actor to
break, and output rows to check: each valid event exactly once). Rows without a key are
dead-lettered (each bad event must be in ``dead_letters`` exactly once).

>>> events = ledger_events(40, seed=1, bad_every=10)
>>> events.num_rows, events.column("key").null_count
(40, 4)
>>> good = events.filter(events["key"].is_valid())
>>> state = expected_state(events)
>>> account(events, state, entries=good.column("event_id").to_pylist()).clean
True
>>> k = next(iter(state)); n, total = state[k]
>>> state[k] = (n + 1, total + 1.0)  # its first event (worth 3**0) applied twice
>>> found = account(events, state); (len(found.lost), len(found.doubled))
(0, 1)
>>> state[k] = (n, total + 1.0 - 3.0)  # ... and its second lost: the count alone matches
>>> found = account(events, state); (len(found.lost), len(found.doubled))
(1, 1)
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from runtime.dataflow.app import App
from runtime.entities.kind import Batch, EntityKind
from runtime.streams.schema import Column, EventSchema

#: events per key at most: 3**MAX_PER_KEY * 2 stays exact in float64 and below the fraud
#: app's largest plausible amount (1,000,000) for 12
MAX_PER_KEY = 12

SCHEMA = EventSchema(
    "ledger_events",
    [
        Column("event_id", "int64"),
        Column("key", "string"),
        Column("value", "float64"),
        Column("site", "string", required=False),
    ],
)


class Ledger(EntityKind):
    """Per key: how many events (``n``) and the sum of their values (``total``); every
    event's id goes out on ``entries``."""

    name = "ledgers"
    key = "key"
    state = {"n": "int64", "total": "float64"}
    topics = ("entries",)

    def apply(self, batch: Batch) -> None:
        np.add.at(batch.state.cols["n"], batch.slots, 1)
        values = batch.events.column("value").to_numpy(zero_copy_only=False)
        np.add.at(batch.state.cols["total"], batch.slots, values)
        batch.emit("entries", batch.events.select(["event_id", self.key]))


class SiteLedger(Ledger):
    """A :class:`Ledger` partitioned by the ``site`` column (shards per site, at its edge)."""

    name = "site_ledgers"
    site_key = "site"


#: ``edgecore replay FILE --app runtime.testing.ledger:ledger_app`` (or ``serve``)
ledger_app = App("ledger", SCHEMA, Ledger, sinks={"entries": ("entries", "event_id")})


def site_ledger_app(sites: tuple[str, ...]) -> App:
    """The ledger partitioned by site, for multi-node runs (one ingest stage per site)."""
    return App(
        "site_ledger",
        SCHEMA,
        SiteLedger,
        sinks={"entries": ("site_entries", "event_id")},
        sites=sites,
    )


def ledger_events(
    n: int,
    seed: int = 0,
    per_key: int = 8,
    bad_every: int = 0,
    sites: tuple[str, ...] = (),
) -> pa.Table:
    """``n`` events in a seeded random order: ids 1..n, ``per_key`` per key (the last key
    fewer), the ``j``-th of a key worth ``3**j``; with ``bad_every``, one event in that many
    has no key (a dead letter); with ``sites``, each key belongs to one site."""
    if not 1 <= per_key <= MAX_PER_KEY:
        raise ValueError(f"per_key must be between 1 and {MAX_PER_KEY}, not {per_key}")
    rng = np.random.default_rng(seed)
    key_of = rng.permutation(np.arange(n) // per_key)  # each key index per_key times
    seen: Counter[int] = Counter()
    j = np.empty(n, dtype=np.int64)
    for i, k in enumerate(key_of.tolist()):
        j[i] = seen[k]
        seen[k] += 1
    keys: list[str | None] = [f"k{k}" for k in key_of.tolist()]
    if bad_every:
        for i in range(bad_every // 2, n, bad_every):
            keys[i] = None
    cols: dict[str, Any] = {
        "event_id": pa.array(np.arange(1, n + 1, dtype=np.int64)),
        "key": pa.array(keys, pa.string()),
        "value": pa.array(np.power(3.0, j)),
    }
    if sites:
        cols["site"] = pa.array([sites[k % len(sites)] for k in key_of.tolist()], pa.string())
    return pa.table(cols)


def expected_state(events: pa.Table, key: str = "key") -> dict[str, tuple[int, float]]:
    """What a run that applies every valid event once commits: key -> (n, total)."""
    out: dict[str, tuple[int, float]] = {}
    for k, v in zip(
        events.column(key).to_pylist(), events.column("value").to_pylist(), strict=True
    ):
        if k is not None:
            n, total = out.get(k, (0, 0.0))
            out[k] = (n + 1, total + v)
    return out


@dataclass
class Account:
    """Event ids lost or doubled, with where each was seen (``why``: one line per finding)."""

    lost: set[int] = field(default_factory=set)
    doubled: set[int] = field(default_factory=set)
    #: keys in the state that no event of the stream has
    unknown: int = 0
    why: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.lost and not self.doubled and not self.unknown

    @property
    def n_lost(self) -> int:
        return len(self.lost)

    @property
    def n_doubled(self) -> int:
        return len(self.doubled) + self.unknown


def _digits(total: float, width: int) -> list[int] | None:
    """``total`` in base 3, ``width`` digits; None if it is not a whole number or needs more."""
    t = int(total)
    if t != total or t < 0:
        return None
    out = []
    for _ in range(width):
        t, d = divmod(t, 3)
        out.append(d)
    return out if t == 0 else None


def account(
    events: pa.Table,
    state: dict[str, tuple[int, float]],
    entries: Iterable[int] | None = None,
    dead: Iterable[int] | None = None,
    key: str = "key",
) -> Account:
    """Compare what a run committed with the stream it was given.

    ``state``: key -> (n, total) as committed; ``entries``: the event ids of the output rows
    (None: not checked); ``dead``: the event ids of the dead letters (None: not checked)."""
    found = Account()
    ids = events.column("event_id").to_pylist()
    # key -> {digit j: event id}: the event worth 3**j
    by_key: dict[str, dict[int, int]] = {}
    bad: list[int] = []
    cols = zip(ids, events.column(key).to_pylist(), events.column("value").to_pylist(), strict=True)
    for eid, k, v in cols:
        if k is None:
            bad.append(eid)
        else:
            by_key.setdefault(k, {})[round(math.log(v, 3))] = eid
    for k, mine in by_key.items():
        n, total = state.get(k, (0, 0.0))
        digits = _digits(total, max(mine) + 1)
        if (
            digits is not None
            and sum(digits) == n
            and all(d == 0 or j in mine for j, d in enumerate(digits))
        ):
            found.lost.update(e for j, e in mine.items() if digits[j] == 0)
            found.doubled.update(e for j, e in mine.items() if digits[j] >= 2)
        else:  # applied 3+ times, or garbage: say so
            found.why.append(f"state of {k!r}: n={n} total={total!r} does not decode")
            first = next(iter(mine.values()))
            (found.doubled if n >= len(mine) else found.lost).add(first)
    for k in set(state) - set(by_key):  # applied from nowhere: counted as doubled
        found.why.append(f"state has a key the stream has not: {k!r}")
        found.unknown += 1
    good = {e for m in by_key.values() for e in m.values()}
    for name, got, want in (("entries", entries, good), ("dead_letters", dead, set(bad))):
        if got is None:
            continue
        counts = Counter(got)
        missing = want - set(counts)
        extra = {e: c for e, c in counts.items() if c > 1 or e not in want}
        found.lost |= missing
        found.doubled |= set(extra)
        if missing or extra:
            found.why.append(f"{name}: {len(missing)} missing, {len(extra)} twice or unknown")
    if found.lost or found.doubled:
        found.why.append(
            f"event ids lost {sorted(found.lost)[:5]}..., doubled {sorted(found.doubled)[:5]}..."
        )
    return found


def dead_letter_ids(raw: Iterable[str]) -> list[int]:
    """The event ids in dead letters' ``raw`` JSON (rows without one are skipped)."""
    out = []
    for text in raw:
        try:
            eid = json.loads(text).get("event_id")
        except (ValueError, AttributeError):
            continue
        if isinstance(eid, int):
            out.append(eid)
    return out
