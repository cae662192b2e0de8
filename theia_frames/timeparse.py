"""Points in time and durations, written the way people type them: one grammar for both.

Every place that takes a time (``Filter(start)``, ``EventFilter(start=, end=)``,
``match_start``/``match_end``, ``read_store``, the command line's
``--start``/``--end``) reads it with :func:`to_epoch`, and every place that takes
a duration (``window=``, ``context=``, ``gap=``, ``every=``, a relative time
such as ``--start -10min``) with :func:`to_seconds`.

A **time** is one of

- seconds since the Unix epoch: ``1700000000``, ``1700000000.25``, a NumPy
  integer or float, or the same as text (``"1700000000"``);
- a ``datetime.datetime`` / ``datetime.date``, a ``pandas.Timestamp`` or a
  ``numpy.datetime64``; a naive one (no time zone) is taken as **UTC**, like
  every timestamp of the theia log;
- ISO-8601 text: ``2024-05-01``, ``2024-05-01T12:30``, ``2024-05-01T00:00Z``,
  ``2024-05-01 12:30:05.5+02:00`` (no offset: UTC);
- text relative to now: ``now``, ``-15m``, ``-10min``, ``-1h30m``, ``+10s``, ``-2d``,
  ``"-90"`` (a sign, then a duration: ``"-90"`` is 90 seconds ago).

A **duration** is one of

- a number of seconds, also as text: ``90`` and ``"90"`` are both 90 seconds,
  ``1.5`` is a second and a half;
- text with units, parts added up: ``500ms``, ``15m``, ``10min``, ``2h``, ``1d``,
  ``1h30m``, ``2 hours``; the units are ``ns``, ``us``, ``ms``, ``s``/``sec``,
  ``m``/``min``, ``h``/``hr``, ``d``/``day``, ``w``/``week`` (plural and any case
  too, except ``M``, which could mean months);
- a ``datetime.timedelta`` or ``pandas.Timedelta``, a ``numpy.timedelta64``, or a
  fixed pandas offset (``pd.offsets.Minute(10)``, ``pd.tseries.frequencies.to_offset("5min")``).

Both come back as float seconds (times since the epoch, UTC)::

    >>> to_epoch("1700000000.5")
    1700000000.5
    >>> to_epoch("2024-05-01T00:00Z")
    1714521600.0
    >>> to_epoch(_dt.datetime(2024, 5, 1))            # naive: UTC
    1714521600.0
    >>> to_epoch("-15m", now=1000.0), to_epoch("-10min", now=1000.0)
    (100.0, 400.0)
    >>> to_seconds("90"), to_seconds(90), to_seconds("10min"), to_seconds("500ms"), to_seconds("1h30m")
    (90.0, 90.0, 600.0, 0.5, 5400.0)

A value that is neither raises :class:`~theia_frames.exceptions.UsageError`
naming it and what was expected. The module needs neither pandas nor NumPy:
their values are recognised by what they offer.
"""

from __future__ import annotations

import datetime as _dt
import math
import numbers
import re
import time
from typing import Any

from .exceptions import UsageError

__all__ = ["to_epoch", "to_seconds", "parse_time", "parse_duration", "TimeLike", "DurationLike"]

#: What :func:`to_epoch` takes (a number, a text, a datetime, ``pandas.Timestamp``, ``numpy.datetime64``).
TimeLike = Any
#: What :func:`to_seconds` takes (a number, a text, a timedelta, ``numpy.timedelta64``, a fixed pandas offset).
DurationLike = Any

_UNIT_SECONDS = {
    "ns": 1e-9, "nanosecond": 1e-9, "nanoseconds": 1e-9,
    "us": 1e-6, "µs": 1e-6, "microsecond": 1e-6, "microseconds": 1e-6,
    "ms": 1e-3, "millisecond": 1e-3, "milliseconds": 1e-3,
    "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hrs": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
    "w": 604800.0, "wk": 604800.0, "week": 604800.0, "weeks": 604800.0,
}
_AMOUNT = r"(?:\d+(?:\.\d*)?|\.\d+)"
_PART = re.compile(rf"({_AMOUNT})\s*([a-zµ]+)\s*")
_DURATION = re.compile(rf"(?:{_AMOUNT}\s*[a-zµ]+\s*)+")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")

