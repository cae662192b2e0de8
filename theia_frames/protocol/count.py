"""Counts where the data is: the extension's ``/count`` request, its reply, and the counting.

A count is a conversation of its own: on a connection to :data:`COUNT_PATH`
that negotiated ``theia-frames.v2`` the client sends one :func:`count_request`
(a filter, a grain, a grouping and, asked for or not, each group's first and last
event time: ``spans``) and the collector answers one :func:`count_reply`, or
``{"error": ...}``, then closes normally. A timeline
(:func:`theia_frames.frames.analysis.timeline_frame`) is a count per second by
source with spans.

The **grain** is a span in nanoseconds (0: no time buckets): each event is
counted in the grain-wide slot its time falls in, time rounded to the
microsecond as an event frame holds it, slots counted from the epoch.
The client picks a grain every bucket of the count's frequency is made of
whole slots, and lays the buckets out from the slots
(:func:`theia_frames.frames.analysis.count_frame`), so the answer has the
layout of ``bucket()`` over the same events.

:class:`Counter` is the one counting kernel: the collector runs it over the
batches of its store that match the filter, and a client whose peer cannot
count (the upstream collector, a client with ``batch=False``) runs it over the
batches of a find, as they arrive, in memory that grows with the groups, not
the events. Both stop at ``max_groups`` (slots × groups holding events).

>>> import pyarrow as pa
>>> from theia_frames.protocol.arrow import event_schema
>>> batch = pa.RecordBatch.from_pylist(
...     [{"id": "a", "timestamp": 0.5, "source": "x", "tags": ["t"], "content": ""},
...      {"id": "b", "timestamp": 61.0, "source": "y", "tags": [], "content": ""}],
...     schema=event_schema())
>>> counter = Counter(grain=60_000_000_000, by="source")
>>> counter.add(batch)
>>> result = counter.result()
>>> result.names, result.slots.tolist(), result.groups.tolist(), result.counts.tolist()
(['x', 'y'], [0, 1], [0, 1], [1, 1])
>>> parse_count_reply(count_reply(result)) == result
True
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from ..checks import positive_int
from ..exceptions import ProtocolError, ServerError, UsageError
from .messages import error_text

__all__ = [
    "COUNT_PATH",
    "DEFAULT_MAX_GROUPS",
    "MAX_COUNT_REPLY",
    "GROUPINGS",
    "UNSET_BUCKETS",
    "SECOND",
    "CountRequest",
    "CountResult",
    "Counter",
    "count_request",
    "parse_count_request",
    "count_reply",
    "parse_count_reply",
    "too_many_groups",
    "is_too_many_groups",
    "too_many_groups_sizes",
    "event_nanoseconds",
    "count_answer",
]

#: The extension's endpoint for counts (see the module's text).
COUNT_PATH = "/count"
#: Most (slot, group) pairs holding events a count may have, unless the collector's ``max_groups`` says otherwise.
DEFAULT_MAX_GROUPS = 1_000_000
#: Most bytes of a count's reply a client reads (1,000,000 pairs of numbers, and room for the names).
MAX_COUNT_REPLY = 256 * 1024 * 1024
#: ``max_buckets`` left out (of a count or of ``bucket()``): refuse far more buckets than events
#: (see :func:`theia_frames.frames.analysis.bucket`).
UNSET_BUCKETS: Any = -1
#: What a count may be grouped by, besides time: nothing, the event's source, each of its tags.
GROUPINGS = (None, "source", "tag")
#: The grain of one second (nanoseconds): a stored chunk's summary counts its events per second
#: (:meth:`Counter.add_counts`).
SECOND = 1_000_000_000

_TOO_MANY = "count refused: "
# Rows of pending (slot, group, count) triples gathered before they are summed.
_PENDING = 1 << 20


def event_nanoseconds(seconds: Any) -> np.ndarray:
    """Event times (float seconds, a numpy or Arrow array) as int64 nanoseconds, rounded to
    the microsecond (half to even) as an event frame's ``timestamp`` column holds them.

    >>> event_nanoseconds(np.array([0.0000005, 0.0000015, -1.5])).tolist()
    [0, 2000, -1500000000]
    """
    values = np.asarray(seconds, dtype=np.float64)
    nanoseconds: np.ndarray = np.rint(values * 1e6).astype(np.int64) * 1000
    return nanoseconds


@dataclass(frozen=True)
class CountRequest:
    """A count's question: the filter (its JSON text, as the collector reads filters), the grain
    in nanoseconds (0: no time buckets), the grouping (one of :data:`GROUPINGS`) and whether
    each group's first and last event time is asked for too (``spans``)."""

    filter: str
    grain: int
    by: str | None
    spans: bool = False


