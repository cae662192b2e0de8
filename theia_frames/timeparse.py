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

A whole column of times written in a format of their own (a log's
``Dec 10 06:55:46``, ``081109 203615``, epoch milliseconds) is read at once by
:func:`parse_times`, with Arrow and NumPy (imported when it is called); it is
what ``read_log`` and ``send_many(time_format=...)`` call.
"""

from __future__ import annotations

import datetime as _dt
import math
import numbers
import re
import time
from typing import Any

from .exceptions import UsageError

__all__ = [
    "to_epoch",
    "to_seconds",
    "parse_times",
    "time_format_has_year",
    "EPOCH_FORMATS",
    "TimeLike",
    "DurationLike",
    "EARLIEST_EVENT_TIME",
    "LATEST_EVENT_TIME",
    "EVENT_TIME_RANGE",
    "event_time_problem",
    "frame_micros",
    "to_bound",
]

#: What :func:`to_epoch` takes (a number, a text, a datetime, ``pandas.Timestamp``, ``numpy.datetime64``).
TimeLike = Any
#: What :func:`to_seconds` takes (a number, a text, a timedelta, ``numpy.timedelta64``, a fixed pandas offset).
DurationLike = Any

#: The accepted range of event times in seconds since the epoch (UTC): from
#: 1678-01-01 (inclusive) to 2262-01-01 (exclusive), inside what every frame can
#: hold (pandas ``datetime64[ns]``: 1677-09-21 to 2262-04-11). Times before 1970
#: are accepted and found like any other; an event outside the range is refused
#: when it is sent, by the client before sending and by the collector per event.
EARLIEST_EVENT_TIME = -9_214_560_000.0
#: The end of the accepted range of event times (exclusive): 2262-01-01T00:00Z.
LATEST_EVENT_TIME = 9_214_646_400.0
#: The accepted range of event times, in words.
EVENT_TIME_RANGE = "from 1678-01-01T00:00Z (inclusive) to 2262-01-01T00:00Z (exclusive)"


def event_time_problem(seconds: float) -> str | None:
    """Why ``seconds`` cannot be an event's time (not finite, or outside the accepted range), or None.

    >>> event_time_problem(-10.0) is None, event_time_problem(EARLIEST_EVENT_TIME) is None
    (True, True)
    >>> event_time_problem(LATEST_EVENT_TIME)
    'timestamp 9214646400.0 is outside the accepted range of event times, from 1678-01-01T00:00Z (inclusive) to 2262-01-01T00:00Z (exclusive)'
    """
    if EARLIEST_EVENT_TIME <= seconds < LATEST_EVENT_TIME:
        return None
    if not math.isfinite(seconds):
        return f"timestamp {seconds!r} is not a finite number"
    return f"timestamp {seconds!r} is outside the accepted range of event times, {EVENT_TIME_RANGE}"

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


# --------------------------------------------------------------------------- points in time


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


# --------------------------------------------------------------------------- times as filter bounds


def frame_micros(seconds: float) -> int:
    """The microsecond a frame holds for an event time of ``seconds``: ``seconds * 1e6``
    (a float product) rounded half to even, the rule of
    :func:`~theia_frames.frames.convert.batches_to_dataframe` (its Arrow kernels, for columns).

    >>> frame_micros(1714521600.0000004), frame_micros(1714521600.0000006), frame_micros(-10.0000004)
    (1714521600000000, 1714521600000001, -10000000)
    >>> frame_micros(0.5e-6), frame_micros(1.5e-6), frame_micros(2.5e-6)   # halves to even
    (0, 2, 2)
    """
    return round(seconds * 1e6)


def to_bound(value: TimeLike, side: str, *, now: float | None = None, name: str = "time") -> float:
    """A time as the float seconds of a filter's ``start`` (``side="start"``) or ``end`` bound.

    Seconds (a number, numeric text) and times relative to now are the bound as
    they are. A calendar time (a ``datetime``, ``pandas.Timestamp``,
    ``numpy.datetime64``, ``date`` or ISO text) is taken at a frame's precision:
    the bound takes in every event whose frame time (:func:`frame_micros`) is at
    or after it (start) or at or before it (end). So a time read from a frame
    (``df.timestamp[i]``, an index value) finds the event it came from, though
    the float seconds on the wire lie up to half a microsecond from it:

    >>> import pandas as pd
    >>> t = 1714521600.0000004                     # an event's time on the wire
    >>> shown = pd.Timestamp(frame_micros(t) * 1000, tz="UTC")   # its time in a frame
    >>> to_bound(shown, "end") >= t >= to_bound(shown, "start")
    True
    >>> to_bound(1714521600, "end"), to_bound("-10s", "start", now=100.0)
    (1714521600.0, 90.0)
    """
    if side not in ("start", "end"):
        raise UsageError(f"a bound's side is 'start' or 'end', got {side!r}")
    nanos = _calendar_nanos(value, name)
    if nanos is None:
        return to_epoch(value, now=now, name=name)
    # the whole microseconds a frame can show inside the bound
    micros = -(-nanos // 1000) if side == "start" else nanos // 1000
    return _frame_edge(micros, side)


_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


def _calendar_nanos(value: Any, name: str) -> int | None:
    """A calendar time as integer nanoseconds since the epoch (naive: UTC); None for
    seconds, relative text and anything :func:`to_epoch` refuses (which it then says why)."""
    if isinstance(value, str):
        s = value.strip()
        low = s.lower()
        if not s or low == "now" or low[:1] in "+-" or _NUMBER.fullmatch(s):
            return None
        iso = s[:-1] + "+00:00" if s[-1:] in "zZ" else s
        iso = _FRACTION.sub(lambda m: f"{m.group(1)}.{m.group(2)[:6]:0<6}", iso)
        try:
            value = _dt.datetime.fromisoformat(iso)
        except ValueError:
            return None
    if type(value).__name__ in ("NaTType", "bool", "bool_") or (type(value).__name__ == "datetime64" and value != value):
        return None
    if type(value).__name__ == "Timestamp":  # pandas, to the nanosecond
        return int(value.value)
    if type(value).__name__ == "datetime64":
        return int(value.astype("datetime64[ns]").astype("int64"))
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return int((value - _EPOCH) // _dt.timedelta(microseconds=1)) * 1000
    if isinstance(value, _dt.date):
        return (value - _EPOCH.date()).days * 86_400_000_000_000
    return None


def _frame_edge(micros: int, side: str) -> float:
    """The float seconds at the edge of those a frame shows at ``micros`` or later (start),
    or at ``micros`` or earlier (end): :func:`frame_micros` never decreases as seconds
    grow, so that set is an interval and a float comparison with its edge is exact."""
    up, down = math.inf, -math.inf
    if side == "end":
        f = (micros + 0.5) / 1e6
        while frame_micros(f) > micros:
            f = math.nextafter(f, down)
        while frame_micros(math.nextafter(f, up)) <= micros:
            f = math.nextafter(f, up)
    else:
        f = (micros - 0.5) / 1e6
        while frame_micros(f) < micros:
            f = math.nextafter(f, up)
        while frame_micros(math.nextafter(f, down)) >= micros:
            f = math.nextafter(f, down)
    return f


# --------------------------------------------------------------------------- columns of times

#: The ``time_format`` values that are not strptime text: numbers of seconds, or of milliseconds, since the epoch.
EPOCH_FORMATS = {"epoch": "s", "epoch_ms": "ms"}

# strptime directives read by the vectorised parser: each becomes a regex group.
_DIRECTIVES = {
    "Y": r"(?P<Y>\d{4})", "y": r"(?P<y>\d{2})", "m": r"(?P<m>\d{1,2})", "d": r"(?P<d>\d{1,2})",
    "e": r"\s?(?P<d>\d{1,2})", "j": r"(?P<j>\d{1,3})", "H": r"(?P<H>\d{1,2})", "I": r"(?P<I>\d{1,2})",
    "M": r"(?P<M>\d{1,2})", "S": r"(?P<S>\d{1,2})", "f": r"(?P<f>\d{1,9})", "p": r"(?P<p>[AaPp][Mm])",
    "b": r"(?P<b>[A-Za-z]{3})", "h": r"(?P<b>[A-Za-z]{3})", "B": r"(?P<B>[A-Za-z]+)",
    "a": r"[A-Za-z]{3}", "A": r"[A-Za-z]+", "z": r"(?P<z>Z|[+-]\d\d(?::?\d\d)?)", "%": "%",
    "T": r"(?P<H>\d{1,2}):(?P<M>\d{1,2}):(?P<S>\d{1,2})", "F": r"(?P<Y>\d{4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})",
}
_MONTHS = ["january", "february", "march", "april", "may", "june", "july",
           "august", "september", "october", "november", "december"]
_ISO_COMMA = re.compile(r"(\d\d:\d\d:\d\d),(\d)")
_HAS_OFFSET = r"(?:[zZ]|[+-]\d\d:?\d\d)$"


def _format_regex(time_format: str) -> str | None:
    """``time_format`` as an anchored regex of named groups, or None when it uses a directive not read here."""
    out, i = ["^\\s*"], 0
    seen: set[str] = set()
    while i < len(time_format):
        c = time_format[i]
        if c == "%":
            d = time_format[i + 1 : i + 2]
            part = _DIRECTIVES.get(d)
            names = set(re.findall(r"\?P<(\w+)>", part or ""))
            if part is None or names & seen:
                return None
            seen |= names
            out.append(part)
            i += 2
        else:
            out.append(r"\s+" if c.isspace() else re.escape(c))
            i += 1
            while c.isspace() and i < len(time_format) and time_format[i].isspace():
                i += 1
    return "".join(out) + "\\s*$"


def time_format_has_year(time_format: str | None) -> bool:
    """Whether times of this format name their year (ISO-8601 and epoch times do).

    >>> time_format_has_year("%b %d %H:%M:%S"), time_format_has_year("%d/%b/%Y:%H:%M:%S %z")
    (False, True)
    """
    if time_format is None or time_format in EPOCH_FORMATS:
        return True
    return bool(re.search(r"%[YyFGs]", time_format))


def _strptime_parts(text: Any, regex: str) -> dict[str, Any]:
    """The fields of each time of a column (``regex`` from :func:`_format_regex`) as NumPy arrays:
    ``valid``, ``year`` (None without one), ``month``, ``day``, ``day_of_year`` (or None),
    ``second`` (of the day), ``fraction`` (ns) and ``offset`` (ns east of UTC, or None)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    parts = pc.extract_regex(text, regex)
    valid = pc.fill_null(pc.is_valid(parts), False).to_numpy(zero_copy_only=False)
    n = len(text)
    names = {parts.type.field(k).name for k in range(parts.type.num_fields)}

    def field(name: str, default: int) -> Any:
        if name not in names:
            return np.full(n, default, dtype=np.int64)
        values = pc.if_else(valid, parts.field(name), "0")
        return pc.cast(values, pa.int64()).to_numpy(zero_copy_only=False)

    year = None
    if "Y" in names:
        year = field("Y", 1970)
    elif "y" in names:
        yy = field("y", 70)
        year = np.where(yy < 69, 2000 + yy, 1900 + yy)
    month = field("m", 1)
    for name, pool in (("b", [m[:3] for m in _MONTHS]), ("B", _MONTHS)):
        if name in names:
            words = pc.utf8_lower(pc.if_else(valid, parts.field(name), ""))
            found = pc.fill_null(pc.index_in(words, value_set=pa.array(pool)), -1).to_numpy(zero_copy_only=False)
            valid &= found >= 0
            month = found.astype(np.int64) + 1
    day, hour = field("d", 1), field("H", 0)
    if "I" in names:
        twelve = field("I", 12)
        valid &= (twelve >= 1) & (twelve <= 12)
        pm = pc.fill_null(pc.equal(pc.utf8_lower(parts.field("p")), "pm"), False).to_numpy(zero_copy_only=False) if "p" in names else False
        hour = twelve % 12 + np.where(pm, 12, 0)
    minute, second = field("M", 0), field("S", 0)
    fraction = np.zeros(n, dtype=np.int64)
    if "f" in names:
        fraction = pc.cast(pc.utf8_rpad(pc.if_else(valid, parts.field("f"), "0"), 9, "0"), pa.int64()).to_numpy(zero_copy_only=False)
    valid &= (month >= 1) & (month <= 12) & (day >= 1) & (hour < 24) & (minute < 60) & (second < 60)
    offset = None
    if "z" in names:
        z = pc.replace_substring(pc.if_else(valid, parts.field("z"), "Z"), ":", "")
        zone = pc.extract_regex(z, r"^(?P<sign>[+-])(?P<hh>\d\d)(?P<mm>\d\d)?$")
        ok = pc.is_valid(zone)
        signs = np.where(pc.fill_null(pc.equal(zone.field("sign"), "-"), False).to_numpy(zero_copy_only=False), -1, 1)
        hh = pc.cast(pc.if_else(ok, zone.field("hh"), "0"), pa.int64()).to_numpy(zero_copy_only=False)
        mm_text = pc.if_else(ok, zone.field("mm"), "0")
        mm = pc.cast(pc.if_else(pc.equal(mm_text, ""), "0", mm_text), pa.int64()).to_numpy(zero_copy_only=False)
        offset = signs * (hh * 3600 + mm * 60) * 1_000_000_000
    return {
        "valid": valid,
        "year": year,
        "month": np.where(valid, month, 1),
        "day": day,
        "day_of_year": field("j", 1) if "j" in names else None,
        "second": (hour * 60 + minute) * 60 + second,
        "fraction": fraction,
        "offset": offset,
    }


