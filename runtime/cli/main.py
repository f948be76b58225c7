"""The ``edgecore`` command line: run the demo, replay files, look at entities, query with SQL.

Every command that reports results takes ``--json`` and then prints exactly one
JSON object on stdout. User errors exit with code 1 and a one-line reason.
"""

from __future__ import annotations

import datetime
import decimal
import functools
import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from runtime.errors import EdgecoreError

DATA_HELP = "Data folder: LanceDB tables (profiles, alerts, dead_letters) and checkpoints."
ADDRESS_HELP = "Attach to a running Ray cluster (e.g. 'auto' or 'HOST:6379') instead of starting an embedded one."

app = typer.Typer(
    help="edgecore: an actor-based edge-to-core runtime for real-time customer engagement, on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
out = Console()


def main() -> None:
    """Entry point: turns edgecore errors into a clear message and exit code 1."""
    try:
        app()
    except EdgecoreError as e:
        _say_error(str(e))
        sys.exit(1)


def _user_errors(fn: Any) -> Any:
    """Report edgecore errors as one line on stderr and exit 1 (also under CliRunner)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EdgecoreError as e:
            _fail(str(e))

    return wrapper


def _say_error(message: str) -> None:
    """One line, however long (scripts read it), with brackets in it kept as they are."""
    from rich.markup import escape

    err.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)


def _fail(message: str) -> None:
    _say_error(message)
    raise typer.Exit(1)


def _plain(v: Any) -> Any:
    """JSON for values SQL and Arrow hand back: decimals as numbers, times as ISO-8601."""
    if isinstance(v, decimal.Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    if isinstance(v, (datetime.datetime, datetime.date)):
        return v.isoformat()
    if hasattr(v, "item"):
        return v.item()
    return str(v)


def _dumps(data: Any) -> str:
    return json.dumps(data, default=_plain)


def _emit(data: dict[str, Any], as_json: bool, title: str) -> None:
    if as_json:
        typer.echo(_dumps(data))
        return
    table = Table(title=title, show_header=False)
    for k, v in data.items():
        if isinstance(v, float):
            v = f"{v:,.4f}" if abs(v) < 10 else f"{v:,.0f}"
        elif isinstance(v, int):
            v = f"{v:,}"
        table.add_row(k, str(v))
    out.print(table)


def _runtime(
    data: Path, address: str | None, shards: int | None, local: bool = False, **settings: Any
) -> Any:
    from runtime.coordinator.runtime import Runtime

    mode = "local" if local else "ray"
    if settings.get("policy") is not None:
        from runtime.cluster.placement import DefaultPolicy

        settings["policy"] = DefaultPolicy.from_file(settings["policy"])
    return Runtime(data_dir=str(data), address=address, shards=shards, mode=mode, **settings)


def _drive(rt: Any, the_app: Any, source: Any, total: int | None, as_json: bool) -> Any:
    from runtime.dataflow.app import run, setup

    setup(rt, the_app)
    if as_json:
        return run(rt, the_app, source)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,} events"),
        TextColumn("{task.fields[rate]:,.0f} ev/s"),
        TextColumn("alerts {task.fields[alerts]:,}"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    ) as bar:
        task = bar.add_task(the_app.name, total=total, rate=0.0, alerts=0)

        def progress(stats: Any) -> None:
            bar.update(
                task,
                completed=stats.input,
                rate=stats.events_per_s,
                alerts=stats.app.get("alerts", 0),
            )

        stats = run(rt, the_app, source, progress=progress)
        progress(stats)
        return stats


def _summary(stats: Any, data: Path) -> dict[str, Any]:
    return {
        "input": stats.input,
        "accepted": stats.accepted,
        "dead_lettered": stats.dead_lettered,
        "duplicates": stats.duplicates,
        **({"filtered": stats.filtered} if stats.filtered else {}),
        **stats.app,
        "seconds": round(stats.seconds, 3),
        "events_per_s": round(stats.events_per_s, 1),
        "resumed_from": stats.resumed_from,
        "data": str(data.resolve()),
    }


@app.command()
@_user_errors
def demo(
    events: int = typer.Option(
        1_000_000, "--events", "-n", help="How many synthetic transactions to run."
    ),
    rate: float = typer.Option(
        0, "--rate", help="Pace the stream to this many events/s (0: as fast as it goes)."
    ),
    customers: int = typer.Option(
        50_000, "--customers", help="Size of the synthetic customer base."
    ),
    data: Path = typer.Option(Path("edgecore-data"), "--data", help=DATA_HELP),
    shards: int = typer.Option(0, "--shards", help="Shards per entity kind (0: one per CPU)."),
    address: str = typer.Option(None, "--address", help=ADDRESS_HELP),
    placement: Path = typer.Option(
        None,
        "--placement",
        help="Placement overrides (JSON or TOML): edge_kinds, edge_stages, overrides.",
    ),
    app_name: str = typer.Option("fraud", "--app", help="Which installed app to demo."),
    edges: int = typer.Option(
        0,
        "--edges",
        help="Simulate a cluster on this machine: a core head node plus N edge nodes (sites eu-1..eu-N), "
        "with device telemetry handled at the edges alongside the transactions.",
    ),
    device_events: int = typer.Option(
        0, "--device-events", help="Telemetry readings with --edges (0: a fifth of --events)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Run the card-fraud demo on a synthetic stream, on an embedded local Ray.

    Generates customers with home locations and spending habits, devices,
    merchants and a small share of injected fraud; runs the fraud pipeline and
    reports throughput, alerts, and precision/recall against the injected labels.
    Running it again into the same data folder continues the stream.
    """
    from runtime.dataflow.apps import load_app

    if events < 1:
        _fail("--events must be at least 1")
    the_app = load_app(app_name)
    if the_app.demo is None:
        _fail(f"app {app_name!r} has no demo source")
    source = the_app.demo(events, rate or None, customers)
    if edges:
        _demo_edges(
            placement,
            the_app,
            source,
            events,
            rate,
            data,
            shards,
            edges,
            device_events or events // 5,
            as_json,
        )
        return
    with _runtime(data, address, shards or None, policy=placement) as rt:
        stats = _drive(rt, the_app, source, events, as_json)
        where = rt.placement()
    _emit(
        {
            "events": stats.input,
            **_summary(stats, data),
            "profiles": str((data / the_app.kind.name).resolve()) + ".lance",
            **({"placement": where} if as_json else {}),
        },
        as_json,
        f"edgecore demo: {the_app.name}",
    )


def _demo_edges(
    policy_file: Path | None,
    the_app: Any,
    source: Any,
    events: int,
    rate: float,
    data: Path,
    shards: int,
    edges: int,
    device_events: int,
    as_json: bool,
) -> None:
    """The demo across a simulated core + N edge cluster: telemetry at the edges, fraud at the core."""
    import dataclasses

    from runtime.cluster.local import LocalCluster
    from runtime.dataflow.apps import load_app
    from runtime.ingest.sites import run_sites

    with LocalCluster(edges) as cluster:
        devices = dataclasses.replace(load_app("devices"), sites=tuple(cluster.sites))
        per_site = max(1, device_events // edges)
        telemetry = {
            s: devices.demo(
                per_site, rate / edges if rate else None, 500 * edges, sites=devices.sites, site=s
            )
            for s in devices.sites
        }
        with _runtime(data, cluster.address, shards or 1, policy=policy_file) as rt:
            if not as_json:
                err.print(
                    f"telemetry: ingest, validation and device state at the edge of {', '.join(devices.sites)}"
                )
            dev_stats = run_sites(rt, devices, telemetry)
            stats = _drive(rt, the_app, source, events, as_json)
            placement = rt.placement()
    crossed = dev_stats.app
    summary = {
        "events": stats.input,
        **_summary(stats, data),
        "device_events": dev_stats.input,
        "device_events_per_s": round(dev_stats.events_per_s, 1),
        "maintenance_alerts": crossed.get("maintenance_rows", 0),
        "edge_to_core": {
            "rows": crossed.get("crossed_rows", 0),
            "bytes": crossed.get("crossed_bytes", 0),
            "raw_rows": crossed.get("raw_rows", 0),
            "raw_bytes": crossed.get("raw_bytes", 0),
        },
        "placement": placement,
    }
    if not as_json:
        summary["placement"] = ", ".join(f"{p['actor']}@{p['role']}/{p['site']}" for p in placement)
        summary["edge_to_core"] = (
            f"{summary['edge_to_core']['rows']:,} rows / {summary['edge_to_core']['bytes']:,} B "
            f"(raw: {summary['edge_to_core']['raw_rows']:,} rows / {summary['edge_to_core']['raw_bytes']:,} B)"
        )
    _emit(
        summary, as_json, f"edgecore demo: {the_app.name} + devices on 1 core + {edges} edge nodes"
    )


@app.command()
@_user_errors
def replay(
    file: Path = typer.Argument(..., help="Recorded events: .parquet, .csv or .jsonl/.ndjson."),
    app_name: str = typer.Option(
        "fraud", "--app", help="Installed app name or 'module:attribute'."
    ),
    data: Path = typer.Option(Path("edgecore-data"), "--data", help=DATA_HELP),
    batch_size: int = typer.Option(
        100_000, "--batch-size", help="Rows per batch read from the file."
    ),
    shards: int = typer.Option(0, "--shards", help="Shards per entity kind (0: one per CPU)."),
    address: str = typer.Option(None, "--address", help=ADDRESS_HELP),
    placement: Path = typer.Option(
        None,
        "--placement",
        help="Placement overrides (JSON or TOML): edge_kinds, edge_stages, overrides.",
    ),
    local: bool = typer.Option(False, "--local", help="Run in-process without Ray (debugging)."),
    checkpoint_every: int = typer.Option(
        2_000_000,
        "--checkpoint-every",
        help="Commit state and the file position after this many rows.",
    ),
    max_active: int = typer.Option(
        0,
        "--max-active",
        help="Entities kept in memory per shard before passivation (0: from --shard-memory-mb).",
    ),
    shard_memory_mb: float = typer.Option(
        1024, "--shard-memory-mb", help="Memory for entity state per shard."
    ),
    rate: float = typer.Option(
        0, "--rate", help="Pace the replay to this many events/s (0: as fast as it goes)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Replay a recorded stream through an app and update the data folder.

    Bad rows go to the dead_letters table with a reason; already applied event ids
    count as duplicates; an interrupted replay resumes from its last checkpoint.
    """
    from runtime.dataflow.apps import load_app
    from runtime.streams.sources import FileSource, Paced

    the_app = load_app(app_name)
    source = FileSource(file, batch_size=batch_size)
    if rate < 0:
        _fail("--rate must be >= 0")
    total = None
    if source.fmt == "parquet":
        import pyarrow.parquet as pq

        total = pq.ParquetFile(file).metadata.num_rows
    if checkpoint_every < 1 or max_active < 0 or shard_memory_mb <= 0:
        _fail("--checkpoint-every must be >= 1, --max-active >= 0 and --shard-memory-mb > 0")
    settings = {
        "policy": placement,
        "checkpoint_rows": checkpoint_every,
        "max_active": max_active or None,
        "shard_memory_mb": shard_memory_mb,
    }
    paced = Paced(source, rate) if rate else source
    with _runtime(data, address, shards or None, local, **settings) as rt:
        stats = _drive(rt, the_app, paced, total, as_json)
    _emit(_summary(stats, data), as_json, f"edgecore replay: {file.name}")


@app.command()
@_user_errors
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
    _emit(state, as_json, f"{kind} {key}")


@app.command()
@_user_errors
def sql(
    query: str = typer.Argument(
        ..., help="DuckDB SQL; tables are named as in the data folder (customers, alerts, ...)."
    ),
    data: Path = typer.Option(Path("edgecore-data"), "--data", help=DATA_HELP),
    as_json: bool = typer.Option(
        False, "--json", help="Print rows as a JSON object {columns, rows}."
    ),
    limit: int = typer.Option(50, "--limit", help="Rows to print in table mode."),
) -> None:
    """Run SQL over the data folder's tables with DuckDB."""
    from runtime.state.sql import query as run_query

    result = run_query(data, query)
    rows = result.to_pylist()
    if as_json:
        typer.echo(_dumps({"columns": result.column_names, "rows": rows}))
        return
    table = Table(*result.column_names)
    for r in rows[:limit]:
        table.add_row(*[str(v) for v in r.values()])
    out.print(table)
    if len(rows) > limit:
        err.print(f"({len(rows):,} rows, {limit} shown; use --limit or --json)")


@app.command()
@_user_errors
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
            typer.echo(_dumps(info))
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
            _emit(summary, False, f"app {name}")
        return
    from runtime.cli.lookup import folder_status

    info = folder_status(data)
    if as_json:
        typer.echo(_dumps(info))
        return
    table = Table("table", "rows", "versions")
    for t in info["tables"]:
        table.add_row(t["name"], f"{t['rows']:,}", str(t["versions"]))
    out.print(table)
    cp = info["checkpoint"]
    out.print(f"last checkpoint: epoch {cp['epoch']}, positions {cp['positions']}")


@app.command()
@_user_errors
def tail(
    topic: str = typer.Argument(
        ..., help="Topic name, e.g. alerts, maintenance, device_summaries."
    ),
    address: str = typer.Option("auto", "--address", help="The Ray cluster the runtime runs on."),
    from_beginning: bool = typer.Option(
        False, "--from-beginning", help="Start at the oldest retained row."
    ),
    limit: int = typer.Option(
        0, "--limit", help="Stop after this many rows (0: follow until Ctrl-C)."
    ),
    idle_timeout: float = typer.Option(
        0, "--idle-timeout", help="Stop after this many seconds without rows (0: never)."
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per row (JSON lines)."),
) -> None:
    """Follow a topic of a running runtime live (as its own consumer group)."""
    import time
    import uuid

    from runtime.cluster import names as actor_names
    from runtime.cluster.handles import attach, named_actors, resolve

    attach(address, hard=True)
    topics = named_actors(actor_names.TOPIC_PREFIX)
    handle = topics.get(actor_names.topic(topic))
    hosted = _hosted_topics()  # a kind's outputs live in its shards
    from runtime.topics.clients import TopicClient

    handle = TopicClient(handle) if handle is not None else None
    if handle is None and topic in hosted:
        from runtime.entities.clients import ShardClient
        from runtime.topics.colocated import ColocatedTopic

        shards = named_actors(actor_names.SHARD_PREFIX)
        hosts = [ShardClient(shards[n]) for n in hosted[topic] if n in shards]
        handle = ColocatedTopic(topic, hosts)
    if handle is None:
        known = sorted({*(t.removeprefix(actor_names.TOPIC_PREFIX) for t in topics), *hosted})
        _fail(f"no topic {topic!r} in the runtime at {address}; topics: {known}")
    from runtime.topics.topic import next_offsets

    group = f"tail-{uuid.uuid4().hex[:8]}"
    start = "earliest" if from_beginning else "latest"
    shown, last = 0, time.monotonic()
    try:
        while not limit or shown < limit:
            rows = resolve(
                [handle.poll(group, min(1_000, limit - shown) if limit else 1_000, start)]
            )[0]
            if rows.num_rows == 0:
                if idle_timeout and time.monotonic() - last > idle_timeout:
                    break
                time.sleep(0.2)
                continue
            last = time.monotonic()
            for row in rows.to_pylist():
                typer.echo(
                    _dumps(row)
                    if as_json
                    else "  ".join(
                        f"{k}={_plain(v) if not isinstance(v, (int, float, str)) else v}"
                        for k, v in row.items()
                    )
                )
            shown += rows.num_rows
            resolve([handle.commit(group, next_offsets(rows))])
    except KeyboardInterrupt:
        pass


def serve_shards() -> int:
    """Shards per kind for live ingest: half the CPUs. Requests bring a few hundred events;
    each shard call costs ~1 ms of fixed overhead whatever its size, and the ingest actor
    needs cores of its own (on 2 cores, 2 shards doubled p99 ingest->alert at 50k/s)."""
    import os

    return max(1, (os.cpu_count() or 2) // 2)


def _hosted_topics() -> dict[str, list[str]]:
    """Topics whose partitions live in shards, as the running runtime's board lists them."""
    from runtime.cluster.status import read_board

    return read_board().get("topics", {})


@app.command()
@_user_errors
def serve(
    app_name: str = typer.Option(
        "fraud", "--app", help="Installed app name or 'module:attribute'."
    ),
    http: str = typer.Option(
        "127.0.0.1:8080",
        "--http",
        help="HOST:PORT for HTTP ingest (POST /v1/events); 'none' to turn it off.",
    ),
    mqtt: str = typer.Option(
        None,
        "--mqtt",
        help="mqtt://HOST:PORT/TOPIC-FILTER: subscribe with QoS 1 and a persistent session.",
    ),
    token: str = typer.Option(
        None,
        "--token",
        envvar="EDGECORE_TOKEN",
        show_envvar=True,
        help="Bearer token for HTTP ingest; required off loopback. Prefer the environment "
        "variable: ps shows command lines to every user.",
    ),
    tls_cert: Path = typer.Option(None, "--tls-cert", help="TLS certificate (PEM) for HTTPS."),
    tls_key: Path = typer.Option(None, "--tls-key", help="TLS private key (PEM) for HTTPS."),
    max_body: int = typer.Option(
        8 * 2**20, "--max-body", help="Largest request body in bytes (a 413 beyond it)."
    ),
    sites: str = typer.Option(
        None,
        "--sites",
        help="Comma-separated sites to take traffic at (one ingest actor each, at that site's "
        "edge); default: the app's sites, else one on this node.",
    ),
    data: Path = typer.Option(Path("edgecore-data"), "--data", help=DATA_HELP),
    address: str = typer.Option(None, "--address", help=ADDRESS_HELP),
    local: bool = typer.Option(False, "--local", help="Run in-process without Ray (debugging)."),
    shards: int = typer.Option(
        0,
        "--shards",
        help="Shards per entity kind (0: half the CPUs: live batches are small, each shard "
        "call costs the same fixed overhead, and the ingest actor needs cores too).",
    ),
    checkpoint_seconds: float = typer.Option(
        30.0,
        "--checkpoint-seconds",
        help="Commit state this often (what was acknowledged since is in the write-ahead "
        "log: the interval bounds the replay after a crash, not what a crash can lose).",
    ),
    no_wal: bool = typer.Option(
        False,
        "--no-wal",
        help="Acknowledge before the write-ahead log has the events: faster, but a crash "
        "loses what was acknowledged since the last checkpoint.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON summary when stopped."),
) -> None:
    """Run an app as a service on live HTTP and/or MQTT ingest until SIGINT/SIGTERM.

    Every request is answered, and every MQTT message acknowledged, only once its events
    are in the write-ahead log in the data folder: a crash loses nothing acknowledged,
    and the next start replays the log's tail. On SIGTERM or SIGINT (to the process or
    its whole process group) intake stops (new requests get 503 with Retry-After), what
    was accepted is applied and committed, and the command exits 0; a second signal
    exits at once (the log covers it).
    """
    import os
    import signal
    import threading

    from runtime.dataflow.apps import load_app
    from runtime.dataflow.driver import drive
    from runtime.ingest.http import HttpOptions
    from runtime.ingest.live import LiveFeeder
    from runtime.ingest.mqtt import MqttOptions

    use_http = http.lower() != "none"
    host, _, port = http.rpartition(":")
    if use_http and (not host or not port.isdigit()):
        _fail(f"--http must be HOST:PORT or none, not {http!r}")
    if not use_http and not mqtt:
        _fail("nothing to serve: give --http HOST:PORT and/or --mqtt mqtt://HOST:PORT/TOPIC")
    for f in (tls_cert, tls_key):
        if f is not None and not f.is_file():
            _fail(f"no such file: {f}")
    # every input is checked before Ray starts (seconds), so a mistake costs none of it
    http_opts = (
        HttpOptions(
            host.strip("[]"),
            int(port),
            token or None,
            max_body,
            str(tls_cert) if tls_cert else None,
            str(tls_key) if tls_key else None,
        )
        if use_http
        else None
    )
    mqtt_opts = MqttOptions(mqtt) if mqtt else None
    the_app = load_app(app_name)
    site_list = [x.strip() for x in sites.split(",") if x.strip()] if sites else None
    site_list = site_list or list(the_app.sites) or ["local"]
    stop = threading.Event()
    scheme = "https" if tls_cert else "http"

    def opened(gates: list[Any]) -> None:
        from runtime.cluster.handles import resolve

        for site, info in feeder.opened.items():
            if info.get("replayed_records"):
                err.print(
                    f"edgecore: replayed {info['replayed_records']:,} logged groups at {site}"
                )
            if "http_port" in info:
                err.print(
                    f"edgecore: {the_app.name} on {scheme}://{host}:{info['http_port']}/v1/events"
                    f" at {site} (GET /healthz)"
                )
        if mqtt_opts is not None:
            ok = resolve([g.mqtt_connected(30.0) for g in gates])
            if all(ok):
                err.print(f"edgecore: {the_app.name} subscribed to {mqtt} (QoS 1)")
            else:
                err.print(f"edgecore: no MQTT broker at {mqtt} yet; retrying in the background")

    feeder = LiveFeeder(http_opts, mqtt_opts, site_list, durable=not no_wal, on_open=opened)

    def on_signal(signum: int, frame: Any) -> None:
        if stop.is_set():  # a second signal: go now; the log has what was acknowledged
            os._exit(128 + signum)
        stop.set()

    with _runtime(
        data, address, shards or serve_shards(), local, checkpoint_seconds=checkpoint_seconds
    ) as rt:
        # after the runtime started: ray.init() installs handlers of its own that would
        # replace ours (and exit without running them)
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        if not local:  # ingest runs in actors; this process only ticks and writes checkpoints
            from runtime.cluster.handles import yield_cpu

            yield_cpu()
        stats = drive(rt, the_app, [feeder], stop=stop)
    summary = {
        "input": stats.input,
        "accepted": stats.accepted,
        "dead_lettered": stats.dead_lettered,
        "duplicates": stats.duplicates,
        "filtered": stats.filtered,
        "replayed": stats.replayed,
        "checkpoints": stats.checkpoints,
        "restarts": stats.restarts,
        "data": str(data.resolve()),
    }
    if as_json:
        typer.echo(_dumps(summary))
    err.print(
        f"edgecore: stopped after {stats.input:,} events"
        + (f" ({stats.replayed:,} replayed from the log)" if stats.replayed else "")
        + f"; state committed in {data}"
    )


@app.command("run")
@_user_errors
def run_pipeline(
    target: str = typer.Argument(
        ..., help="module:attribute naming a Pipeline with a source (or a function returning one)."
    ),
    data: Path = typer.Option(Path("edgecore-data"), "--data", help=DATA_HELP),
    address: str = typer.Option(None, "--address", help=ADDRESS_HELP),
    local: bool = typer.Option(False, "--local", help="Run in-process without Ray (debugging)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Run a pipeline written with runtime.dataflow.builder.Pipeline, embedded or attached to a cluster."""
    import importlib

    from runtime.dataflow.builder import Pipeline

    module, _, attr = target.partition(":")
    if not attr:
        _fail(f"give the pipeline as module:attribute, not {target!r}")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        _fail(f"cannot load {target!r}: {e}")
    flow = obj() if callable(obj) and not isinstance(obj, Pipeline) else obj
    if not isinstance(flow, Pipeline):
        _fail(f"{target!r} is a {type(flow).__name__}, not a runtime.dataflow.builder.Pipeline")
    the_app = flow.build()
    if flow.input is None:
        _fail(f"pipeline {flow.name!r} has no .source(...)")
    with _runtime(data, address, None, local) as rt:
        stats = _drive(rt, the_app, flow.input, None, as_json)
    _emit(_summary(stats, data), as_json, f"edgecore run: {flow.name}")


if __name__ == "__main__":  # pragma: no cover
    main()
