"""``edgecore model``: the models a data folder's registry holds (runtime.ml.registry).

``list``, ``show V``, ``promote V``, ``rollback`` and ``metrics`` (the live metrics over
time); a promote or rollback takes effect at the runtime's next start, which serves the
chosen champion.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from runtime.cli.common import DATA_HELP, Command, Group, app, cell, dumps, emit, fail, out

model_app = typer.Typer(
    help="The model registry: list, show, promote and roll back a kind's model versions.",
    cls=Group,
    no_args_is_help=True,
)
app.add_typer(model_app, name="model")

KIND_HELP = "The kind whose models to use (default: the only kind with models)."
JSON_HELP = "Print one JSON object."
#: the options every model command takes (typer reads these defaults; never mutated)
DATA_OPTION = typer.Option(Path("edgecore-data"), "--data", help=DATA_HELP)
KIND_OPTION = typer.Option(None, "--kind", help=KIND_HELP)
JSON_OPTION = typer.Option(False, "--json", help=JSON_HELP)


def _registry(data: Path, kind: str | None) -> tuple[Any, str]:
    """The data folder's registry and the kind meant; one-line errors for what is missing."""
    from runtime.errors import EdgecoreError
    from runtime.ml.registry import ModelRegistry
    from runtime.state.store import Store

    if not data.is_dir():
        fail(f"no data folder at {data}")
    try:
        reg = ModelRegistry(Store(data))
        if not reg.exists():
            fail(f"no models in {data}: there is no models table (a model kind registers one)")
        kinds = reg.kinds()
    except EdgecoreError as e:
        fail(str(e))
    except Exception as e:  # a models table LanceDB cannot read
        fail(f"cannot read the models table in {data}: {type(e).__name__}: {e}")
    if kind is None:
        if len(kinds) != 1:
            fail(f"several kinds have models ({', '.join(kinds)}): choose one with --kind")
        kind = kinds[0]
    elif kind not in kinds:
        fail(f"kind {kind!r} has no models (kinds with models: {', '.join(kinds) or 'none'})")
    return reg, kind


def _run(fn: Any, *args: Any) -> Any:
    from runtime.errors import EdgecoreError

    try:
        return fn(*args)
    except EdgecoreError as e:
        fail(str(e))


@model_app.command("list", cls=Command)
def list_models(
    data: Path = DATA_OPTION,
    kind: str = KIND_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Every version of the kind's model: status, parent, rows learned from, metrics."""
    reg, kind = _registry(data, kind)
    models = _run(reg.list, kind)
    if as_json:
        typer.echo(dumps({"kind": kind, "models": models}))
        return
    table = Table("version", "status", "parent", "training rows", "created", "metrics", title=kind)
    for m in models:
        table.add_row(
            str(m["version"]),
            str(m["status"]) + (" (pinned)" if m.get("pinned") else ""),
            "" if m["parent"] is None else str(m["parent"]),
            cell(m["training_rows"]),
            str(m["created_at"])[:19],
            dumps(m["metrics"]),
        )
    out.print(table)


@model_app.command("show", cls=Command)
def show(
    version: int = typer.Argument(..., help="The model version."),
    data: Path = DATA_OPTION,
    kind: str = KIND_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """One version's card: parent, rows learned from, metrics, parameters."""
    reg, kind = _registry(data, kind)
    emit(_run(reg.show, kind, version), as_json, f"{kind} model {version}")


@model_app.command("promote", cls=Command)
def promote(
    version: int = typer.Argument(..., help="The version to serve."),
    data: Path = DATA_OPTION,
    kind: str = KIND_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Make a version the champion (the previous one retired); the next start serves it."""
    reg, kind = _registry(data, kind)
    emit(_run(reg.promote, kind, version), as_json, f"{kind}: promoted")


@model_app.command("rollback", cls=Command)
def rollback(
    data: Path = DATA_OPTION,
    kind: str = KIND_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Bring back the previous champion (the current one retired); the next start serves it."""
    reg, kind = _registry(data, kind)
    emit(_run(reg.rollback, kind), as_json, f"{kind}: rolled back")


@model_app.command("metrics", cls=Command)
def metrics(
    data: Path = DATA_OPTION,
    kind: str = KIND_OPTION,
    last: int = typer.Option(20, "--last", help="How many of the latest rows (0: all)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """How the serving model did over time: one row per checkpoint (the model_metrics
    table) with its version, live AUC, precision and recall at its threshold."""
    reg, kind = _registry(data, kind)
    if last < 0:
        fail("--last must be >= 0")
    rows = _run(reg.history, kind, last or None)
    if as_json:
        typer.echo(dumps({"kind": kind, "metrics": rows}))
        return
    table = Table("at", "version", "training rows", "auc", "precision", "recall", "threshold")
    for r in rows:
        table.add_row(
            str(r["at"])[:19],
            str(r["version"]),
            cell(r["training_rows"]),
            *[cell(r[c]) for c in ("auc", "precision", "recall", "threshold")],
        )
    out.print(table)