def _strptime_columns(text: Any, regex: str, years: Any) -> Any:
    """``strptime`` over a column with Arrow's RE2 and NumPy: nanoseconds since the epoch
    (the int64 minimum where a time does not read), and whether the format had an offset.

    Each distinct text is read once (a log repeats its seconds); ``years(month, day,
    second, valid)`` gives the year of each time of a format without one.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(text)
    if len(encoded.dictionary) <= len(text) // 2:
        rows = pc.fill_null(encoded.indices, 0).to_numpy(zero_copy_only=False)
        parts = _strptime_parts(encoded.dictionary, regex)
        parts = {k: None if v is None else v[rows] for k, v in parts.items()}
        parts["valid"] = parts["valid"] & pc.is_valid(text).to_numpy(zero_copy_only=False)
    else:
        parts = _strptime_parts(text, regex)
    valid, year, month, day = parts["valid"], parts["year"], parts["month"], parts["day"]
    if year is None:
        year = years(month, day, parts["second"], valid)
    valid = valid & (year >= 1678) & (year <= 2261)  # what nanoseconds since the epoch hold
    year = np.where(valid, year, 1970)
    first = ((year - 1970) * 12 + month - 1).astype("datetime64[M]")
    if parts["day_of_year"] is not None:
        day_of_year = parts["day_of_year"]
        leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
        valid = valid & (day_of_year >= 1) & (day_of_year <= 365 + leap)
        days = (year - 1970).astype("datetime64[Y]").astype("datetime64[D]").astype(np.int64) + day_of_year - 1
    else:
        length = ((first + 1).astype("datetime64[D]") - first.astype("datetime64[D]")).astype(np.int64)
        valid = valid & (day <= length)
        days = first.astype("datetime64[D]").astype(np.int64) + day - 1
    ns = days * 86_400_000_000_000 + parts["second"] * 1_000_000_000 + parts["fraction"]
    if parts["offset"] is not None:
        ns = ns - parts["offset"]
    return np.where(valid, ns, np.iinfo(np.int64).min), parts["offset"] is not None


def parse_times(
    values: Any,
    time_format: str | list[str] | tuple[str, ...] | None = None,
    *,
    tz: Any = None,
    year: int | None = None,
    reference: float | None = None,
    last_month: int | None = None,
) -> Any:
    """A column of times as a ``pandas.Series`` of ``datetime64[ns, UTC]``, ``NaT`` where one does not parse.

    ``values`` is a ``pandas.Series``, a ``pyarrow`` array or a list, of text
    (or of numbers with ``"epoch"``/``"epoch_ms"``). ``time_format`` is

    - ``None``: ISO-8601 (``2024-05-01T10:00:00.5+02:00``, ``2024-05-01 10:00:00,123``);
    - ``"epoch"`` / ``"epoch_ms"``: seconds / milliseconds since the epoch;
    - ``strptime`` text such as ``"%b %d %H:%M:%S"`` or ``"%d/%b/%Y:%H:%M:%S %z"``
      (``%f`` takes 1 to 9 digits); a list of them: each time takes the first that reads it.

    Times without an offset are in ``tz`` (a zone name such as ``"Europe/Berlin"``;
    default UTC); a wall time that the zone skips is ``NaT``, one it repeats (the
    hour the clocks go back) is placed by the order of the times around it, or
    ``NaT`` where that cannot tell. Years outside 1678 to 2261 (what a frame's
    nanoseconds hold) are ``NaT`` too.
    For formats without a year (syslog's ``%b %d %H:%M:%S``): ``year`` is the
    first time's year, or else the latest year in which the first time is not
    after ``reference`` (seconds since the epoch, e.g. a file's modification
    time). Times are taken to be in order: a time whose month is two or more
    before the one before it (December, then January) starts the next year, one
    a month before (a late line at the turn of a month) does not. ``last_month`` is the month
    of the time before ``values``, when they continue a column read earlier.

    >>> parse_times(["Dec 31 23:59:59", "Jan  1 00:00:01"], "%b %d %H:%M:%S", year=2023).tolist()
    [Timestamp('2023-12-31 23:59:59+0000', tz='UTC'), Timestamp('2024-01-01 00:00:01+0000', tz='UTC')]
    >>> parse_times(["081109 203615", "bad"], "%y%m%d %H%M%S", tz="Europe/Berlin").tolist()
    [Timestamp('2008-11-09 19:36:15+0000', tz='UTC'), NaT]
    >>> parse_times([1714521600123], "epoch_ms").tolist()
    [Timestamp('2024-05-01 00:00:00.123000+0000', tz='UTC')]
    >>> parse_times(["2024-05-01 10:00:00,25"]).tolist()
    [Timestamp('2024-05-01 10:00:00.250000+0000', tz='UTC')]
    """
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        column = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    elif isinstance(values, pd.Series):
        column = pa.array(values.array) if isinstance(values.dtype, (pd.StringDtype, pd.ArrowDtype)) else pa.array(values.to_numpy(), from_pandas=True)
    else:
        column = pa.array(list(values), from_pandas=True)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    formats = list(time_format) if isinstance(time_format, (list, tuple)) else [time_format]
    if not formats:
        raise UsageError("time_format is an empty list: give at least one format")
    out = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
    aware = np.zeros(n, dtype=bool)
    for fmt in formats:
        todo = out == np.iinfo(np.int64).min
        if not todo.any():
            break
        part = column if todo.all() else column.filter(pa.array(todo))
        if fmt in EPOCH_FORMATS:
            numbers = pd.to_numeric(pd.Series(part.to_pandas()), errors="coerce")
            stamps = pd.to_datetime(numbers, unit="s" if fmt == "epoch" else "ms", utc=True, errors="coerce")
            got = pd.DatetimeIndex(stamps).as_unit("ns").asi8
            out[todo], aware[todo] = got, True
            continue
        if fmt is not None and not isinstance(fmt, str):
            raise UsageError(f"invalid time_format {fmt!r}: expected strptime text, 'epoch' or 'epoch_ms'")
        text = part if pa.types.is_string(part.type) else part.cast(pa.string())
        if fmt is None:
            text = pc.replace_substring_regex(pc.utf8_trim_whitespace(text), _ISO_COMMA.pattern, r"\1.\2")
            stamps = pd.to_datetime(pd.Series(text.to_pandas()), format="ISO8601", utc=True, errors="coerce")
            got = pd.DatetimeIndex(stamps).as_unit("ns").asi8
            has_offset = pc.fill_null(pc.match_substring_regex(text, _HAS_OFFSET), False).to_numpy(zero_copy_only=False)
        else:
            regex = _format_regex(fmt)
            if regex is None:
                if not time_format_has_year(fmt):
                    raise UsageError(f"time_format {fmt!r} has no year and a directive that cannot be placed in a year")
                stamps = pd.to_datetime(pd.Series(text.to_pandas()), format=fmt, utc=True, errors="coerce")
                got, has_offset = pd.DatetimeIndex(stamps).as_unit("ns").asi8, np.full(len(text), "%z" in fmt)
            else:

                def years_of(month: Any, day: Any, second: Any, ok: Any, fmt: str = fmt) -> Any:
                    return _years(month, day, second, ok, fmt, year, reference, last_month)

                got, zoned = _strptime_columns(text, regex, years_of)
                has_offset = np.full(len(text), zoned)
        out[todo] = got
        aware[todo] = has_offset
    result = pd.DatetimeIndex(pd.to_datetime(out, unit="ns", utc=True))
    local = ~aware & (out != np.iinfo(np.int64).min)
    if tz is not None and local.any():
        wall = result[local].tz_localize(None)
        try:
            # a wall time the zone repeats (the hour the clocks go back) is placed by the
            # order of the times around it, and missing (NaT) where that cannot tell
            moved = wall.tz_localize(tz, ambiguous="infer", nonexistent="NaT")
        except Exception:
            try:
                moved = wall.tz_localize(tz, ambiguous="NaT", nonexistent="NaT")
            except Exception as exc:  # an unknown zone name
                raise UsageError(f"invalid tz {tz!r}: {exc}") from None
        values_ns = result.asi8.copy()
        values_ns[local] = moved.tz_convert("UTC").as_unit("ns").asi8
        result = pd.DatetimeIndex(pd.to_datetime(values_ns, unit="ns", utc=True))
    return pd.Series(result, name=None).dt.as_unit("ns")


def _years(month: Any, day: Any, second: Any, ok: Any, fmt: str, year: int | None, reference: float | None, last_month: int | None) -> Any:
    """The year of each time of a format without one (see :func:`parse_times`), from its month, day and second of the day."""
    import numpy as np
    import pandas as pd

    if year is None and reference is None:
        raise UsageError(f"the times of format {fmt!r} have no year: give year= (the first time's year)")
    months = pd.Series(np.where(ok, month, np.nan))
    before = months.ffill().shift(1)
    if last_month is not None:
        before = before.fillna(float(last_month))
    rolled = (months < before - 1).to_numpy()
    if year is None:
        ref = _dt.datetime.fromtimestamp(float(reference or 0.0), _dt.timezone.utc)
        year = ref.year
        if ok.any():
            at = int(np.flatnonzero(ok)[0])
            first = (int(month[at]), int(day[at]), int(second[at]))
            if first > (ref.month, ref.day, ref.hour * 3600 + ref.minute * 60 + ref.second):
                year -= 1
    return year + np.cumsum(rolled)