def _check(grain: Any, by: Any, spans: Any = False) -> None:
    if isinstance(grain, bool) or not isinstance(grain, int) or grain < 0:
        raise UsageError(f"a count's grain must be a whole number of nanoseconds, 0 or more; got {grain!r}")
    if by not in GROUPINGS:
        raise UsageError(f"a count is grouped by nothing, 'source' or 'tag'; got by={by!r}")
    if not isinstance(spans, bool):
        raise UsageError(f"a count's spans is true or false; got {spans!r}")


def count_request(filter_json: str, grain: int, by: str | None, spans: bool = False) -> str:
    """The client's message on :data:`COUNT_PATH` (``"spans"`` only when asked for).

    >>> count_request('{"start": 1}', 60_000_000_000, "source")
    '{"count": {"grain": 60000000000, "by": "source"}, "filter": {"start": 1}}'
    >>> parse_count_request(count_request("{}", 0, None))
    CountRequest(filter='{}', grain=0, by=None, spans=False)
    >>> parse_count_request(count_request("{}", SECOND, "source", spans=True)).spans
    True
    """
    _check(grain, by, spans)
    spec: dict[str, Any] = {"grain": grain, "by": by}
    if spans:
        spec["spans"] = True
    return json.dumps({"count": spec, "filter": json.loads(filter_json)})


def parse_count_request(message: str | bytes) -> CountRequest:
    """The :class:`CountRequest` of a client's message; :class:`~theia_frames.exceptions.UsageError`
    naming what is wrong with it otherwise."""
    try:
        obj = json.loads(message)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise UsageError(f"a count request must be a JSON object: {exc}") from exc
    if not isinstance(obj, dict) or set(obj) != {"count", "filter"} or not isinstance(obj["count"], dict):
        raise UsageError(
            'a count request is {"count": {"grain": NANOSECONDS, "by": null|"source"|"tag", "spans": false|true}, "filter": {...}}'
        )
    spec = obj["count"]
    unknown = set(spec) - {"grain", "by", "spans"}
    if unknown:
        raise UsageError(f"unknown count key(s): {', '.join(sorted(map(str, unknown)))}")
    grain, by, spans = spec.get("grain", 0), spec.get("by"), spec.get("spans", False)
    _check(grain, by, spans)
    return CountRequest(json.dumps(obj["filter"]), grain, by, spans)


def too_many_groups(groups: int, limit: int) -> str:
    """The refusal of a count past ``limit`` (slot, group) pairs (the same text on either side).

    >>> is_too_many_groups(too_many_groups(12, 10))
    True
    """
    return (
        f"{_TOO_MANY}it makes more than {limit:,} (time slot, group) pairs holding events (at least {groups:,}); "
        "count with a coarser every=, a narrower time range, or without by="
    )


def is_too_many_groups(text: str) -> bool:
    """Whether an error text is the refusal of :func:`too_many_groups`."""
    return text.startswith(_TOO_MANY)


def too_many_groups_sizes(text: str) -> tuple[int, int] | None:
    """The (pairs found at least, limit) of a refusal of :func:`too_many_groups`; None for another text.

    >>> too_many_groups_sizes(too_many_groups(1_200, 1_000)), too_many_groups_sizes("no")
    ((1200, 1000), None)
    """
    found = re.match(_TOO_MANY + r"it makes more than ([\d,]+) .*\(at least ([\d,]+)\)", text)
    if found is None:
        return None
    return int(found[2].replace(",", "")), int(found[1].replace(",", ""))


