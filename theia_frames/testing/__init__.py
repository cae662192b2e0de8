"""The testing kit: ``mock`` (a scriptable :class:`~theia_frames.testing.mock.MockServer`), ``script``
(what it expects and answers) and ``pytest_plugin`` (the fixtures ``theia_mock``, ``theia_collector``,
``theia_client``).

The names are imported from ``mock`` on first use, so loading the pytest plugin
(which imports this package) costs a test that does not use the fixtures nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["MockServer", "MockExpectationError", "Received", "event_like"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        value = getattr(importlib.import_module(".mock", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:  # pragma: no cover
    from .mock import MockExpectationError, MockServer, Received, event_like
