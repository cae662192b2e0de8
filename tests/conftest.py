"""Shared fixtures: the real embedded collector on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from theia_frames.client import Client
from theia_frames.collector import Collector, serve


@pytest.fixture
def collector() -> Iterator[Collector]:
    """A running collector with an in-memory store; stopped after the test."""
    with serve(db=":memory:", port=0) as running:
        yield running


@pytest.fixture
def collector_db(tmp_path: Path) -> Iterator[Collector]:
    """A running collector whose store is the file ``tmp_path / "events.db"``."""
    with serve(db=tmp_path / "events.db", port=0) as running:
        yield running


@pytest.fixture
def sender(collector: Collector) -> Iterator[Client]:
    """A client of the ``collector`` fixture, for tests that publish events."""
    with Client(collector.url) as client:
        yield client