@dataclass
class CountResult:
    """A count's answer: for each (slot, group) pair holding events, its slot (time // grain),
    group (an index into ``names``) and count; and the first and last event times counted
    (nanoseconds, None when nothing was), from which the buckets are laid out.
    Pairs are ordered by slot, then group.

    ``firsts`` and ``lasts`` (a count of :class:`Counter` with ``spans``; None otherwise): the
    first and last event time (nanoseconds) of each group, in the order of ``names`` (of an
    ungrouped count: of its one group 0, when anything was counted)."""

    grain: int
    by: str | None
    names: list[str]
    slots: np.ndarray
    groups: np.ndarray
    counts: np.ndarray
    first: int | None
    last: int | None
    events: int = 0
    firsts: np.ndarray | None = None
    lasts: np.ndarray | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CountResult):
            return NotImplemented

        def same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
            return a is b if a is None or b is None else bool(np.array_equal(a, b))

        return (
            (self.grain, self.by, self.names, self.first, self.last, self.events)
            == (other.grain, other.by, other.names, other.first, other.last, other.events)
            and all(same(a, b) for a, b in ((self.slots, other.slots), (self.groups, other.groups), (self.counts, other.counts),
                                            (self.firsts, other.firsts), (self.lasts, other.lasts)))
        )


