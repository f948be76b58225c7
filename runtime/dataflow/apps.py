"""Find applications by name: installed ones register under the ``edgecore.apps`` entry point.

The engine never imports the domain package directly; ``actors`` registers its
apps in ``pyproject.toml``, and any other package can do the same. A
``module:attribute`` path works too.

>>> {"fraud", "devices"} <= set(available())
True
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from runtime.dataflow.app import App
from runtime.errors import ConfigError

GROUP = "edgecore.apps"


def available() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=GROUP)}


def load_app(name: str) -> App:
    """The app registered as ``name``, or the App object at ``module:attribute``."""
    target = available().get(name, name)
    if ":" not in target:
        raise ConfigError(
            f"no app named {name!r}; installed apps: {sorted(available())}, "
            "or give a path like 'mypackage.module:app'"
        )
    module, _, attr = target.partition(":")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"cannot load app {target!r}: {err}") from err
    if not isinstance(obj, App):
        raise ConfigError(f"{target!r} is a {type(obj).__name__}, not an edgecore App")
    return obj
