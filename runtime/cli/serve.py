"""``edgecore serve``: an app as a service on live HTTP and/or MQTT ingest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from runtime.cli.common import (
    ADDRESS_HELP,
    DATA_HELP,
    command,
    dumps,
    err,
    fail,
    open_runtime,
    user_errors,
)
from runtime.cli.run import EXPORT_OPTION


def serve_shards() -> int:
    """Shards per kind for live ingest: half the CPUs. Requests bring a few hundred events;
    each shard call costs ~1 ms of fixed overhead whatever its size, and the ingest actor
    needs cores of its own (on 2 cores, 2 shards doubled p99 ingest->alert at 50k/s)."""
    import os

    return max(1, (os.cpu_count() or 2) // 2)


def console_options(console: str | None, token: str | None, local: bool) -> Any:
    """--console, checked before Ray starts; None without it."""
    if not console:
        return None
    from runtime.console import ConsoleOptions

    if local:
        fail("--console reads the runtime through Ray: drop --local")
    return ConsoleOptions.parse(console, token)


@command()
@user_errors
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
    console: str = typer.Option(
        None,
        "--console",
        help="HOST:PORT to serve the web console on (events/s, latency, alerts, placement, "
        "entities, models, SQL); the same token rule as --http off loopback.",
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
    dedup_capacity: int = typer.Option(
        50_000_000,
        "--dedup-capacity",
        min=1_000,
        help="How many of the most recent event ids are remembered to drop redeliveries "
        "(8 bytes each in memory in the ingest actor, and again in this process); a "
        "redelivery older than that many events is applied again.",
    ),
    no_wal: bool = typer.Option(
        False,
        "--no-wal",
        help="Acknowledge before the write-ahead log has the events: faster, but a crash "
        "loses what was acknowledged since the last checkpoint.",
    ),
    metrics: str = typer.Option(
        None,
        "--metrics",
        help="HOST:PORT to serve GET /metrics (Prometheus text format) on; off by default. "
        "Loopback only unless --token is given (then scrapes must carry it).",
    ),
    export: Path = EXPORT_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON summary when stopped."),
) -> None:
    """Run an app as a service on live HTTP and/or MQTT ingest until SIGINT/SIGTERM.

    Every request is answered, and every MQTT message acknowledged, only once its events
    are in the write-ahead log in the data folder: a crash loses nothing acknowledged,
    and the next start replays the log's tail. On SIGTERM or SIGINT (to the process or
    its whole process group) intake stops (new requests get 503 with Retry-After), what
    was accepted is applied and committed, and the command exits 0; a second signal
    exits at once (the log covers it).

    With ``--metrics HOST:PORT`` the run's metrics (events by outcome, dead letters, shard
    queues, checkpoints, models: see runtime.observe.run) are served on their own port.
    """
    import os
    import signal
    import threading

    from runtime.cli.console import open_console
    from runtime.cli.run import app_report, export_folder
    from runtime.dataflow.apps import load_app
    from runtime.dataflow.driver import drive
    from runtime.ingest.http import HttpOptions
    from runtime.ingest.live import LiveFeeder
    from runtime.ingest.mqtt import MqttOptions
    from runtime.observe.run import RunMetrics
    from runtime.observe.server import MetricsOptions, MetricsServer

    use_http = http.lower() != "none"
    host, _, port = http.rpartition(":")
    if use_http and (not host or not port.isdigit()):
        fail(f"--http must be HOST:PORT or none, not {http!r}")
    if not use_http and not mqtt:
        fail("nothing to serve: give --http HOST:PORT and/or --mqtt mqtt://HOST:PORT/TOPIC")
    for f in (tls_cert, tls_key):
        if f is not None and not f.is_file():
            fail(f"no such file: {f}")
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
    console_opts = console_options(console, token, local)
    metrics_opts = MetricsOptions.parse(metrics, token) if metrics else None
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
                gets = ", ".join(["/healthz", *(f"/v1/{q}" for q in the_app.queries)])
                err.print(
                    f"edgecore: {the_app.name} on {scheme}://{host}:{info['http_port']}/v1/events"
                    f" at {site} (GET {gets})"
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

    run_metrics = RunMetrics(the_app.name, fields=[c.name for c in the_app.schema.columns])
    server = MetricsServer(run_metrics.registry, metrics_opts) if metrics_opts else None
    if server is not None:  # before Ray starts: a port in use costs no start-up
        bound = server.start()
        err.print(f"edgecore: metrics on http://{metrics_opts.host}:{bound}/metrics")
    try:
        with open_runtime(
            data,
            address,
            shards or serve_shards(),
            local,
            checkpoint_seconds=checkpoint_seconds,
            dedup_capacity=dedup_capacity,
            export_dir=export_folder(export),
        ) as rt:
            # after the runtime started: ray.init() installs handlers of its own that would
            # replace ours (and exit without running them)
            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
            if not local:  # ingest runs in actors; this process only ticks and checkpoints
                from runtime.cluster.handles import yield_cpu

                yield_cpu()
            shown = open_console(console_opts, data) if console_opts else None
            try:
                stats = drive(rt, the_app, [feeder], stop=stop, metrics=run_metrics)
            finally:
                for part in shown or ():
                    part.close()
    finally:
        if server is not None:
            server.close()
    summary = {
        "input": stats.input,
        "accepted": stats.accepted,
        "dead_lettered": stats.dead_lettered,
        "duplicates": stats.duplicates,
        "filtered": stats.filtered,
        "replayed": stats.replayed,
        "checkpoints": stats.checkpoints,
        "restarts": stats.restarts,
        **app_report(the_app, stats),  # e.g. alerts, labels learned from, precision
        "data": str(data.resolve()),
    }
    if as_json:
        typer.echo(dumps(summary))
    err.print(
        f"edgecore: stopped after {stats.input:,} events"
        + (f" ({stats.replayed:,} replayed from the log)" if stats.replayed else "")
        + f"; state committed in {data}"
    )
