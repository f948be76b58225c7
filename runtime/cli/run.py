"""Commands that drive a stream through an app: ``demo``, ``replay`` and ``run``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from runtime.cli.common import (
    ADDRESS_HELP,
    DATA_HELP,
    cell,
    command,
    emit,
    err,
    fail,
    open_runtime,
    parse_duration,
    user_errors,
)
from runtime.streams.export import EXPORT_HELP

#: options the commands that run an app share (typer reads these defaults; never mutated)
SHARDS_OPTION = typer.Option(0, "--shards", help="Shards per entity kind (0: one per CPU).")
ADDRESS_OPTION = typer.Option(None, "--address", help=ADDRESS_HELP)
EXPORT_OPTION = typer.Option(None, "--export", help=EXPORT_HELP)
PLACEMENT_OPTION = typer.Option(
    None,
    "--placement",
    help="Placement overrides (JSON or TOML): edge_kinds, edge_stages, overrides.",
)


def _drive(
    rt: Any, the_app: Any, source: Any, total: int | None, as_json: bool, feedback: Any = None
) -> Any:
    from runtime.dataflow.app import run, setup

    setup(rt, the_app)
    if as_json:
        return run(rt, the_app, source, feedback=feedback)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,} events"),
        TextColumn("{task.fields[rate]:,.0f} ev/s"),
        TextColumn("{task.fields[headline]}"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    ) as bar:
        task = bar.add_task(the_app.name, total=total, rate=0.0, headline="")

        def progress(stats: Any) -> None:
            # the app's first summary field (the fraud app's: alerts), whatever it is
            first = next(iter(stats.app.items()), None)
            bar.update(
                task,
                completed=stats.input,
                rate=stats.events_per_s,
                headline=f"{first[0]} {cell(first[1])}" if first else "",
            )

        stats = run(rt, the_app, source, progress=progress, feedback=feedback)
        progress(stats)
        return stats


def app_report(the_app: Any, stats: Any) -> dict[str, Any]:
    """What the app reports about a run (its ``report`` hook), else its summary."""
    return dict(the_app.report(stats)) if the_app.report is not None else dict(stats.app)


def _summary(stats: Any, data: Path, the_app: Any) -> dict[str, Any]:
    return {
        "input": stats.input,
        "accepted": stats.accepted,
        "dead_lettered": stats.dead_lettered,
        "duplicates": stats.duplicates,
        **({"filtered": stats.filtered} if stats.filtered else {}),
        **app_report(the_app, stats),
        "seconds": round(stats.seconds, 3),
        "events_per_s": round(stats.events_per_s, 1),
        "resumed_from": stats.resumed_from,
        "data": str(data.resolve()),
    }


@command()
@user_errors
def demo(
    events: int = typer.Option(
        1_000_000, "--events", "-n", help="How many synthetic transactions to run."
    ),
    rate: float = typer.Option(
        0, "--rate", help="Pace the stream to this many events/s (0: as fast as it goes)."
    ),
    customers: int = typer.Option(
        50_000, "--customers", help="Entities in the synthetic stream (fraud: customers)."
    ),
    data: Path = typer.Option(Path("edgecore-data"), "--data", help=DATA_HELP),
    shards: int = SHARDS_OPTION,
    address: str = ADDRESS_OPTION,
    placement: Path = PLACEMENT_OPTION,
    export: Path = EXPORT_OPTION,
    app_name: str = typer.Option("fraud", "--app", help="Which installed app to demo."),
    edges: int = typer.Option(
        0,
        "--edges",
        help="Simulate a cluster on this machine: a core head node plus N edge nodes (sites "
        "eu-1..eu-N), with --edge-app's stream handled at the edges alongside --app's.",
    ),
    edge_app_name: str = typer.Option(
        "maintenance",
        "--edge-app",
        help="With --edges: the site-partitioned app whose demo runs at the edges "
        "(maintenance: failure predictions with lead times; devices: plain telemetry).",
    ),
    edge_events: int = typer.Option(
        0,
        "--edge-events",
        "--device-events",
        help="Events of --edge-app with --edges (0: a fifth of --events).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Run an app's demo on its synthetic stream, on an embedded local Ray.

    The default, fraud, generates customers with home locations and spending habits,
    devices, merchants and a small share of injected fraud, and reports throughput,
    alerts, and precision/recall against the injected labels: each app reports its own.
    Running it again into the same data folder continues the stream.
    """
    from runtime.dataflow.apps import load_app

    if events < 1:
        fail("--events must be at least 1")
    the_app = load_app(app_name)
    if the_app.demo is None:
        fail(f"app {app_name!r} has no demo source")
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
            edge_app_name,
            edge_events or events // 5,
            as_json,
            export,
        )
        return
    with open_runtime(
        data, address, shards or None, policy=placement, export_dir=export_folder(export)
    ) as rt:
        stats = _drive(rt, the_app, source, events, as_json)
        where = rt.placement()
        evaluated = _evaluate(rt, the_app, source, as_json)
    emit(
        {
            "events": stats.input,
            **_summary(stats, data, the_app),
            **evaluated,
            "profiles": str((data / the_app.kind.name).resolve()) + ".lance",
            **({"placement": where} if as_json else {}),
        },
        as_json,
        f"edgecore demo: {the_app.name}",
    )


