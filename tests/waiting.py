"""Polling with a deadline, for tests that wait on other threads and processes."""

from __future__ import annotations

import time
from collections.abc import Callable


def poll_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.01) -> bool:
    """True as soon as ``predicate()`` is true; its last value once ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def wait_until(condition: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> None:
    """Return once ``condition()`` is true; fail the test naming ``what`` after ``timeout`` seconds."""
    if not poll_until(condition, timeout):
        raise AssertionError(f"timed out waiting for {what}")
