"""The ``edgecore`` command line (typer): ``main`` builds the app from the commands."""

from runtime.cli.main import app, main, serve_shards

__all__ = ["app", "main", "serve_shards"]
