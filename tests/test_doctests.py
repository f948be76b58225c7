"""Every docstring example in runtime/ and actors/ runs (they use in-memory or local sources)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import actors
import runtime

MODULES = sorted(
    m.name
    for pkg in (runtime, actors)
    for m in pkgutil.walk_packages(pkg.__path__, prefix=f"{pkg.__name__}.")
    if m.name != "runtime.cli.__main__"  # it runs the command line on import
)


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
