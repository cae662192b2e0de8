"""Event filters: one meaning, shared by the client, the collector and the frames.

A filter matches an event when

- ``start <= timestamp <= end`` (either bound may be absent; a start of 0 is no bound, as
  on the wire, where it is left out; a negative start is a time before 1970),
- every tag pattern **fully** matches at least one of the event's tags,
- the content pattern is **found anywhere** in the content (a regex search),
- the id and source patterns, when given, **fully** match the id and source.

Builder methods mirror the Go client's and return a new filter::

    >>> f = Filter(1550710745.1).match_tag("sensor", "temp.+").match_content(r"\\d+C").order_asc()
    >>> f.to_json()
    '{"start": 1550710745.1, "tags": ["sensor", "temp.+"], "content": "\\\\\\\\d+C", "order": "asc"}'
    >>> f.matches(Event(id="x", timestamp=1550710746.0, tags=["sensor", "temp-1"], content="21C"))
    True

A bound given as a calendar time (a ``datetime``, ``pandas.Timestamp``,
``numpy.datetime64`` or ISO text) is taken at a frame's precision, the
microsecond (:func:`~theia_frames.timeparse.to_bound`): a time read from a frame
finds the event it came from, as a start and as an end. Seconds are compared as
they are.

Bad values fail when the filter is built:

    >>> Filter(10).match_end(5)
    Traceback (most recent call last):
    ...
    theia_frames.exceptions.InvalidFilterError: filter end 5.0 is before start 10.0
"""

from __future__ import annotations

import datetime as dt  # noqa: F401  (used by the doctests)
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .event import Event
from .exceptions import InvalidFilterError, MissingDependencyError, UsageError
from .timeparse import EARLIEST_EVENT_TIME, TimeLike, to_bound
from .matching import Kernel, dictionary_indices, distinct_values, is_literal, mask_tags

__all__ = ["EventFilter", "Filter", "FilterLike", "as_filter", "Order", "ORDERS", "Engine", "ENGINES", "max_filter_length"]

Order = Literal["asc", "desc"]
ORDERS = ("asc", "desc")

Engine = Literal["re", "re2"]
ENGINES = ("re", "re2")


def _compile_re2(pattern: str) -> Any:
    try:
        import re2
    except ImportError as exc:  # pragma: no cover - google-re2 is a dependency
        raise MissingDependencyError("google-re2", "re2", "linear-time filter patterns") from exc
    options = re2.Options()
    options.log_errors = False
    try:
        return re2.compile(pattern, options=options)
    except re2.error as exc:
        detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(f"{detail} (unsupported by the linear-time RE2 engine, or invalid)") from None


_COMPILERS: dict[str, Callable[[str], Any]] = {"re": re.compile, "re2": _compile_re2}


def _number(name: str, value: Any) -> float | None:
    """A filter bound (``name`` is ``start`` or ``end``) as float seconds since the epoch,
    read by :func:`~theia_frames.timeparse.to_bound`."""
    if value is None:
        return None
    try:
        return to_bound(value, name, name=f"filter {name}")
    except UsageError as exc:
        raise InvalidFilterError(str(exc)) from None


def _wire_number(obj: Mapping[str, Any], key: str) -> Any:
    """``obj[key]`` when it is what the JSON form allows for a bound: a number (or absent)."""
    value = obj.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise InvalidFilterError(f"filter {key} must be a number of seconds since the epoch, got {value!r}")
    return value


def _pattern(name: str, value: Any, engine: str) -> Any:
    if not isinstance(value, str):
        raise InvalidFilterError(f"filter {name} must be a string regular expression, got {value!r}")
    try:
        return _COMPILERS[engine](value)
    except (re.error, ValueError, OverflowError, RecursionError) as exc:
        raise InvalidFilterError(f"filter {name} is not a valid regular expression {value!r}: {exc}") from None


