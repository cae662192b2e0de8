"""pytest fixtures for code that talks to theia; installed with the package.

The plugin is registered through the ``pytest11`` entry point, so installing
theia_frames is enough. It defines three fixtures:

``theia_mock``
    a :class:`~theia_frames.testing.mock.MockServer` for the test; the test fails
    if its expectations were left unmet (it is verified when the test body
    returns), and the server is terminated afterwards.
``theia_collector``
    a fresh embedded collector with an in-memory store on a free loopback
    port (``theia_collector.url``), stopped after the test.
``theia_client``
    a :class:`~theia_frames.Client` connected to ``theia_collector``.

Nothing heavy is imported until a test asks for one of these fixtures, so
test runs that do not use them are not slowed down.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # pragma: no cover
    from ..client import Client
    from ..server.collector import Collector
    from .mock import MockServer

__all__ = ["theia_mock", "theia_collector", "theia_client"]

_MOCK = "theia_mock"


@pytest.fixture
def theia_mock() -> Iterator[MockServer]:
    """A scriptable mock theia server, verified when the test body returns."""
    from .mock import MockServer

    mock = MockServer()
    try:
        yield mock
    finally:
        mock.terminate()


@pytest.fixture
def theia_collector() -> Iterator[Collector]:
    """A fresh embedded collector (in-memory store, free loopback port)."""
    from ..server.collector import serve

    collector = serve(db=":memory:", port=0)
    try:
        yield collector
    finally:
        collector.stop()


@pytest.fixture
def theia_client(theia_collector: Collector) -> Iterator[Client]:
    """A client connected to ``theia_collector``."""
    from ..client import Client

    with Client(theia_collector.url) as client:
        yield client


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    # Verifying here, in the call phase, makes unmet expectations a failure of
    # the test itself rather than an error in its teardown. A test that already
    # failed keeps its own, more telling, error.
    __tracebackhide__ = True
    result = yield
    funcargs = getattr(item, "funcargs", None)
    mock = funcargs.get(_MOCK) if funcargs else None
    if mock is not None:
        mock.verify()
    return result
