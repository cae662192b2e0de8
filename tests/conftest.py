"""Shared fixtures: the real embedded collector on a free loopback port, and the
real upstream collector (theia 0.9.2, ``tests/upstream.py``) with each of its stores."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from theia_frames.client import Client
from theia_frames.server.collector import Collector, serve
from upstream import UpstreamCollector


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


def _upstream(tmp_path_factory: pytest.TempPathFactory, store: str) -> Iterator[UpstreamCollector]:
    if os.environ.get("THEIA_SKIP_UPSTREAM") == "1" and not os.environ.get("CI"):
        pytest.skip("THEIA_SKIP_UPSTREAM=1: the tests against the real upstream collector are off")
    with UpstreamCollector(tmp_path_factory.mktemp(f"upstream-{store}") / "data", store=store) as running:
        yield running


@pytest.fixture(scope="session")
def upstream_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamCollector]:
    """The real upstream collector with its file store (one per test session)."""
    yield from _upstream(tmp_path_factory, "file")


@pytest.fixture(scope="module")
def upstream_file_of_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamCollector]:
    """A real upstream collector with its file store for one test module alone: for a
    module whose tests leave events behind, which the session's ``upstream_file`` must
    not hold (the differential tests of test_upstream.py expect only theirs there)."""
    yield from _upstream(tmp_path_factory, "file")


@pytest.fixture(scope="session")
def upstream_sql(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamCollector]:
    """The real upstream collector with its SQL store on SQLite (one per test session)."""
    yield from _upstream(tmp_path_factory, "sql")


@pytest.fixture
def full_collector(tmp_path: Path) -> Iterator[Collector]:
    """A running collector whose store refuses writes, as on a full disk: its database
    may not grow beyond the pages it has (SQLite's ``max_page_count``)."""
    with serve(db=tmp_path / "full.db", port=0) as running:
        assert running.store is not None
        db = running.store._db
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages}")
        yield running