@dataclass(frozen=True)
class EventFilter:
    """Which events to return, and in which order (immutable; builders return copies).

    ``start``/``end`` are float seconds since the epoch (UTC), given as any
    time :func:`~theia_frames.timeparse.to_epoch` reads (a number, a
    ``datetime`` — naive is UTC —, a ``pandas.Timestamp``, a ``numpy.datetime64``,
    ISO text, or text relative to now such as ``"-15m"``, resolved when the
    filter is built); ``tags`` a tuple
    of regexes; ``content``, ``id``, ``source`` regexes; ``order`` ``"asc"`` or
    ``"desc"``. ``engine`` compiles the patterns: Python's ``re`` (the
    default) or ``"re2"``, a linear-time engine that cannot be made to hang by
    a pathological pattern (the collector uses it for filters from the
    network); RE2 refuses backreferences and lookaround.

    >>> EventFilter(content="(a+)+$", engine="re2").matches(Event(content="a" * 10_000 + "b"))
    False
    """

    start: float | None = None
    end: float | None = None
    tags: tuple[str, ...] = ()
    content: str | None = None
    order: Order | None = None
    id: str | None = None
    source: str | None = None
    engine: Engine = field(default="re", compare=False, repr=False)
    _compiled: tuple[Any, ...] = field(default=(), init=False, repr=False, compare=False)
    _kernels: tuple[Any, ...] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        start = _number("start", self.start)
        end = _number("end", self.end)
        if start == 0:
            start = None  # as on the wire: no start
        if start is not None and end is not None and end < start:
            raise InvalidFilterError(f"filter end {end} is before start {start}")
        tags = self.tags
        if isinstance(tags, str) or not isinstance(tags, Iterable):
            raise InvalidFilterError(f"filter tags must be a list of strings, got {tags!r}")
        tags = tuple(tags)
        if self.engine not in ENGINES:
            raise InvalidFilterError(f"filter engine must be 're' or 're2', got {self.engine!r}")
        if self.order is not None and self.order not in ORDERS:
            raise InvalidFilterError(f"filter order must be 'asc' or 'desc', got {self.order!r}")
        compiled = (
            tuple(_pattern("tag", t, self.engine) for t in tags),
            None if self.content is None else _pattern("content", self.content, self.engine),
            None if self.id is None else _pattern("id", self.id, self.engine),
            None if self.source is None else _pattern("source", self.source, self.engine),
        )
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)
        object.__setattr__(self, "tags", tags)
        object.__setattr__(self, "_compiled", compiled)

    # ------------------------------------------------------------------ builders
    def match_tag(self, *tags: str) -> EventFilter:
        """A copy that also requires these tag patterns."""
        return replace(self, tags=self.tags + tags)

    def match_content(self, pattern: str) -> EventFilter:
        """A copy whose content must contain a match of ``pattern``."""
        return replace(self, content=pattern)

    def match_end(self, end: TimeLike) -> EventFilter:
        """A copy that only matches events at or before ``end`` (any time :class:`EventFilter` takes)."""
        return replace(self, end=end)

    def match_start(self, start: TimeLike) -> EventFilter:
        """A copy that only matches events at or after ``start`` (any time :class:`EventFilter` takes)."""
        return replace(self, start=start)

    def match_source(self, pattern: str) -> EventFilter:
        """A copy whose source must fully match ``pattern``."""
        return replace(self, source=pattern)

    def match_id(self, pattern: str) -> EventFilter:
        """A copy whose id must fully match ``pattern``."""
        return replace(self, id=pattern)

    def order_asc(self) -> EventFilter:
        """A copy that asks for ascending timestamp order."""
        return replace(self, order="asc")

    def order_desc(self) -> EventFilter:
        """A copy that asks for descending timestamp order."""
        return replace(self, order="desc")

    # ------------------------------------------------------------------ matching
    def matches(self, event: Event) -> bool:
        """Whether ``event`` matches (see the module docstring for the meaning)."""
        return self.matches_fields(event.timestamp, event.tags, event.content, event.id, event.source)

    def matches_fields(
        self, timestamp: float, tags: list[str], content: str, id: str = "", source: str = ""
    ) -> bool:
        """:meth:`matches` on loose fields, for callers that hold no Event."""
        if self.start is not None and timestamp < self.start:
            return False
        if self.end is not None and timestamp > self.end:
            return False
        tag_res, content_re, id_re, source_re = self._compiled
        for pat in tag_res:
            if not any(pat.fullmatch(t) for t in tags):
                return False
        if content_re is not None and content_re.search(content) is None:
            return False
        if id_re is not None and id_re.fullmatch(id) is None:
            return False
        if source_re is not None and source_re.fullmatch(source) is None:
            return False
        return True

    def mask_batch(self, batch: pa.RecordBatch) -> np.ndarray:
        """:meth:`matches_fields` of every event of an event-schema batch, one bool each,
        computed with Arrow kernels over whole columns (tags as comma text or as lists).

        Each pattern is matched by Arrow's RE2 where that means exactly what
        :meth:`matches_fields` means (see :class:`Kernel`), by its compiled
        pattern row by row otherwise, and then only on the rows still in question.
        """
        n = batch.num_rows
        keep = np.ones(n, dtype=bool)
        if self.start is not None or self.end is not None:
            ts = batch.column("timestamp").to_numpy()
            # written as matches_fields reads it (a NaN is outside no bound)
            if self.start is not None:
                keep &= ~(ts < self.start)
            if self.end is not None:
                keep &= ~(ts > self.end)
        tag_kernels, *others = self._batch_kernels()
        for kernel, name in zip(others, ("content", "id", "source")):
            if kernel is not None and keep.any():
                column = batch.column(name)
                distinct = distinct_values(column)
                if distinct is None:
                    keep &= kernel.mask(column, keep)
                else:
                    keep &= kernel.mask(distinct.dictionary)[dictionary_indices(distinct)]
        if tag_kernels and keep.any():
            column = batch.column("tags")
            distinct = distinct_values(column)
            if distinct is None:
                keep = mask_tags(tag_kernels, column, keep)
            else:
                values = distinct.dictionary
                keep &= mask_tags(tag_kernels, values, np.ones(len(values), dtype=bool))[dictionary_indices(distinct)]
        return keep

    def _batch_kernels(self) -> tuple[Any, ...]:
        """The filter's patterns as :class:`Kernel` objects (made once, on first use)."""
        kernels = self._kernels
        if kernels is None:
            tag_res, content_re, id_re, source_re = self._compiled
            engine = self.engine

            def kernel(source: str | None, compiled: Any, full: bool) -> Kernel | None:
                return None if source is None else Kernel(source, compiled, engine, full)

            kernels = (
                tuple(Kernel(t, c, engine, True) for t, c in zip(self.tags, tag_res)),
                kernel(self.content, content_re, False),
                kernel(self.id, id_re, True),
                kernel(self.source, source_re, True),
            )
            object.__setattr__(self, "_kernels", kernels)
        return kernels

    def may_match(self, sources: Iterable[str], tags: Iterable[str]) -> bool:
        """Whether an event whose source is one of ``sources`` and whose tags are all among
        ``tags`` may match (a stored chunk's summary lists both): False when the source
        pattern fully matches none of ``sources``, or a tag pattern none of ``tags``, with
        the kernels :meth:`mask_batch` uses; the other criteria are not looked at.

        >>> f = EventFilter(tags=("alarm",), source="/dev/s.*")
        >>> f.may_match(["/dev/s1", "/var/x"], ["alarm", "prod"]), f.may_match(["/dev/s1"], ["prod"])
        (True, False)
        >>> f.may_match(["/var/x"], ["alarm"]), EventFilter(content="x").may_match([], [])
        (False, True)
        """
        tag_kernels, _, _, source_kernel = self._batch_kernels()
        if source_kernel is not None and not source_kernel.mask(pa.array(list(sources), pa.string())).any():
            return False
        names = pa.array(list(tags), pa.string()) if tag_kernels else None
        return all(kernel.mask(names).any() for kernel in tag_kernels)

    def match_time(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The rows of an event-schema batch inside ``[start, end]`` (the batch itself when all are)."""
        if batch.num_rows == 0 or (self.start is None and self.end is None):
            return batch
        ts = batch.column("timestamp")
        bounds = pc.min_max(ts)
        lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
        if (self.start is None or lo >= self.start) and (self.end is None or hi <= self.end):
            return batch
        keep = None
        if self.start is not None:
            keep = pc.greater_equal(ts, self.start)
        if self.end is not None:
            below = pc.less_equal(ts, self.end)
            keep = below if keep is None else pc.and_(keep, below)
        return batch.filter(keep)

    def match_batch(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The rows of an event-schema batch that match (the batch itself when all do):
        the one way a batch is checked against a filter, wherever it is.

        >>> from theia_frames.protocol.arrow import events_to_batch
        >>> b = events_to_batch([Event(id="a", timestamp=1.0, tags=["x"]), Event(id="b", timestamp=2.0)])
        >>> EventFilter(start=1.5).match_batch(b).column("id").to_pylist()
        ['b']
        >>> EventFilter().match_tag("x").match_batch(b).column("id").to_pylist()
        ['a']
        """
        if self.is_time_only or batch.num_rows == 0:
            return self.match_time(batch)
        keep = self.mask_batch(batch)
        if keep.all():
            return batch
        return batch.filter(pa.array(keep, pa.bool_()))

    @property
    def matched_by_kernels(self) -> bool:
        """Whether every pattern of the filter is matched by an Arrow kernel (none row by row).

        >>> EventFilter(tags=("x",), content="a.c").matched_by_kernels
        True
        """
        tags, *others = self._batch_kernels()
        kernels = (*tags, *(k for k in others if k is not None))
        return all(k.literal is not None or k.regex is not None for k in kernels)

    @property
    def fields(self) -> tuple[str, ...]:
        """The event fields the filter's patterns read (the time range aside), in schema order.

        >>> EventFilter(tags=("x",), content="y").fields
        ('tags', 'content')
        """
        used = {"tags": bool(self.tags), "content": self.content is not None, "id": self.id is not None,
                "source": self.source is not None}
        return tuple(name for name in ("id", "source", "tags", "content") if used[name])

    @property
    def is_time_only(self) -> bool:
        """True when only the time range (and order) restricts matches."""
        return not (self.tags or self.content is not None or self.id is not None or self.source is not None)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """The JSON object both peers accept, empty fields omitted (Go's ``omitempty``)."""
        d: dict[str, Any] = {}
        if self.start:
            d["start"] = self.start
        if self.end is not None:
            d["end"] = self.end
        if self.tags:
            d["tags"] = list(self.tags)
        if self.content is not None:
            d["content"] = self.content
        if self.order is not None:
            d["order"] = self.order
        if self.id is not None:
            d["id"] = self.id
        if self.source is not None:
            d["source"] = self.source
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], *, engine: Engine = "re") -> EventFilter:
        """Build from a JSON object, failing with a message that names a bad key or value."""
        if not isinstance(obj, Mapping):
            raise InvalidFilterError(f"a filter must be a JSON object, got {type(obj).__name__}")
        unknown = set(obj) - {"start", "end", "tags", "content", "order", "id", "source"}
        if unknown:
            raise InvalidFilterError(f"unknown filter key(s): {', '.join(sorted(map(str, unknown)))}")
        tags = obj.get("tags") or ()
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            if tags != ():
                raise InvalidFilterError(f"filter tags must be a list of strings, got {tags!r}")
        start = _wire_number(obj, "start")
        return cls(
            start=start if start != 0 else None,
            end=_wire_number(obj, "end"),
            tags=tuple(tags),
            content=obj.get("content"),
            order=obj.get("order"),
            id=obj.get("id"),
            source=obj.get("source"),
            engine=engine,
        )

    @classmethod
    def from_json(
        cls,
        text: str | bytes,
        *,
        engine: Engine = "re",
        max_patterns: int | None = None,
        max_pattern_size: int | None = None,
    ) -> EventFilter:
        """Parse the filter a peer sent, refusing (before compiling anything) more than
        *max_patterns* patterns or one longer than *max_pattern_size* UTF-8 bytes.

        >>> EventFilter.from_json('{"start": 5, "tags": ["a", "b"]}', max_patterns=1)
        Traceback (most recent call last):
        ...
        theia_frames.exceptions.InvalidFilterError: filter has 2 patterns; this collector accepts at most 1 per filter
        """
        if max_patterns is not None and max_pattern_size is not None and len(text) > max_filter_length(max_patterns, max_pattern_size):
            raise InvalidFilterError(
                f"filter of {len(text)} bytes is longer than this collector accepts "
                f"({max_patterns} patterns of at most {max_pattern_size} bytes)"
            )
        try:
            obj = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidFilterError(f"filter is not valid JSON: {exc}") from None
        except RecursionError:
            raise InvalidFilterError("filter is not valid JSON: nested too deep") from None
        if isinstance(obj, dict):
            _check_patterns(obj, max_patterns, max_pattern_size)
        return cls.from_dict(obj, engine=engine)

    # ------------------------------------------------------------------ peer forms
    def for_find(self, *, plain: bool = False) -> dict[str, Any]:
        """The object to send to ``/find``: a start is always present and not zero.

        The upstream collector rejects a missing or zero start, so an open start
        is sent as the earliest accepted event time
        (:data:`~theia_frames.timeparse.EARLIEST_EVENT_TIME`), which means the same. ``plain=True``
        (a peer that did not accept the extension) sends what every such peer
        matches at least as widely as this filter (:meth:`_widened`), in
        ascending order: the caller re-checks each event and orders the result.
        """
        d = self._widened() if plain else self.to_dict()
        if not self.start:
            d = {"start": EARLIEST_EVENT_TIME, **d}
        return d

    def for_live(self, *, plain: bool = False) -> dict[str, Any]:
        """The object to send to ``/live``: whole-second integer bounds, no order.

        The upstream ``/live`` accepts only integer start/end, so the start is
        floored and the end ceiled; the caller re-checks events against this
        filter. ``plain=True`` sends the widened patterns of :meth:`_widened`.
        """
        d = self._widened() if plain else self.to_dict()
        d.pop("order", None)
        if "start" in d:
            d["start"] = math.floor(d["start"])
        if "end" in d:
            d["end"] = math.ceil(d["end"])
        return d

    def _widened(self) -> dict[str, Any]:
        """The filter as a peer without the extension can take it, matching at least
        every event this filter matches (docs/protocol.md, "Matching on plain peers").

        Upstream matches tags by exact membership (its file store and ``/live``)
        or by full regex match (its SQL store): only literal tag patterns mean the
        same to all of them, so only those are sent. It matches content with a
        search (file store), a full match (SQL store) or a match anchored at the
        start (``/live``): :func:`_as_search` turns the pattern into one that all
        three read as a search. Ids and sources are sent as they are (upstream's
        ``/find`` ignores them, its ``/live`` matches them anchored at the start). A pattern Python's ``re`` cannot compile is
        never sent: one such ``/live`` subscriber breaks upstream's ``/live`` for
        everyone. ``desc`` is asked as ``asc``: upstream cannot return it.
        """
        d: dict[str, Any] = {}
        if self.start:
            d["start"] = self.start
        if self.end is not None:
            d["end"] = self.end
        literal = [t for t in self.tags if is_literal(t)]
        if literal:
            d["tags"] = literal
        if self.engine == "re":
            # an RE2 pattern can compile in ``re`` with another meaning: check those here only
            if self.content is not None and (content := _as_search(self.content)) is not None:
                d["content"] = content
            for key in ("id", "source"):
                value = getattr(self, key)
                if value is not None and _compiles(value):
                    d[key] = value
        if self.order is not None:
            d["order"] = "asc"
        return d


