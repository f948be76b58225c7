"""Find applications by name: installed ones register under the ``edgecore.apps`` entry point.

The engine never imports the domain package directly; ``actors`` registers its
apps in ``pyproject.toml``, and any other package can do the same. A
``module:attribute`` path works too.

>>> {"fraud", "devices"} <= set(available())
True
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib.metadata import entry_points
from typing import Any

from runtime.dataflow.app import App
from runtime.errors import ConfigError

GROUP = "edgecore.apps"


def available() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=GROUP)}


def import_target(target: str) -> Any:
    """The object at ``module:attribute``, the module looked for in the current folder too,
    as ``python -m`` and uvicorn do (an installed ``edgecore`` script would not find a
    ``flows.py`` beside the user otherwise; Ray's workers get the driver's folder already).

    Raises ImportError or AttributeError as importing does.
    """
    module, _, attr = target.partition(":")
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)
    return getattr(importlib.import_module(module), attr)


def load_app(name: str) -> App:
    """The app registered as ``name``, or the App object at ``module:attribute``."""
    target = available().get(name, name)
    if ":" not in target:
        raise ConfigError(
            f"no app named {name!r}; installed apps: {sorted(available())}, "
            "or give a path like 'mypackage.module:app'"
        )
    try:
        obj = import_target(target)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"cannot load app {target!r}: {err}") from err
    if not isinstance(obj, App):
        raise ConfigError(f"{target!r} is a {type(obj).__name__}, not an edgecore App")
    return obj