def _reduce(slots: np.ndarray, groups: np.ndarray, counts: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Triples summed per (slot, group), ordered by slot then group (``counts`` None: one each)."""
    if not len(slots):
        return slots, groups, np.zeros(0, dtype=np.int64) if counts is None else counts
    lo, hi = int(slots.min()), int(slots.max())
    width = int(groups.max()) + 1
    span = (hi - lo + 1) * width
    if span <= max(4 * len(slots), 1 << 16):
        # few possible pairs: one bincount over slot x group
        code = (slots - lo) * width + groups
        summed = np.bincount(code, weights=counts, minlength=span)
        held = np.flatnonzero(summed)
        return held // width + lo, (held % width).astype(np.int64), summed[held].astype(np.int64)
    if counts is None:
        counts = np.ones(len(slots), dtype=np.int64)
    order = np.lexsort((groups, slots))
    s, g, c = slots[order], groups[order], counts[order]
    starts = np.flatnonzero(np.concatenate(([True], (s[1:] != s[:-1]) | (g[1:] != g[:-1]))))
    return s[starts], g[starts], np.add.reduceat(c, starts).astype(np.int64)


# A group's first and last time before any event of it is counted.
_NO_FIRST = np.iinfo(np.int64).max
_NO_LAST = np.iinfo(np.int64).min


def _no_times() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


@dataclass
class Counter:
    """Counts of event batches (:func:`~theia_frames.protocol.arrow.event_schema`) per slot and
    group, accumulated batch by batch; :class:`~theia_frames.exceptions.UsageError` (the text of
    :func:`too_many_groups`) once more than ``max_groups`` pairs hold events.

    ``spans``: each group's first and last event time is kept too
    (:attr:`CountResult.firsts`, :attr:`CountResult.lasts`).

    >>> from theia_frames.protocol.arrow import event_schema
    >>> batch = pa.RecordBatch.from_pylist(
    ...     [{"id": "a", "timestamp": 1.5, "source": "x", "tags": [], "content": ""},
    ...      {"id": "b", "timestamp": 2.0, "source": "x", "tags": [], "content": ""}],
    ...     schema=event_schema())
    >>> counter = Counter(grain=SECOND, by="source", spans=True)
    >>> counter.add(batch)
    >>> counter.result().firsts.tolist(), counter.result().lasts.tolist()
    ([1500000000], [2000000000])
    """

    grain: int
    by: str | None = None
    max_groups: int = DEFAULT_MAX_GROUPS
    spans: bool = False
    names: list[str] = field(default_factory=list)
    _index: dict[str, int] = field(default_factory=dict)
    _pending: list[tuple[Any, Any, Any]] = field(default_factory=list)
    _pending_rows: int = 0
    _summed: tuple[Any, Any, Any] | None = None
    _first: int | None = None
    _last: int | None = None
    _events: int = 0
    _firsts: np.ndarray = field(default_factory=_no_times)
    _lasts: np.ndarray = field(default_factory=_no_times)

    def __post_init__(self) -> None:
        _check(self.grain, self.by)
        positive_int("max_groups", self.max_groups)

    def _codes_of(self, names: list[str]) -> np.ndarray:
        """Global group numbers of ``names`` (names numbered as first met)."""
        out: np.ndarray = np.empty(len(names), dtype=np.int64)
        for i, name in enumerate(names):
            code = self._index.get(name)
            if code is None:
                code = self._index[name] = len(self.names)
                self.names.append(name)
            out[i] = code
        return out

    def _codes(self, dictionary: Any) -> np.ndarray:
        """Global group numbers of a batch's dictionary."""
        return self._codes_of(dictionary.to_pylist())

    def _take(self, first: int, last: int, events: int, triples: tuple[Any, Any, Any]) -> None:
        """Count ``events`` from ``first`` to ``last`` (nanoseconds), as (slot, group, count) ``triples``."""
        self._first = first if self._first is None else min(self._first, first)
        self._last = last if self._last is None else max(self._last, last)
        self._events += events
        self._pending.append(triples)
        self._pending_rows += len(triples[0])
        if self._pending_rows >= _PENDING:
            self._merge()

    def _spread(self, groups: np.ndarray, firsts: np.ndarray, lasts: np.ndarray) -> None:
        """Widen the first and last times of ``groups`` to take in ``firsts`` and ``lasts``."""
        grow = len(self.names) - len(self._firsts)
        if grow > 0:
            self._firsts = np.concatenate([self._firsts, np.full(grow, _NO_FIRST, dtype=np.int64)])
            self._lasts = np.concatenate([self._lasts, np.full(grow, _NO_LAST, dtype=np.int64)])
        np.minimum.at(self._firsts, groups, firsts)
        np.maximum.at(self._lasts, groups, lasts)

    def add(self, batch: pa.RecordBatch) -> None:
        """Count the events of ``batch`` (its ``timestamp`` and, when grouped, ``source`` or ``tags``)."""
        rows = batch.num_rows
        if not rows:
            return
        ns = event_nanoseconds(batch.column("timestamp").to_numpy(zero_copy_only=False))
        times = ns
        slots = ns // self.grain if self.grain else np.zeros(rows, dtype=np.int64)
        if self.by is None:
            groups = np.zeros(rows, dtype=np.int64)
            self._codes_of(["count"])
        elif self.by == "source":
            column = batch.column("source")
            if not isinstance(column.type, pa.DictionaryType):
                column = column.dictionary_encode()
            groups = self._codes(column.dictionary)[column.indices.to_numpy(zero_copy_only=False)]
        else:
            tags = batch.column("tags")
            per_event = np.diff(tags.offsets.to_numpy())
            values = tags.flatten()
            encoded = values.dictionary_encode()
            groups = self._codes(encoded.dictionary)[encoded.indices.to_numpy(zero_copy_only=False)]
            slots = np.repeat(slots, per_event)
            if self.spans:
                times = np.repeat(ns, per_event)
        self._take(int(ns.min()), int(ns.max()), rows, _reduce(slots, groups, None))
        if self.spans and self.by is not None and len(groups):
            self._spread(groups, times, times)

    def add_span(self, first: float, last: float, rows: int) -> bool:
        """Count ``rows`` events known only by their first and last time (seconds; a stored
        chunk's index row) when that is enough: ungrouped, and all in one slot. Whether it was.

        >>> counter = Counter(grain=60_000_000_000)
        >>> counter.add_span(0.5, 59.0, 10), counter.add_span(30.0, 61.0, 4)
        (True, False)
        >>> counter.result().counts.tolist(), counter.result().events
        ([10], 10)
        """
        if self.by is not None or rows < 1:
            return False
        lo, hi = (int(v) for v in event_nanoseconds(np.array([first, last])))
        slot = lo // self.grain if self.grain else 0
        if self.grain and hi // self.grain != slot:
            return False
        self._codes_of(["count"])
        self._take(lo, hi, rows, (np.array([slot], dtype=np.int64), np.zeros(1, dtype=np.int64), np.array([rows], dtype=np.int64)))
        return True

    def takes(self, grain: int, by: str | None, spans: bool) -> bool:
        """Whether :meth:`add_counts` takes a count of ``grain``, grouped ``by``, with ``spans`` or not.

        >>> Counter(60 * SECOND).takes(SECOND, "source", False), Counter(SECOND // 2).takes(SECOND, "source", True)
        (True, False)
        """
        if by != self.by and not (self.by is None and by == "source"):
            return False
        if not (self.grain % grain == 0 if grain else self.grain == 0):
            return False
        return spans or not self.spans or self.by is None

    def add_counts(self, counted: CountResult) -> bool:
        """Count events already counted in slots of a finer grain (a stored chunk's summary:
        counted per :data:`SECOND` by source and by tag, with spans) when that is enough: its
        grain divides this count's (any grain does for a count of grain 0), it is grouped as
        this count is (an ungrouped count takes a count by source: each event has one source),
        and it kept its groups' spans if this count keeps them. Whether it was.

        The same events counted from their rows (:meth:`add`) and from a count of them give
        the same result.

        >>> from theia_frames.protocol.arrow import event_schema
        >>> batch = pa.RecordBatch.from_pylist(
        ...     [{"id": str(i), "timestamp": 58.0 + i, "source": "xy"[i % 2], "tags": [], "content": ""}
        ...      for i in range(4)], schema=event_schema())
        >>> per_second = Counter(SECOND, "source", spans=True)
        >>> per_second.add(batch)
        >>> per_minute, reference = Counter(60 * SECOND), Counter(60 * SECOND)
        >>> per_minute.add_counts(per_second.result()), per_minute.add_counts(Counter(7).result())
        (True, False)
        >>> reference.add(batch)
        >>> per_minute.result() == reference.result(), per_minute.result().counts.tolist()
        (True, [2, 2])
        """
        if not self.takes(counted.grain, counted.by, counted.firsts is not None):
            return False
        if counted.first is None or counted.last is None or not counted.events:
            return True
        slots = counted.slots // (self.grain // counted.grain) if self.grain else np.zeros(len(counted.slots), dtype=np.int64)
        if self.by is None:
            codes = self._codes_of(["count"])
            groups = np.zeros(len(slots), dtype=np.int64)
        else:
            codes = self._codes_of(counted.names)
            groups = codes[counted.groups]
        self._take(counted.first, counted.last, counted.events, _reduce(slots, groups, counted.counts))
        if self.spans and self.by is not None and counted.firsts is not None and counted.lasts is not None:
            self._spread(codes, counted.firsts, counted.lasts)
        return True

    def _merge(self) -> None:
        parts = list(self._pending)
        if self._summed is not None:
            parts.append(self._summed)
        self._pending, self._pending_rows = [], 0
        if not parts:
            return
        merged = _reduce(*(np.concatenate([p[i] for p in parts]) for i in range(3)))
        if len(merged[0]) > self.max_groups:
            raise UsageError(too_many_groups(len(merged[0]), self.max_groups))
        self._summed = merged

    def result(self) -> CountResult:
        """What was counted so far (pairs ordered by slot, then group)."""
        self._merge()
        empty = np.zeros(0, dtype=np.int64)
        s, g, c = self._summed if self._summed is not None else (empty, empty, empty)
        names: list[str] = []
        firsts = lasts = None
        if self.by is not None:
            # the names of the groups counted alone (a batch's dictionary may hold more)
            used = np.unique(g)
            names = [self.names[i] for i in used.tolist()]
            g = np.searchsorted(used, g).astype(np.int64)
            if self.spans:
                firsts, lasts = self._firsts[used], self._lasts[used]
        elif self.spans:
            held = [] if self._first is None else [self._first]
            firsts, lasts = np.array(held, dtype=np.int64), np.array([self._last] if held else [], dtype=np.int64)
        return CountResult(self.grain, self.by, names, s, g, c, self._first, self._last, self._events, firsts, lasts)


def count_reply(result: CountResult) -> str:
    """The collector's answer on :data:`COUNT_PATH` (one text message)."""
    counted = {
        "grain": result.grain,
        "by": result.by,
        "names": result.names,
        "slots": result.slots.tolist(),
        "groups": result.groups.tolist(),
        "counts": result.counts.tolist(),
        "first": result.first,
        "last": result.last,
        "events": result.events,
    }
    if result.firsts is not None and result.lasts is not None:
        counted["firsts"], counted["lasts"] = result.firsts.tolist(), result.lasts.tolist()
    return json.dumps({"counted": counted}, ensure_ascii=False)


def _ints(value: Any, what: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{what} must be a list of whole numbers")
    return value


def parse_count_reply(message: str | bytes) -> CountResult | None:
    """The :class:`CountResult` of a :func:`count_reply`, else None (anything else, or a reply whose
    parts do not fit together: lists of different lengths, a group with no name, a count below 1,
    a group's first time after its last).

    >>> counter = Counter(SECOND, "source", spans=True)
    >>> parse_count_reply(count_reply(counter.result())) == counter.result()
    True
    """
    if not isinstance(message, str) or not message.startswith('{"counted"'):
        return None
    try:
        obj = json.loads(message)["counted"]
        grain, by, names = obj["grain"], obj["by"], obj["names"]
        _check(grain, by)
        slots, groups, counts = (np.array(_ints(obj[k], k), dtype=np.int64) for k in ("slots", "groups", "counts"))
        first, last, events = obj["first"], obj["last"], obj["events"]
        spans = [np.array(_ints(obj[k], k), dtype=np.int64) for k in ("firsts", "lasts") if k in obj]
    except (ValueError, KeyError, TypeError, UsageError, OverflowError):
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    if not (len(slots) == len(groups) == len(counts)) or (len(counts) and (counts.min() < 1 or groups.min() < 0)):
        return None
    if by is not None and len(groups) and groups.max() >= len(names):
        return None
    if by is None and len(groups) and groups.max() > 0:
        return None
    if (first is None) != (last is None) or not isinstance(events, int) or events < 0:
        return None
    if first is not None and not (isinstance(first, int) and isinstance(last, int) and first <= last):
        return None
    if not spans:
        return CountResult(grain, by, names, slots, groups, counts, first, last, events)
    if len(spans) != 2:
        return None
    firsts, lasts = spans
    groups_held = len(names) if by is not None else (0 if first is None else 1)
    if not (len(firsts) == len(lasts) == groups_held) or (firsts > lasts).any():
        return None
    return CountResult(grain, by, names, slots, groups, counts, first, last, events, firsts, lasts)


def count_answer(message: Any, grain: int, by: str | None, url: str, spans: bool = False) -> CountResult:
    """What the collector's answer to a count request means: its :class:`CountResult` (with
    each group's first and last time when ``spans`` were asked for), or
    :class:`~theia_frames.exceptions.UsageError` (a count refused as too large: the same error a
    client counting by itself raises), :class:`~theia_frames.exceptions.ServerError` (any other
    error answer), :class:`~theia_frames.exceptions.ProtocolError` (no answer, or not a count of
    the question asked).

    >>> count_answer('{"error": "' + too_many_groups(3, 2) + '"}', 0, None, "ws://h")
    Traceback (most recent call last):
    ...
    theia_frames.exceptions.UsageError: count refused: it makes more than 2 (time slot, group) pairs holding events (at least 3); count with a coarser every=, a narrower time range, or without by=
    """
    if message is None:
        raise ProtocolError(f"{url}{COUNT_PATH} closed the connection without answering the count")
    text = error_text(message)
    if text is not None:
        if is_too_many_groups(text):
            raise UsageError(text)
        raise ServerError(text, url=url)
    result = parse_count_reply(message)
    if result is None:
        raise ProtocolError(f"{url}{COUNT_PATH} answered a count with {str(message)[:80]!r}")
    if result.grain != grain or result.by != by:
        raise ProtocolError(
            f"{url}{COUNT_PATH} answered a count in spans of {result.grain} ns by {result.by!r}; "
            f"it was asked for spans of {grain} ns by {by!r}"
        )
    if spans and result.firsts is None:
        raise ProtocolError(f"{url}{COUNT_PATH} answered a count without its groups' first and last times, which were asked for")
    return result