_LEADING_FLAGS = re.compile(r"\(\?[aiLmsu]+\)")




def max_filter_length(max_patterns: int, max_pattern_size: int) -> int:
    """The longest JSON text a filter within these limits can take: every character
    of every pattern escaped as ``\\uXXXX``, keys and punctuation."""
    return max_patterns * (6 * max_pattern_size + 8) + 4096


def _check_patterns(obj: Mapping[str, Any], max_patterns: int | None, max_pattern_size: int | None) -> None:
    patterns: list[tuple[str, Any]] = [("content", obj.get("content")), ("id", obj.get("id")), ("source", obj.get("source"))]
    tags = obj.get("tags")
    if isinstance(tags, list):
        patterns += [("tag", t) for t in tags]
    texts = [(name, p) for name, p in patterns if isinstance(p, str)]
    if max_patterns is not None and len(texts) > max_patterns:
        raise InvalidFilterError(f"filter has {len(texts)} patterns; this collector accepts at most {max_patterns} per filter")
    if max_pattern_size is not None:
        for name, pattern in texts:
            size = len(pattern.encode("utf-8", "surrogatepass"))
            if size > max_pattern_size:
                raise InvalidFilterError(
                    f"filter {name} pattern of {size} bytes is longer than this collector accepts "
                    f"({max_pattern_size} bytes)"
                )


