"""Argument types shared by the commands: each names what it expected."""

from __future__ import annotations

import argparse

from ..exceptions import UsageError
from ..timeparse import to_epoch, to_seconds

__all__ = ["port", "count", "positive_number", "time_arg", "duration_arg", "duration_or_none"]


def _number(text: str, kind: type[int] | type[float], what: str) -> int | float:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def port(text: str) -> int:
    """A TCP port, 0 (pick a free one) to 65535."""
    value = int(_number(text, int, "a port number"))
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is between 0 and 65535, got {text!r}")
    return value


def count(text: str) -> int:
    """A whole number, at least 1."""
    value = int(_number(text, int, "a whole number"))
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {text!r}")
    return value


def positive_number(text: str) -> float:
    """A number greater than 0."""
    value = float(_number(text, float, "a number"))
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def time_arg(text: str) -> float:
    """A point in time (``--start -15m``, ``--end 2024-05-01``), read by :func:`~theia_frames.timeparse.to_epoch`."""
    try:
        return to_epoch(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def duration_arg(text: str) -> float:
    """A duration (``--duration 30s``, ``90``, ``10min``), read by :func:`~theia_frames.timeparse.to_seconds`."""
    try:
        return to_seconds(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def duration_or_none(text: str) -> float | None:
    """A positive duration (as :func:`duration_arg` reads it), or ``none`` (no limit)."""
    if text.strip().lower() == "none":
        return None
    value = duration_arg(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive duration, got {text!r}")
    return value
