"""``edgecore console``: the web console of a running runtime, served from another process.

``edgecore serve --console HOST:PORT`` serves the same console from the serve process
itself; both go through :func:`open_console`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from runtime.cli.common import command, err, user_errors

#: not Ray's dashboard (8265) nor serve's HTTP ingest (8080)
DEFAULT_PORT = 8090
TOKEN_HELP = (
    "Token for the console; required off loopback. Browsers open /?token=TOKEN once (then "
    "a cookie), API clients send Authorization: Bearer TOKEN. Prefer the environment "
    "variable: ps shows command lines to every user."
)


def open_console(
    options: Any, data_dir: str | Path | None = None, quiet: bool = False
) -> tuple[Any, Any]:
    """Start polling the runtime this process is attached to and serve the page; returns
    (data, server) to close, server first. Prints where it listens (unless ``quiet``)."""
    from runtime.console import ConsoleData, ConsoleServer

    data = ConsoleData(str(data_dir) if data_dir is not None else None).start()
    server = ConsoleServer(data, options)
    try:
        port = server.start()
    except BaseException:
        data.close()
        raise
    if not quiet:
        host = f"[{options.host}]" if ":" in options.host else options.host
        err.print(f"edgecore: console on http://{host}:{port}/")
    return data, server


@command()
@user_errors
def console(
    address: str = typer.Option(
        "auto", "--address", help="The Ray cluster the runtime runs on ('auto': this machine's)."
    ),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Interface to listen on (loopback unless a token is given)."
    ),
    port: int = typer.Option(DEFAULT_PORT, "--port", help="Port to listen on (0: any free one)."),
    token: str = typer.Option(
        None, "--token", envvar="EDGECORE_TOKEN", show_envvar=True, help=TOKEN_HELP
    ),
    data: Path = typer.Option(
        None,
        "--data",
        help="The runtime's data folder, for SQL over its stored tables (alerts, "
        "dead_letters...) beside live state; without it SQL sees live state only.",
    ),
) -> None:
    """Serve the web console of a running runtime until SIGINT/SIGTERM (then exit 0).

    The page shows events/s and latency over the last five minutes, the alerts feed as it
    happens (every topic, alerts by default), where every actor runs (nodes by role and
    site, queue depths), one entity's live profile by key, the models' versions and live
    metrics, and a SQL box. Everything it needs is in the package: nothing is fetched from
    the internet. Open http://HOST:PORT/ in a browser.
    """
    import signal
    import threading

    from runtime.cluster.handles import attach
    from runtime.console import ConsoleOptions

    options = ConsoleOptions(host.strip("[]"), port, token or None)
    options.check()  # before attaching: a refusal costs no Ray start
    attach(address, hard=True)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    # after attaching: ray.init installs handlers of its own that would replace ours
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    data_view, server = open_console(options, data)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.close()
        data_view.close()
    err.print("edgecore: console stopped")