def _compiles(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError, ValueError):
        return False
    return True


def _as_search(pattern: str) -> str | None:
    """A pattern whose search, full match and start-anchored match all mean a
    search for ``pattern`` (None when ``pattern`` cannot be written so).

    >>> p = _as_search("5C")
    >>> bool(re.fullmatch(p, "21.5C\\nnext")), bool(re.match(p, "21.5C")), bool(re.search(p, "21.4C"))
    (True, True, False)
    """
    if not _compiles(pattern):
        return None
    flags = _LEADING_FLAGS.match(pattern)
    lead, body = (flags.group(), pattern[flags.end() :]) if flags else ("", pattern)
    wrapped = f"{lead}\\A(?s:.*?)(?:{body})(?s:.*)"
    return wrapped if _compiles(wrapped) else None


def Filter(start: TimeLike = None) -> EventFilter:  # noqa: N802 - mirrors the Go API
    """A new filter with a start time, like the Go ``comm.Filter(start)``.

    ``start`` is any time of :mod:`theia_frames.timeparse`: seconds since the
    epoch, a ``datetime`` (naive: UTC), a ``pandas.Timestamp``, a
    ``numpy.datetime64``, ISO text or text relative to now. A relative time is
    resolved when the filter is built: ``Filter("-15m")`` keeps the moment 15
    minutes before the call, not a sliding window.

    >>> Filter(5).start
    5.0
    >>> Filter("2024-05-01T00:00Z").start == Filter(dt.datetime(2024, 5, 1)).start  # at a frame's precision
    True
    >>> Filter(dt.datetime(2024, 5, 1)).matches(Event(timestamp=1714521599.9999996))  # shown as 00:00:00.000000
    True
    """
    return EventFilter(start=start)


#: What every function taking a filter accepts: an :class:`EventFilter`, its dict form, or None (all events).
FilterLike = Union[EventFilter, Mapping[str, Any], None]


def as_filter(value: FilterLike, *, what: str = "a filter", dict_ok: bool = True) -> EventFilter:
    """``value`` as an :class:`EventFilter`: the one reading of a filter argument, wherever one is taken.

    None is every event, a mapping is read by :meth:`EventFilter.from_dict` (unless
    ``dict_ok`` is false: an API of built filters only); ``what`` names the argument in
    the error for anything else.

    >>> as_filter({"start": 5}).start
    5.0
    >>> as_filter(None) == EventFilter()
    True
    >>> as_filter("sensor")
    Traceback (most recent call last):
    ...
    theia_frames.exceptions.UsageError: a filter must be an EventFilter, a dict or None, got str
    """
    if value is None:
        return EventFilter()
    if isinstance(value, EventFilter):
        return value
    if isinstance(value, Mapping) and dict_ok:
        return EventFilter.from_dict(value)
    raise UsageError(f"{what} must be an EventFilter{', a dict' if dict_ok else ''} or None, got {type(value).__name__}")
