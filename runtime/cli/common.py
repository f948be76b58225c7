"""What every ``edgecore`` command shares: the typer app, error handling and output.

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
from typing import Any, NoReturn

import typer
from rich.console import Console
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
        say_error(str(e))
        sys.exit(1)


def user_errors(fn: Any) -> Any:
    """Report edgecore errors as one line on stderr and exit 1 (also under CliRunner)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EdgecoreError as e:
            fail(str(e))

    return wrapper


def say_error(message: str) -> None:
    """One line, however long (scripts read it), with brackets in it kept as they are."""
    from rich.markup import escape

    err.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)


def fail(message: str) -> NoReturn:
    say_error(message)
    raise typer.Exit(1)


def plain(v: Any) -> Any:
    """JSON for values SQL and Arrow hand back: decimals as numbers, times as ISO-8601."""
    if isinstance(v, decimal.Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    if isinstance(v, (datetime.datetime, datetime.date)):
        return v.isoformat()
    if hasattr(v, "item"):
        return v.item()
    return str(v)


def dumps(data: Any) -> str:
    return json.dumps(data, default=plain)


def emit(data: dict[str, Any], as_json: bool, title: str) -> None:
    if as_json:
        typer.echo(dumps(data))
        return
    table = Table(title=title, show_header=False)
    for k, v in data.items():
        if isinstance(v, float):
            v = f"{v:,.4f}" if abs(v) < 10 else f"{v:,.0f}"
        elif isinstance(v, int):
            v = f"{v:,}"
        table.add_row(k, str(v))
    out.print(table)


def open_runtime(
    data: Path, address: str | None, shards: int | None, local: bool = False, **settings: Any
) -> Any:
    from runtime.coordinator.runtime import Runtime

    mode = "local" if local else "ray"
    if settings.get("policy") is not None:
        from runtime.cluster.placement import DefaultPolicy

        settings["policy"] = DefaultPolicy.from_file(settings["policy"])
    return Runtime(data_dir=str(data), address=address, shards=shards, mode=mode, **settings)
