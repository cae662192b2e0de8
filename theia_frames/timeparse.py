"""Points in time and durations written the way people type them.

Used for ``--start``/``--end`` (and ``--duration``) on the command line, and
by any function that takes a time from a user. A time is one of

- seconds since the Unix epoch: ``1700000000`` or ``1700000000.25``;
- ISO-8601: ``2024-05-01``, ``2024-05-01T12:30``, ``2024-05-01 12:30:05.5+02:00``,
  ``2024-05-01T10:30:05Z`` (a time without a UTC offset is taken as **UTC**,
  like every timestamp of the theia log);
- relative to now: ``now``, ``-15m``, ``-1h30m``, ``+10s``, ``-2d``
  (units ``ms``, ``s``, ``m``, ``h``, ``d``, ``w``).

Times come back as float seconds since the epoch (UTC)::

    >>> parse_time("1700000000.5")
    1700000000.5
    >>> parse_time("2024-05-01T00:00:00Z")
    1714521600.0
    >>> parse_time("2024-05-01")
    1714521600.0
    >>> parse_time("-15m", now=1000.0)
    100.0
    >>> parse_duration("1h30m")
    5400.0

A text that is none of these raises :class:`~theia_frames.exceptions.UsageError`
saying what was expected.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import re
import time
from typing import Any

from .exceptions import UsageError

__all__ = ["parse_time", "parse_duration", "to_epoch", "time_arg", "duration_arg"]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h|d|w)")
_DURATION = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ms|s|m|h|d|w))+")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")

_EXPECTED = (
    "expected seconds since the epoch (1700000000), ISO-8601 (2024-05-01T12:00:00Z) "
    "or a time relative to now (now, -15m, -1h30m, +10s)"
)


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``90``, ``1.5``, ``15m``, ``1h30m``, ``250ms``.

    >>> parse_duration("250ms")
    0.25
    >>> parse_duration("2")
    2.0
    """
    s = text.strip().lower().replace(" ", "")
    if _NUMBER.fullmatch(s):
        value = float(s)
    elif _DURATION.fullmatch(s):
        value = sum(float(n) * _UNITS[u] for n, u in _PART.findall(s))
    else:
        raise UsageError(f"invalid duration {text!r}: expected seconds (30) or units like 15m, 1h30m, 250ms")
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"invalid duration {text!r}: must be a finite, non-negative number of seconds")
    return value


def parse_time(text: str, *, now: float | None = None) -> float:
    """Seconds since the epoch (UTC) for an absolute or relative time text.

    ``now`` is the reference for relative times (default: the current time).

    >>> parse_time("now", now=5.0)
    5.0
    >>> parse_time("+1m", now=5.0)
    65.0
    >>> parse_time("2024-05-01 02:00+02:00")
    1714521600.0
    >>> parse_time("yesterday")
    Traceback (most recent call last):
    ...
    theia_frames.exceptions.UsageError: invalid time 'yesterday': expected seconds since the epoch (1700000000), ISO-8601 (2024-05-01T12:00:00Z) or a time relative to now (now, -15m, -1h30m, +10s)
    """
    if not isinstance(text, str):
        raise UsageError(f"invalid time {text!r}: expected a string")
    s = text.strip()
    low = s.lower()
    if not s:
        raise UsageError(f"invalid time {text!r}: {_EXPECTED}")
    if low == "now":
        return time.time() if now is None else float(now)
    if low[:1] in "+-" and _DURATION.fullmatch(low[1:].replace(" ", "")):
        offset = parse_duration(low[1:])
        ref = time.time() if now is None else float(now)
        return ref - offset if low[0] == "-" else ref + offset
    if _NUMBER.fullmatch(s):
        value = float(s)
        if not math.isfinite(value):
            raise UsageError(f"invalid time {text!r}: {_EXPECTED}")
        return value
    return _parse_iso(text, s)


# The fraction of a second, which datetime.fromisoformat reads only as 3 or 6
# digits before Python 3.11: padded to 6 digits (or cut) first.
_FRACTION = re.compile(r"(T\d\d:\d\d:\d\d)[.,](\d+)")


def _parse_iso(text: str, s: str) -> float:
    iso = s[:-1] + "+00:00" if s[-1:] in "zZ" else s
    iso = _FRACTION.sub(lambda m: f"{m.group(1)}.{m.group(2)[:6]:0<6}", iso)
    try:
        moment = _dt.datetime.fromisoformat(iso)
    except ValueError:
        raise UsageError(f"invalid time {text!r}: {_EXPECTED}") from None
    return to_epoch(moment)


def to_epoch(value: Any) -> float:
    """Seconds since the epoch (UTC) for a number, a time text, a ``datetime``/``date``,
    a ``pandas.Timestamp`` or a ``numpy.datetime64``.

    Naive datetimes are taken as UTC.

    >>> to_epoch(_dt.datetime(2024, 5, 1, tzinfo=_dt.timezone.utc))
    1714521600.0
    >>> to_epoch(_dt.date(2024, 5, 1))
    1714521600.0
    >>> to_epoch(12)
    12.0
    """
    if isinstance(value, bool):
        raise UsageError(f"invalid time {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise UsageError(f"invalid time {value!r}: not a finite number")
        return float(value)
    if isinstance(value, str):
        return parse_time(value)
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return value.timestamp()
    if isinstance(value, _dt.date):
        return _dt.datetime(value.year, value.month, value.day, tzinfo=_dt.timezone.utc).timestamp()
    to_dt = getattr(value, "to_pydatetime", None)  # pandas.Timestamp
    if callable(to_dt):
        return to_epoch(to_dt())
    if type(value).__name__ == "datetime64":  # numpy, without importing it
        return int(value.astype("datetime64[ns]").astype("int64")) / 1e9
    raise UsageError(f"invalid time {value!r}: expected a number, a string or a datetime")


def time_arg(text: str) -> float:
    """An ``argparse`` type for a time option (``--start -15m``)."""
    try:
        return parse_time(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def duration_arg(text: str) -> float:
    """An ``argparse`` type for a duration option (``--duration 30s``)."""
    try:
        return parse_duration(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
