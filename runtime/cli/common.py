"""What every ``edgecore`` command shares: the typer app, error handling and output.

Every command that reports results takes ``--json`` and then prints exactly one
JSON object on stdout. User errors exit with code 1 and a one-line reason.
"""

from __future__ import annotations

import datetime
import decimal
import functools
import json
import math
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

from runtime.errors import EdgecoreError

try:  # typer >= 0.2x vendors click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException

DATA_HELP = "Data folder: LanceDB tables (profiles, alerts, dead_letters) and checkpoints."
ADDRESS_HELP = "Attach to a running Ray cluster (e.g. 'auto' or 'HOST:6379') instead of starting an embedded one."


class _FlagsTakeNoValue:
    """typer's rich help shows a flag as ``--json <bool>``, as if it took a value; an empty
    metavar leaves the type column blank for flags (``--help`` included)."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # type: ignore[misc]
        for p in params:
            if getattr(p, "is_flag", False) and p.metavar is None:
                p.metavar = ""
        return params


class Command(_FlagsTakeNoValue, TyperCommand):
    """Every edgecore command: ``@app.command(cls=Command)``, or :func:`command`."""


class Group(_FlagsTakeNoValue, TyperGroup):
    pass


app = typer.Typer(
    help="edgecore: an actor-based edge-to-core runtime for real-time customer engagement, on Ray.",
    cls=Group,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
out = Console()


def command(*args: Any, **kwargs: Any) -> Any:
    """``app.command`` for edgecore's commands (flags shown as flags in --help)."""
    return app.command(*args, cls=Command, **kwargs)


def main() -> None:
    """Entry point: every error, a usage error too, is one line on stderr (edgecore's exit
    with code 1, click's usage errors with its code 2)."""
    try:
        code = app(standalone_mode=False)
    except EdgecoreError as e:
        say_error(str(e))
        sys.exit(1)
    except ClickException as e:
        if type(e).__name__ != "NoArgsIsHelpError":  # its help is printed already
            ctx = getattr(e, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            say_error(e.format_message() + hint)
        sys.exit(e.exit_code)
    except typer.Abort:
        say_error("aborted")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


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
    """One line, however long and whatever the terminal's width (scripts read it), with
    brackets in it kept as they are; a message of several lines is joined with '; '."""
    from rich.markup import escape

    one = "; ".join(line.strip() for line in message.splitlines() if line.strip())
    err.print(f"[red]error:[/red] {escape(one)}", soft_wrap=True)


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


def cell(v: Any, grouping: bool = True) -> str:
    """A value in a table: floats with up to 6 decimals (never rounded to an integer),
    integers with thousands separators when ``grouping``.

    >>> cell(34.0978), cell(34.0), cell(1234567.25), cell(0.00001234), cell(7_000_000)
    ('34.0978', '34.0', '1,234,567.25', '1.234e-05', '7,000,000')
    >>> cell(-2.5, grouping=False), cell(12345, grouping=False), cell(None), cell(True)
    ('-2.5', '12345', 'None', 'True')
    >>> cell(["eu-1", "eu-2"])
    'eu-1, eu-2'
    """
    if isinstance(v, float):
        if not math.isfinite(v) or (v and not 1e-4 <= abs(v) < 1e15):
            return f"{v:.6g}"
        text = f"{v:,.6f}" if grouping else f"{v:.6f}"
        return text.rstrip("0") + ("0" if text.rstrip("0").endswith(".") else "")
    if isinstance(v, int) and not isinstance(v, bool) and grouping:
        return f"{v:,}"
    if isinstance(v, (list, tuple)) and not any(isinstance(x, (dict, list)) for x in v):
        return ", ".join(cell(x, grouping) for x in v)
    return str(v)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys, for a two-column table.

    >>> flatten({"a": 1, "edge": {"rows": 2, "bytes": {"raw": 3}}})
    {'a': 1, 'edge.rows': 2, 'edge.bytes.raw': 3}
    """
    flat: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict) and v:
            flat.update(flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def emit(data: dict[str, Any], as_json: bool, title: str) -> None:
    """One JSON object with ``as_json``, else a two-column table (nested dicts flattened)."""
    if as_json:
        typer.echo(dumps(data))
        return
    table = Table(title=title, show_header=False)
    for k, v in flatten(data).items():
        table.add_row(k, cell(v))
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


_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration(text: str, option: str) -> int:
    """``500ms``, ``90s``, ``30m``, ``2h``, ``1d`` (or a plain number of seconds) in ms;
    a one-line user error for anything else.

    >>> parse_duration("2h", "--x"), parse_duration("1.5d", "--x"), parse_duration("45", "--x")
    (7200000, 129600000, 45000)
    """
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", text or "")
    if m is None:
        fail(f"{option} {text!r}: give a duration such as 500ms, 90s, 30m, 2h or 1d")
    return int(round(float(m.group(1)) * _UNITS_MS[m.group(2) or "s"]))
