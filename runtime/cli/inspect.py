"""Commands that read: one ``entity``, ``sql`` over the data folder, ``status``
(``tail`` is in :mod:`runtime.cli.tail`)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from runtime.cli.common import (
    DATA_HELP,
    cell,
    command,
    dumps,
    emit,
    err,
    out,
    plain,
    user_errors,
)


@command()
@user_errors
def entity(
    kind: str = typer.Argument(
        ..., help="Entity kind, e.g. 'customer' (or the table name 'customers')."
    ),
    key: str = typer.Argument(..., help="The entity's key, e.g. c42."),
    data: Path = typer.Option(Path("edgecore-data"), "--data", help=DATA_HELP),
    address: str = typer.Option(
        None, "--address", help="Read live state from a runtime running on this Ray cluster."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Show one entity's profile: live from a running runtime with --address, else from LanceDB."""
    from runtime.cli.lookup import live_entity, stored_entity

    state = live_entity(address, kind, key) if address else None
    if state is None:
        state = stored_entity(data, kind, key)
    emit(state, as_json, f"{kind} {key}")


@command()
@user_errors
def sql(
    query: str = typer.Argument(
        ...,
        help="DuckDB SQL; tables are named as in the data folder (customers, alerts, ...); "
        "with --live, <topic>_stream is a topic of the running runtime.",
    ),
    data: Path = typer.Option(
        None,
        "--data",
        help=DATA_HELP + " With --address: default, the running runtime's own folder (if "
        "this machine sees it); its other tables join the live ones.",
    ),
    address: str = typer.Option(
        None,
        "--address",
        help="Query the live entity state of the runtime running on this Ray cluster (each "
        "shard's state at a batch boundary), shadowing the stored tables of the same name.",
    ),
    parquet: list[str] = typer.Option(
        [],
        "--parquet",
        help="NAME=PATH: a view of Parquet (a file, a folder, or a glob; Hive partitions "
        "as columns). Repeatable. No other file can be read or written by the SQL.",
    ),
    live: bool = typer.Option(
        False,
        "--live",
        help="A continuous query over <topic>_stream (with --address): the query runs over "
        "each batch of rows as it arrives and prints its rows; filters and projections are "
        "per row, aggregates are per batch; the tables it joins are as they were when it "
        "started. Ctrl-C, --limit or --idle-timeout end it.",
    ),
    from_beginning: bool = typer.Option(
        False, "--from-beginning", help="--live: start at the topic's oldest retained row."
    ),
    idle_timeout: float = typer.Option(
        0, "--idle-timeout", help="--live: stop after this many seconds without rows (0: never)."
    ),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="Print rows as a JSON object {columns, rows} (--live: one JSON object per row).",
    ),
    limit: int | None = typer.Option(
        None,
        "--limit",
        help="Rows to print in table mode (default 50); --live: stop after this many rows "
        "(default: follow until Ctrl-C).",
    ),
) -> None:
    """Run SQL with DuckDB over the data folder's tables, or the live state (--address)."""
    from runtime.cli.common import fail

    views = dict(_name_path(p) for p in parquet)
    if live:
        if not address:
            fail("--live follows a topic of a running runtime: give --address (e.g. auto)")
        _follow(query, address, data, views, from_beginning, idle_timeout, limit or 0, as_json)
        return
    if address:
        from runtime.cluster.handles import attach
        from runtime.state.live import live_query, runtime_data_dir

        attach(address, hard=True)
        result = live_query(query, data or runtime_data_dir(), views)
    else:
        from runtime.state.sql import query as run_query

        result = run_query(data or Path("edgecore-data"), query, views)
    rows = result.to_pylist()
    if as_json:
        typer.echo(dumps({"columns": result.column_names, "rows": rows}))
        return
    limit = 50 if limit is None else limit
    table = Table(*result.column_names)
    for r in rows[:limit]:
        table.add_row(*[cell(v, grouping=False) for v in r.values()])
    out.print(table)
    if len(rows) > limit:
        err.print(f"({len(rows):,} rows, {limit} shown; use --limit or --json)")


def _name_path(spec: str) -> tuple[str, str]:
    from runtime.errors import ConfigError

    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise ConfigError(f"--parquet takes NAME=PATH (e.g. alerts=exports/alerts), not {spec!r}")
    return name, path


def _follow(
    query: str,
    address: str,
    data: Path | None,
    views: dict[str, str],
    from_beginning: bool,
    idle_timeout: float,
    limit: int,
    as_json: bool,
) -> None:
    """``sql --live``: print the rows of the continuous query as they come."""
    from runtime.cluster.handles import attach
    from runtime.state.live import follow_query, runtime_data_dir

    attach(address, hard=True)
    folder = data or runtime_data_dir()
    shown = 0
    try:
        for result in follow_query(query, folder, views, from_beginning, idle_timeout):
            for row in result.to_pylist():
                typer.echo(
                    dumps(row) if as_json else "  ".join(f"{k}={plain(v)}" for k, v in row.items())
                )
                shown += 1
                if limit and shown >= limit:
                    return
    except KeyboardInterrupt:
        pass


@command()
@user_errors
def status(
    data: Path = typer.Option(Path("edgecore-data"), "--data", help=DATA_HELP),
    address: str = typer.Option(
        None,
        "--address",
        help="Report on the runtime running on this Ray cluster: nodes, placement, stages.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Without --address: the data folder's tables, row counts, versions and last checkpoint.

    With --address: every node with its role, site and liveness; every runtime actor
    with the node Ray says it runs on; per-shard throughput and batches in flight.
    """
    if address:
        from runtime.cluster.status import cluster_status

        info = cluster_status(address)
        if as_json:
            typer.echo(dumps(info))
            return
        nodes = Table("node", "role", "site", "alive", "address", title="nodes")
        for n in info["nodes"]:
            nodes.add_row(n["node_id"][:12], n["role"], n["site"], str(n["alive"]), n["address"])
        out.print(nodes)
        actors = Table(
            "actor", "kind", "role", "site", "node", title="placement (as Ray reports it)"
        )
        for p in info["placement"]:
            actors.add_row(p["actor"], p["kind"], p["role"], p["site"], p["node_id"][:12])
        out.print(actors)
        stages = Table("stage", "rows", "rows/s", "queue depth", title="stages")
        for st in info["stages"]:
            stages.add_row(
                st["actor"], f"{st['rows']:,}", f"{st['rows_per_s']:,.0f}", str(st["queue_depth"])
            )
        out.print(stages)
        for name, summary in info["apps"].items():
            emit(summary, False, f"app {name}")
        for kind, model in info.get("models", {}).items():
            metrics = {k: v for k, v in (model.get("metrics") or {}).items() if v is not None}
            emit({"version": model.get("version"), **metrics}, False, f"model {kind}")
        return
    from runtime.cli.lookup import folder_status

    info = folder_status(data)
    if as_json:
        typer.echo(dumps(info))
        return
    table = Table("table", "rows", "versions")
    for t in info["tables"]:
        table.add_row(t["name"], f"{t['rows']:,}", str(t["versions"]))
    out.print(table)
    cp = info["checkpoint"]
    out.print(f"last checkpoint: epoch {cp['epoch']}, positions {cp['positions']}")
