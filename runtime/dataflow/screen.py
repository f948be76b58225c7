"""Screening a batch for an app: validate, check the site, run the steps, deduplicate.

:func:`screen` (and :func:`admit`, what it does after validation) splits a batch into
the rows the app's kind gets and dead letters, with counts that always reconcile:
``input = accepted + dead_lettered + duplicates + filtered``. :func:`ingest` and
:func:`ingest_many` screen batches on a runtime and send the accepted rows on to
their shards; the live gates at the edge screen and admit with their own dedup.

>>> import numpy as np, pyarrow as pa
>>> from runtime import EntityKind, EventSchema, Column
>>> from runtime.dataflow.app import App
>>> class Counter(EntityKind):
...     name, key, state = "counters", "user_id", {"clicks": "int64"}
>>> app = App("clicks", EventSchema("click", [Column("event_id", "int64"), Column("user_id", "string")]), Counter)
>>> batch = pa.table({"event_id": [1, 2, 3], "user_id": ["a", "b", None]})
>>> ok, dead, counts = screen(app, batch, "mem", 0, dedup=lambda ids: ids != 2)
>>> ok["event_id"].to_pylist(), dead["reason"].to_pylist(), counts["duplicates"]
([1], ['user_id: missing value'], 1)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from runtime.dataflow.app import App
from runtime.errors import ConfigError
from runtime.streams.schema import DEAD_LETTER_SCHEMA, dead_letters

if TYPE_CHECKING:
    from runtime.coordinator.runtime import Runtime


def screen(
    app: App,
    batch: pa.Table,
    source: str,
    position: int,
    dedup: Callable[[np.ndarray], np.ndarray],
    site_check: Callable[[pa.Table, pa.Table], tuple[pa.Table, pa.Table]] | None = None,
) -> tuple[pa.Table, pa.Table, dict[str, int]]:
    """Validate, check the site, run the app's steps and deduplicate one batch.

    Returns (accepted rows, dead letters, counts); the counts always reconcile. Shared
    by the coordinator's ingest and the ingest stages at the edge, which differ only in
    where the applied ids and the accepted rows go.
    """
    ok, dead = app.schema.validate(batch, source=source, first_position=position)
    return admit(app, ok, dead, batch.num_rows, source, position, dedup, site_check)


def admit(
    app: App,
    ok: pa.Table,
    dead: pa.Table,
    n_input: int,
    source: str,
    position: int,
    dedup: Callable[[np.ndarray], np.ndarray],
    site_check: Callable[[pa.Table, pa.Table], tuple[pa.Table, pa.Table]] | None = None,
) -> tuple[pa.Table, pa.Table, dict[str, int]]:
    """What :func:`screen` does after validation (``ok`` and ``dead`` of ``n_input`` rows):
    live gates validate where a request arrives and admit where its log is written."""
    if site_check is not None:
        ok, dead = site_check(ok, dead)
    # duplicates go before the steps: the steps may drop the id, and a redelivered
    # event must not be counted as filtered or dead-lettered a second time
    new = dedup(ok.column(app.event_id).to_numpy())
    ok = ok.filter(pa.array(new)) if not new.all() else ok
    valid = ok.num_rows
    accepted, failed = _apply_steps(app, ok, source, position)
    accepted, untimed = _check_time(app, accepted, source, position)
    failed = pa.concat_tables([failed, untimed]) if untimed.num_rows else failed
    dead = pa.concat_tables([dead, failed]) if failed.num_rows else dead
    counts = {
        "input": n_input,
        "accepted": accepted.num_rows,
        "dead_lettered": dead.num_rows,
        "duplicates": int((~new).sum()),
        # filter steps (a flat_map may add rows)
        "filtered": valid - failed.num_rows - accepted.num_rows,
    }
    return accepted, dead, counts


def _refused(rows: pa.Table, reasons: list[str], source: str, position: int, step: str) -> pa.Table:
    """Dead letters for rows refused after validation, where their own positions are not
    known any more: each keeps a distinct id (batch position, step, row)."""
    n = rows.num_rows
    return dead_letters(
        rows,
        reasons,
        source=source,
        positions=np.full(n, -1),
        step=step,
        ids=[f"{source}@{position}/{step}/{i}" for i in range(n)],
    )


def ingest(rt: Runtime, app: App, batch: pa.Table, source: str, position: int) -> dict[str, int]:
    """One batch through :func:`screen` and on to its shards; returns its counts.

    Refused rows are buffered as dead letters for the next checkpoint; accepted rows
    are on their way to their shards when this returns.
    """
    return ingest_many(rt, app, [(batch, source, position)])[0]


def ingest_many(
    rt: Runtime, app: App, batches: list[tuple[pa.Table, str, int]]
) -> list[dict[str, int]]:
    """Several small batches (e.g. concurrent HTTP requests) screened one by one, for
    their own counts, then sent on together: one call per shard instead of one per batch."""
    out, accepted_all, dead_all = [], [], []
    watermark = None
    for batch, source, position in batches:
        accepted, dead, counts = screen(
            app,
            batch,
            source,
            position,
            dedup=lambda ids: rt.checkpoints.dedup(app.kind.name, ids),
            site_check=lambda ok, dead, s=source, p=position: check_site(
                app, rt.sites(app.kind.name), ok, dead, s, p
            ),
        )
        out.append(counts)
        if dead.num_rows:
            dead_all.append(dead)
        if accepted.num_rows:
            accepted_all.append(accepted)
        if app.event_time is not None:
            watermark = rt.checkpoints.observe_time(app.kind.name, app.event_time, accepted, source)
    if dead_all:
        rt.dead_letter(pa.concat_tables(dead_all))
    if accepted_all:
        missing = [c for c in app.kind.needs() if c not in accepted_all[0].column_names]
        if missing:
            raise ConfigError(
                f"app {app.name!r}: step {app.kind.name!r} reads columns {missing}, which the "
                f"events lack after the steps (they have {accepted_all[0].column_names})"
            )
        rows = (
            accepted_all[0]
            if len(accepted_all) == 1
            else pa.concat_tables(accepted_all, promote_options="default")
        )
        rt.dispatch(app.kind.name, rows, watermark)
    elif watermark is not None:
        rt.routing.advance(app.kind.name, watermark)
    return out


def _apply_steps(
    app: App, table: pa.Table, source: str, position: int
) -> tuple[pa.Table, pa.Table]:
    """Run the app's steps over a validated batch; a failing step dead-letters the batch."""
    for step in app.steps:
        try:
            table = step(table)
        except Exception as err:
            reason = f"step {step.name!r} ({step.op}) failed: {type(err).__name__}: {err}"
            dead = _refused(
                table, [reason] * table.num_rows, source, position, f"{step.op}:{step.name}"
            )
            return table.slice(0, 0), dead
    return table, DEAD_LETTER_SCHEMA.empty_table()