def _evaluate(rt: Any, the_app: Any, source: Any, as_json: bool) -> dict[str, Any]:
    """The app's own evaluation of what the demo learned (e.g. hit-rates on held-out data)."""
    if the_app.demo_report is None:
        return {}
    if not as_json:
        err.print(f"{the_app.name}: evaluating against held-out data")
    return the_app.demo_report(rt, source)


def _demo_edges(
    policy_file: Path | None,
    the_app: Any,
    source: Any,
    events: int,
    rate: float,
    data: Path,
    shards: int,
    edges: int,
    edge_app_name: str,
    edge_events: int,
    as_json: bool,
    export: Path | None = None,
) -> None:
    """The demo across a simulated core + N edge cluster: ``edge_app_name``'s stream at the
    edges (one ingest stage per site), ``the_app``'s at the core."""
    import dataclasses

    from runtime.cluster.local import LocalCluster
    from runtime.dataflow.apps import load_app
    from runtime.ingest.sites import run_sites

    edge_app = load_app(edge_app_name)
    if not edge_app.kind.site_key or edge_app.demo is None:
        fail(f"--edge-app {edge_app_name!r} must be partitioned by site and have a demo source")
    with LocalCluster(edges) as cluster:
        edge_app = dataclasses.replace(edge_app, sites=tuple(cluster.sites))
        per_site = max(1, edge_events // edges)
        sources = {
            s: edge_app.demo(
                per_site, rate / edges if rate else None, 500 * edges, sites=edge_app.sites, site=s
            )
            for s in edge_app.sites
        }
        with open_runtime(
            data, cluster.address, shards or 1, policy=policy_file, export_dir=export_folder(export)
        ) as rt:
            if not as_json:
                err.print(f"{edge_app.name}: at the edge of {', '.join(edge_app.sites)}")
            edge_stats = run_sites(rt, edge_app, sources)
            stats = _drive(rt, the_app, source, events, as_json)
            placement = rt.placement()
    summary = {
        "events": stats.input,
        **_summary(stats, data, the_app),
        edge_app.name: {
            "sites": list(edge_app.sites),
            "events": edge_stats.input,
            "events_per_s": round(edge_stats.events_per_s, 1),
            **app_report(edge_app, edge_stats),
        },
        "placement": placement,
    }
    if not as_json:
        summary["placement"] = ", ".join(f"{p['actor']}@{p['role']}/{p['site']}" for p in placement)
    emit(
        summary,
        as_json,
        f"edgecore demo: {the_app.name} + {edge_app.name} on 1 core + {edges} edge nodes",
    )


@command()
@user_errors
def replay(
    file: Path = typer.Argument(..., help="Recorded events: .parquet, .csv or .jsonl/.ndjson."),
    app_name: str = typer.Option(
        "fraud", "--app", help="Installed app name or 'module:attribute'."
    ),
    data: Path = typer.Option(Path("edgecore-data"), "--data", help=DATA_HELP),
    batch_size: int = typer.Option(
        100_000, "--batch-size", help="Rows per batch read from the file."
    ),
    shards: int = SHARDS_OPTION,
    address: str = ADDRESS_OPTION,
    placement: Path = PLACEMENT_OPTION,
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
    predictions: bool = typer.Option(
        False,
        "--predictions",
        help="Also persist every event's score to the predictions table (apps that score).",
    ),
    labels: Path | None = typer.Option(
        None,
        "--labels",
        help="Labels that come apart from the events (event_id, customer_id, is_fraud, "
        "label_ts), read beside them; apps that learn.",
    ),
    label_delay: str | None = typer.Option(
        None,
        "--label-delay",
        help="Learn from each event's own label only this long (event time) after the "
        "event, e.g. 30m, 2h, 1d: simulates late labels on a labelled file.",
    ),
    export: Path = EXPORT_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Replay a recorded stream through an app and update the data folder.

    Bad rows go to the dead_letters table with a reason; already applied event ids
    count as duplicates; an interrupted replay resumes from its last checkpoint.
    """
    from runtime.dataflow.apps import load_app
    from runtime.streams.sources import FileSource, Paced

    the_app = load_app(app_name)
    if predictions:
        if the_app.with_predictions is None:
            fail(f"app {the_app.name!r} makes no predictions: drop --predictions")
        the_app = the_app.with_predictions()
    if label_delay is not None:
        if the_app.with_label_delay is None:
            fail(f"app {the_app.name!r} learns from no labels: drop --label-delay")
        the_app = the_app.with_label_delay(parse_duration(label_delay, "--label-delay"))
    if labels is not None and the_app.kind.feedback is None:
        fail(f"app {the_app.name!r} takes no labels: drop --labels")
    source = FileSource(file, batch_size=batch_size)
    feedback = FileSource(labels, batch_size=batch_size) if labels is not None else None
    header = source.columns()  # a file without a required column is refused before Ray starts
    if header is not None:
        the_app.schema.require(header, where=str(file))
    if rate < 0:
        fail("--rate must be >= 0")
    total = None
    if source.fmt == "parquet":
        import pyarrow.parquet as pq

        total = pq.ParquetFile(file).metadata.num_rows
    if checkpoint_every < 1 or max_active < 0 or shard_memory_mb <= 0:
        fail("--checkpoint-every must be >= 1, --max-active >= 0 and --shard-memory-mb > 0")
    settings = {
        "policy": placement,
        "checkpoint_rows": checkpoint_every,
        "max_active": max_active or None,
        "shard_memory_mb": shard_memory_mb,
        "export_dir": export_folder(export),
    }
    paced = Paced(source, rate) if rate else source
    with open_runtime(data, address, shards or None, local, **settings) as rt:
        stats = _drive(rt, the_app, paced, total, as_json, feedback)
    emit(_summary(stats, data, the_app), as_json, f"edgecore replay: {file.name}")


@command("run")
@user_errors
def run_pipeline(
    target: str = typer.Argument(
        ..., help="module:attribute naming a Pipeline with a source (or a function returning one)."
    ),
    data: Path = typer.Option(Path("edgecore-data"), "--data", help=DATA_HELP),
    address: str = typer.Option(None, "--address", help=ADDRESS_HELP),
    local: bool = typer.Option(False, "--local", help="Run in-process without Ray (debugging)."),
    export: Path = EXPORT_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Run a pipeline written with runtime.dataflow.builder.Pipeline, embedded or attached to a cluster."""
    from runtime.dataflow.apps import import_target
    from runtime.dataflow.builder import Pipeline

    if not target.partition(":")[2]:
        fail(f"give the pipeline as module:attribute, not {target!r}")
    try:
        obj = import_target(target)
    except (ImportError, AttributeError) as e:
        fail(f"cannot load {target!r}: {e}")
    flow = obj() if callable(obj) and not isinstance(obj, Pipeline) else obj
    if not isinstance(flow, Pipeline):
        fail(f"{target!r} is a {type(flow).__name__}, not a runtime.dataflow.builder.Pipeline")
    the_app = flow.build()
    if flow.input is None:
        fail(f"pipeline {flow.name!r} has no .source(...)")
    with open_runtime(data, address, None, local, export_dir=export_folder(export)) as rt:
        stats = _drive(rt, the_app, flow.input, None, as_json)
    emit(_summary(stats, data, the_app), as_json, f"edgecore run: {flow.name}")


def export_folder(export: Path | None) -> str | None:
    """The export folder as the runtime takes it (absolute: actors may run elsewhere)."""
    if export is None:
        return None
    if export.exists() and not export.is_dir():
        fail(f"--export {export}: that is a file; give a folder (it is created if missing)")
    return str(export.resolve())