_EXPECTED_TIME = (
    "expected seconds since the epoch (1700000000), ISO-8601 (2024-05-01T12:00:00Z), "
    "a datetime, or a time relative to now (now, -15m, -10min, +10s)"
)
_EXPECTED_DURATION = "expected seconds (90), text with units (500ms, 15m, 10min, 2h, 1d) or a timedelta"


# --------------------------------------------------------------------------- durations


def _text_seconds(text: str, name: str) -> float:
    s = text.strip()
    if _NUMBER.fullmatch(s):
        return float(s)
    if re.search(r"\dM(?![a-zA-Z])", s.replace(" ", "")):
        raise UsageError(f"invalid {name} {text!r}: 'M' could mean minutes or months; write 'min' (or days: '30d')")
    low = s.lower()
    if not _DURATION.fullmatch(low):
        raise UsageError(f"invalid {name} {text!r}: {_EXPECTED_DURATION}")
    total = 0.0
    for amount, unit in _PART.findall(low):
        factor = _UNIT_SECONDS.get(unit)
        if factor is None:
            raise UsageError(f"invalid {name} {text!r}: unknown unit {unit!r} ({_EXPECTED_DURATION})")
        total += float(amount) * factor
    return total


def to_seconds(value: DurationLike, *, name: str = "duration") -> float:
    """Seconds in a duration (see the module docstring); never negative.

    ``name`` is what the caller calls it, for the error message.

    >>> to_seconds(_dt.timedelta(minutes=2)), to_seconds("2 hours"), to_seconds("1D")
    (120.0, 7200.0, 86400.0)
    >>> to_seconds("-5s")
    Traceback (most recent call last):
    ...
    theia_frames.exceptions.UsageError: invalid duration '-5s': must not be negative
    >>> to_seconds("soon", name="window")
    Traceback (most recent call last):
    ...
    theia_frames.exceptions.UsageError: invalid window 'soon': expected seconds (90), text with units (500ms, 15m, 10min, 2h, 1d) or a timedelta
    """
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        raise UsageError(f"invalid {name} {value!r}: {_EXPECTED_DURATION}")
    if isinstance(value, str):
        s = value.strip()
        negative = s.startswith("-") and not _NUMBER.fullmatch(s)
        seconds = -_text_seconds(s[1:], name) if negative else _text_seconds(s, name)
    elif type(value).__name__ == "timedelta64":  # numpy (an integer type to numbers), without importing it
        if value != value:
            raise UsageError(f"invalid {name} {value!r}: not a time (NaT)")
        seconds = int(value.astype("timedelta64[ns]").astype("int64")) / 1e9
    elif isinstance(value, numbers.Real):
        seconds = float(value)
    elif isinstance(value, _dt.timedelta):  # also pandas.Timedelta
        seconds = value.total_seconds()
    elif type(value).__module__.startswith("pandas") and hasattr(value, "freqstr"):  # a pandas offset
        try:
            seconds = value.nanos / 1e9
        except ValueError:
            raise UsageError(
                f"invalid {name} {value!r}: a calendar offset has no fixed length; use a fixed one such as '30d'"
            ) from None
    elif type(value).__name__ == "NaTType":
        raise UsageError(f"invalid {name} {value!r}: not a time (NaT)")
    else:
        raise UsageError(f"invalid {name} {value!r}: {_EXPECTED_DURATION}")
    if not math.isfinite(seconds):
        raise UsageError(f"invalid {name} {value!r}: must be finite")
    if seconds < 0:
        raise UsageError(f"invalid {name} {value!r}: must not be negative")
    return seconds


def parse_duration(text: str) -> float:
    """Seconds in a duration text such as ``90``, ``1.5``, ``15m``, ``10min``, ``1h30m``, ``250ms``.

    :func:`to_seconds` for text.

    >>> parse_duration("250ms")
    0.25
    >>> parse_duration("2")
    2.0
    """
    if not isinstance(text, str):
        raise UsageError(f"invalid duration {text!r}: expected a string")
    return to_seconds(text)