def _check_time(app: App, table: pa.Table, source: str, position: int) -> tuple[pa.Table, pa.Table]:
    """Rows a step left without an event time cannot be windowed: dead letters, with why."""
    et = app.event_time
    if et is None or table.num_rows == 0:
        return table, DEAD_LETTER_SCHEMA.empty_table()
    if et.column not in table.column_names:
        raise ConfigError(
            f"app {app.name!r}: its steps drop the event time column {et.column!r}; keep it"
        )
    missing = table.column(et.column).is_null()
    if not pc.any(missing).as_py():
        return table, DEAD_LETTER_SCHEMA.empty_table()
    bad = table.filter(missing)
    reasons = [f"{et.column}: no event time after the steps"] * bad.num_rows
    dead = _refused(bad, reasons, source, position, "event_time")
    return table.filter(pc.invert(missing)), dead


def check_site(
    app: App,
    served: list[str],
    ok: pa.Table,
    dead: pa.Table,
    source: str,
    first: int,
    at_edge: str | None = None,
) -> tuple[pa.Table, pa.Table]:
    """For site-partitioned kinds: rows for a site not in ``served`` become dead letters
    (at an edge's ingest, ``at_edge``: rows naming another site arrived at the wrong edge)."""
    site_key = app.kind.site_key
    if not site_key or ok.num_rows == 0:
        return ok, dead
    known = pc.fill_null(
        pc.is_in(ok.column(site_key), value_set=pa.array(served, pa.string())), False
    ).to_numpy(zero_copy_only=False)
    if known.all():
        return ok, dead
    bad = ok.filter(pa.array(~known))
    sites = bad.column(site_key).to_pylist()
    if at_edge is not None:
        reasons = [f"{site_key}: {s!r} arrived at the edge of site {at_edge!r}" for s in sites]
        step = f"ingest:{at_edge}"
    else:
        reasons = [f"{site_key}: no shard serves site {s!r}" for s in sites]
        step = f"route:{app.kind.name}"
    more = _refused(bad, reasons, source, first, step)
    return ok.filter(pa.array(known)), pa.concat_tables([dead, more])