# --------------------------------------------------------------------------- points in time


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
    theia_frames.exceptions.UsageError: invalid time 'yesterday': expected seconds since the epoch (1700000000), ISO-8601 (2024-05-01T12:00:00Z), a datetime, or a time relative to now (now, -15m, -10min, +10s)
    """
    if not isinstance(text, str):
        raise UsageError(f"invalid time {text!r}: expected a string")
    return _text_time(text, now, "time")


def _text_time(text: str, now: float | None, name: str) -> float:
    s = text.strip()
    low = s.lower()
    if not s:
        raise UsageError(f"invalid {name} {text!r}: {_EXPECTED_TIME}")
    if low == "now":
        return time.time() if now is None else float(now)
    rest = low[1:].strip()
    if low[:1] in "+-" and rest[:1] in "0123456789." and (_NUMBER.fullmatch(rest) or _DURATION.fullmatch(rest)):
        offset = _text_seconds(rest, name)
        ref = time.time() if now is None else float(now)
        return ref - offset if low[0] == "-" else ref + offset
    if _NUMBER.fullmatch(s):
        value = float(s)
        if not math.isfinite(value):
            raise UsageError(f"invalid {name} {text!r}: {_EXPECTED_TIME}")
        return value
    return _parse_iso(text, s, name)


# The fraction of a second, which datetime.fromisoformat reads only as 3 or 6
# digits before Python 3.11: padded to 6 digits (or cut) first.
_FRACTION = re.compile(r"(T\d\d:\d\d:\d\d)[.,](\d+)")


def _parse_iso(text: str, s: str, name: str) -> float:
    iso = s[:-1] + "+00:00" if s[-1:] in "zZ" else s
    iso = _FRACTION.sub(lambda m: f"{m.group(1)}.{m.group(2)[:6]:0<6}", iso)
    try:
        moment = _dt.datetime.fromisoformat(iso)
    except ValueError:
        raise UsageError(f"invalid {name} {text!r}: {_EXPECTED_TIME}") from None
    return _datetime_seconds(moment)


def _datetime_seconds(value: _dt.datetime) -> float:
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.timezone.utc)
    return value.timestamp()


def to_epoch(value: TimeLike, *, now: float | None = None, name: str = "time") -> float:
    """Seconds since the epoch (UTC) for any time of the module docstring.

    Naive datetimes are taken as UTC; relative texts are resolved against
    ``now`` (default: the current time) when called. ``name`` is what the
    caller calls the value, for the error message.

    >>> to_epoch(_dt.datetime(2024, 5, 1, tzinfo=_dt.timezone.utc))
    1714521600.0
    >>> to_epoch(_dt.date(2024, 5, 1))
    1714521600.0
    >>> to_epoch(12)
    12.0
    >>> to_epoch(float("nan"), name="start")
    Traceback (most recent call last):
    ...
    theia_frames.exceptions.UsageError: invalid start nan: not a finite number
    """
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        raise UsageError(f"invalid {name} {value!r}: {_EXPECTED_TIME}")
    if isinstance(value, numbers.Real):
        try:
            seconds = float(value)
        except OverflowError:
            raise UsageError(f"invalid {name}: {value!r} is too large for a timestamp") from None
        if not math.isfinite(seconds):
            raise UsageError(f"invalid {name} {value!r}: not a finite number")
        return seconds
    if isinstance(value, str):
        return _text_time(value, now, name)
    if isinstance(value, _dt.datetime):  # also pandas.Timestamp
        if value != value:  # pandas.NaT
            raise UsageError(f"invalid {name} {value!r}: not a time (NaT)")
        return _datetime_seconds(value)
    if isinstance(value, _dt.date):
        return _dt.datetime(value.year, value.month, value.day, tzinfo=_dt.timezone.utc).timestamp()
    if type(value).__name__ == "datetime64":  # numpy, without importing it
        if value != value:
            raise UsageError(f"invalid {name} {value!r}: not a time (NaT)")
        return int(value.astype("datetime64[ns]").astype("int64")) / 1e9
    if type(value).__name__ == "NaTType":
        raise UsageError(f"invalid {name} {value!r}: not a time (NaT)")
    raise UsageError(f"invalid {name} {value!r}: {_EXPECTED_TIME}")
