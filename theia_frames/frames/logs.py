"""Log files as event frames, each line with its own time: :func:`read_log` and :func:`iter_log`.

A log line is read by a *format*: a preset of :data:`LOG_FORMATS` (syslog,
access logs, Python logging, JSON lines, logfmt, ...), a regex of your own with
named groups, or a ``<Field>`` template as in logparser's ``log_format``::

    >>> lines = ["Dec 31 23:59:58 gw sshd[41]: Accepted password for ann",
    ...          "Jan  1 00:00:03 gw cron[7]: job started",
    ...          "not a syslog line"]
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore", UnparsedLogWarning)   # said by the report below
    ...     df = read_log(lines, format="syslog", year=2023)
    >>> df[["timestamp", "source", "tags", "content", "pid"]]
                      timestamp source     tags                      content pid
    0 2023-12-31 23:59:58+00:00     gw  ['sshd']  Accepted password for ann  41
    1 2024-01-01 00:00:03+00:00     gw  ['cron']                 job started   7
    >>> print(df.attrs["theia_report"])
    3 line(s): 2 record(s), 1 line(s) not read:
      line 3: does not match the format: 'not a syslog line'

The frame has the columns and dtypes of :func:`~theia_frames.frames.convert.to_dataframe`
(new ids included), then one ``string[pyarrow]`` column per field of the format
other than its time and content; it goes into a collector as it is
(``client.send_many(df)``). Rows are in the file's line order.

How a line is read, in one place for every format:

- **Records.** A line's trailing whitespace (``\\r`` included) is not kept. A
  line that matches the format starts a record. With ``multiline=True`` (the
  default of formats whose messages span lines, such as stack traces, and of
  your own regex or template) a line that does not match joins the record
  before it, after a line break; otherwise it is not read. Blank lines are
  counted and skipped.
- **Time.** The field ``timestamp``, or else the fields named (in any case)
  ``date``, ``day``, ``month``, ``year``, ``time`` joined by a space in their order in the
  line, read by ``time_format`` with ``tz`` and ``year`` as
  :func:`~theia_frames.timeparse.parse_times` reads them (``"epoch"``, ``"epoch_ms"``,
  strptime text, or ISO-8601 when None). A file whose times have no year takes
  it from ``year=`` or else from the file's modification time.
- **Content.** The field ``content`` (in any case), or else the whole line.
- **Source and tags.** ``source=`` names the field that becomes the source
  (without one: ``origin``, by default the file's path); ``tags=`` the fields
  whose values become tags (empty values are left out).
- **Nothing silent.** Every line that is not read (no match, no record to
  continue, a time that does not read) is counted in the :class:`LogReport`
  attached as ``df.attrs["theia_report"]``, with its line number, the reason
  and its text (the first :data:`MAX_UNPARSED_KEPT`); :func:`read_log` warns
  with :class:`UnparsedLogWarning`, and ``strict=True`` raises
  :class:`~theia_frames.exceptions.DecodeError` instead.

Parsing is columnar: the lines of a chunk are matched at once by Arrow's RE2
kernels (Python's ``re`` through pandas for a pattern RE2 cannot run) and their
times read at once. :func:`iter_log` reads a file of any size a chunk at a time.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..checks import positive_int
from ..exceptions import DecodeError, UsageError
from ..protocol.arrow import event_schema
from ..timeparse import parse_times, time_format_has_year
from .convert import EVENT_DTYPES, batches_to_dataframe
from .events_table import new_event_ids, seconds_of_ns
from .logformats import LOG_FORMATS, LogFormat, template_regex
from .loglines import ahead, json_records, line_batches, logfmt_records, match_lines

__all__ = [
    "read_log",
    "iter_log",
    "LogReport",
    "UnparsedLine",
    "UnparsedLogWarning",
    "LOG_FORMATS",
    "LogFormat",
    "MAX_UNPARSED_KEPT",
    "DEFAULT_BATCH_SIZE",
]

#: Unread lines kept in :attr:`LogReport.unparsed_lines`; the others are only counted.
MAX_UNPARSED_KEPT = 1000
#: Lines read and parsed at a time by :func:`iter_log` (about the most rows of a frame it yields).
DEFAULT_BATCH_SIZE = 200_000
_SUMMARY_LINES = 20
_TEXT_CHARS = 200
_TIME_FIELDS = ("date", "day", "month", "year", "time")
_EVENT_NAMES = frozenset(EVENT_DTYPES)


class UnparsedLogWarning(UserWarning):
    """Lines of a log were not read; the message says which, and why."""


@dataclass(frozen=True)
class UnparsedLine:
    """A line of a log that was not read: its number (from 1), why, its text (cut), and how
    many lines it stands for (a record's continuation lines are not read with it)."""

    line: int
    reason: str
    text: str
    count: int = 1

    def __str__(self) -> str:
        more = f" (and its {self.count - 1} continuation line(s))" if self.count > 1 else ""
        return f"line {self.line}: {self.reason}: {self.text!r}{more}"


@dataclass
class LogReport:
    """What reading a log did: lines read, records made, lines joined to a record, lines not read.

    ``unparsed`` counts every line not read; ``unparsed_lines`` keeps the first
    :data:`MAX_UNPARSED_KEPT` of them. ``joined`` counts continuation lines
    (added to the record before them), ``blank`` the empty lines skipped.
    """

    path: str = ""
    lines: int = 0
    records: int = 0
    joined: int = 0
    blank: int = 0
    unparsed: int = 0
    unparsed_lines: list[UnparsedLine] = field(default_factory=list)
    bytes_read: int = 0

    @property
    def ok(self) -> bool:
        """Whether every line that is not blank was read."""
        return self.unparsed == 0

    def count_bytes(self, n: int) -> None:
        """Count ``n`` more bytes read (what a progress bar shows)."""
        self.bytes_read += n

    def _note(self, line: int, reason: str, text: str, count: int = 1) -> None:
        self.unparsed += count
        if len(self.unparsed_lines) < MAX_UNPARSED_KEPT:
            cut = text if len(text) <= _TEXT_CHARS else text[:_TEXT_CHARS] + "..."
            self.unparsed_lines.append(UnparsedLine(line, reason, cut, count))

    def summary(self) -> str:
        """A few lines for people: the counts, then the first lines not read."""
        head = f"{self.path + ': ' if self.path else ''}{self.lines} line(s): {self.records} record(s)"
        head += f", {self.joined} continuation line(s) joined" if self.joined else ""
        head += f", {self.blank} blank" if self.blank else ""
        if not self.unparsed:
            return head
        lines = [head + f", {self.unparsed} line(s) not read:"]
        shown = self.unparsed_lines[:_SUMMARY_LINES]
        lines.extend(f"  {u}" for u in shown)
        more = self.unparsed - sum(u.count for u in shown)
        if more > 0:
            lines.append(f"  ... and {more} more line(s) not read")
        return "\n".join(lines)

    __str__ = summary


# --------------------------------------------------------------------------- one chunk


@dataclass
class _Plan:
    """A format resolved against the caller's options."""

    fmt: LogFormat
    regex: str | None
    time_format: Any
    tz: Any
    source: tuple[str, ...]
    tags: tuple[str, ...]
    multiline: bool
    origin: str
    year: int | None
    reference: float | None
    strict: bool
    add_tags: tuple[str, ...] = ()
    last_month: int | None = None
    carried: _Matched | None = None


def _pick(columns: dict[str, Any], names: Sequence[str]) -> str | None:
    lowered = {k.lower(): k for k in columns}
    for name in names:
        if name.lower() in lowered:
            return lowered[name.lower()]
    return None


def _first_present(fields: dict[str, pa.Array], names: Sequence[str]) -> tuple[pa.Array | None, list[str]]:
    """Per record, the value of the first of ``names`` (in any case) it has, and the fields that were looked at."""
    keys = [k for k in (_pick(fields, (n,)) for n in names) if k is not None]
    if not keys:
        return None, []
    return (fields[keys[0]] if len(keys) == 1 else pc.coalesce(*[fields[k] for k in keys])), keys


def _time_text(plan: _Plan, fields: dict[str, pa.Array]) -> tuple[pa.Array | None, list[str]]:
    """The time of each record as text, and the fields it was made of."""
    found, keys = _first_present(fields, plan.fmt.time_keys)
    if found is not None:
        return found, keys
    names = [k for k in fields if k.lower() in _TIME_FIELDS]
    if not names:
        return None, []
    if len(names) == 1:
        return fields[names[0]], names
    return pc.binary_join_element_wise(*[pc.fill_null(fields[k], "") for k in names], " "), names


def _tag_lists(values: list[pa.Array], rows: int) -> pa.Array:
    """Per row, the non-empty values of the given columns, as lists of tags."""
    if not values:
        return pa.ListArray.from_arrays(pa.array(np.zeros(rows + 1, np.int32)), pa.array([], pa.string()))
    stacked = pa.concat_arrays([v.cast(pa.string()) for v in values])
    present = pc.and_(pc.is_valid(stacked), pc.not_equal(pc.fill_null(stacked, ""), "")).to_numpy(zero_copy_only=False)
    present = pc.fill_null(pa.array(present), False).to_numpy(zero_copy_only=False).reshape(len(values), rows)
    row, col = np.nonzero(present.T)
    items = stacked.take(pa.array(col * rows + row))
    offsets = np.concatenate([[0], np.cumsum(present.sum(axis=0))]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), items)


def _join_continuations(content: pa.Array, starts: np.ndarray, lines: pa.Array, group: np.ndarray) -> pa.Array:
    """Each record's content, its continuation lines (``group`` = its record's number) added after line breaks."""
    follow = ~starts & (group >= 0)
    if not follow.any():
        return content
    extra = pd.Series(lines.filter(pa.array(follow)).to_pylist(), index=group[follow])
    joined = extra.groupby(level=0, sort=False).agg("\n".join)
    texts = content.to_pylist()
    for g, more in zip(joined.index.to_numpy(), joined.to_numpy()):
        texts[int(g)] = (texts[int(g)] or "") + "\n" + more
    return pa.array(texts, pa.string())


@dataclass
class _Matched:
    """A chunk's lines that are not blank, their numbers, which start a record, the fields of those."""

    lines: pa.Array
    numbers: np.ndarray
    starts: np.ndarray
    fields: dict[str, pa.Array]
    reasons: list[str] | None
    blank: int

    def slice(self, start: int, stop: int | None = None) -> _Matched:
        stop = len(self.lines) if stop is None else stop
        return _Matched(
            self.lines.slice(start, stop - start),
            self.numbers[start:stop],
            self.starts[start:stop],
            {k: v.slice(start, stop - start) for k, v in self.fields.items()},
            None if self.reasons is None else self.reasons[start:stop],
            0,
        )

    def then(self, other: _Matched) -> _Matched:
        """This chunk's lines followed by ``other``'s."""
        names = list(dict.fromkeys([*self.fields, *other.fields]))

        def column(m: _Matched, name: str) -> pa.Array:
            return m.fields[name] if name in m.fields else pa.nulls(len(m.lines), pa.string())

        reasons = None if self.reasons is None and other.reasons is None else (
            (self.reasons or [""] * len(self.lines)) + (other.reasons or [""] * len(other.lines))
        )
        return _Matched(
            pa.concat_arrays([self.lines, other.lines]),
            np.concatenate([self.numbers, other.numbers]),
            np.concatenate([self.starts, other.starts]),
            {k: pa.concat_arrays([column(self, k), column(other, k)]) for k in names},
            reasons,
            self.blank + other.blank,
        )


def _match_chunk(lines: pa.Array, first_line: int, plan: _Plan) -> _Matched:
    """Blank lines set aside, then every line matched by the format (stateless: run ahead in a thread)."""
    numbers = np.arange(first_line, first_line + len(lines))
    blank = pc.equal(pc.binary_length(lines), 0).to_numpy(zero_copy_only=False)  # lines come right-trimmed
    if blank.any():
        keep = pa.array(~blank)
        lines, numbers = lines.filter(keep), numbers[~blank]
    reasons: list[str] | None = None
    if plan.fmt.kind == "jsonl":
        starts, fields, reasons = json_records(lines)
    elif plan.fmt.kind == "logfmt":
        starts, fields = logfmt_records(lines)
    else:
        assert plan.regex is not None
        starts, fields = match_lines(lines, plan.regex)
    return _Matched(lines, numbers, starts, fields, reasons, int(blank.sum()))


def _parse_chunk(matched: _Matched, plan: _Plan, report: LogReport, final: bool) -> _Records | None:
    """The records of a chunk of matched lines (None when it holds none)."""
    report.blank += matched.blank
    if plan.carried is not None:
        matched = plan.carried.then(matched)
        plan.carried = None
    lines, numbers, starts, fields, reasons = matched.lines, matched.numbers, matched.starts, matched.fields, matched.reasons
    group = np.cumsum(starts) - 1
    if plan.multiline and not final and starts.any():
        # the last record may go on in the next chunk: carried there whole
        last = int(np.flatnonzero(starts)[-1])
        plan.carried = matched.slice(last)
        lines, numbers, starts, group = lines.slice(0, last), numbers[:last], starts[:last], group[:last]
        fields = {k: v.slice(0, last) for k, v in fields.items()}
    orphan = ~starts & (group < 0) if plan.multiline else ~starts
    for i in np.flatnonzero(orphan)[: MAX_UNPARSED_KEPT + 1]:
        why = reasons[i] if reasons and reasons[i] else (
            "not the start of a record, and no record before it to continue" if plan.multiline else "does not match the format"
        )
        _fail(plan, report, int(numbers[i]), why, lines[int(i)].as_py())
    if orphan.sum() > MAX_UNPARSED_KEPT + 1:
        report.unparsed += int(orphan.sum()) - (MAX_UNPARSED_KEPT + 1)
    if plan.multiline:
        report.joined += int((~starts & (group >= 0)).sum())
    idx = np.flatnonzero(starts)
    rec_lines = numbers[idx]
    if len(idx) < len(starts):
        fields = {k: v.take(pa.array(idx)) for k, v in fields.items()}
    if not len(idx):
        return None
    if plan.fmt.derive is not None:
        fields = plan.fmt.derive(fields)

    found, content_keys = _first_present(fields, plan.fmt.content_keys)
    content = found if found is not None else (lines if len(idx) == len(lines) else lines.take(pa.array(idx)))
    content = pc.fill_null(content, "")
    if plan.multiline:
        content = _join_continuations(content, starts, lines, group)
    when, time_names = _time_text(plan, fields)
    if when is None:
        raise UsageError(
            f"the format has no time: name a group 'timestamp' (or date/time fields); its fields are {sorted(fields)}"
        )
    stamps = _times(plan, when)
    bad = stamps.isna().to_numpy()
    if bad.any():
        text = when.to_pylist()
        # a record's continuation lines are not read with it
        follow = np.bincount(group[~starts & (group >= 0)], minlength=len(idx)) if plan.multiline else np.zeros(len(idx), int)
        for i in np.flatnonzero(bad):
            reason = (
                f"the time {text[i]!r} does not read as {_describe(plan.time_format)}"
                if text[i] is not None
                else f"no time (in {', '.join(time_names)})"
            )
            _fail(plan, report, int(rec_lines[i]), reason, lines[int(idx[i])].as_py(), 1 + int(follow[i]))
        report.joined -= int(follow[bad].sum())
        ok = pa.array(~bad)
        fields = {k: v.filter(ok) for k, v in fields.items()}
        content, stamps, rec_lines = content.filter(ok), stamps[~bad].reset_index(drop=True), rec_lines[~bad]
    if not len(stamps):
        return None
    report.records += len(stamps)

    rows = len(stamps)
    source = _source_column(plan, fields, rows)
    tag_names = [_pick(fields, (k,)) for k in plan.tags]
    constant = [pa.array(np.full(rows, t, dtype=object), pa.string()) for t in plan.add_tags]
    tags = _tag_lists([fields[k] for k in tag_names if k is not None] + constant, rows)
    seconds = seconds_of_ns(stamps.dt.as_unit("ns").astype("int64").to_numpy())
    batch = pa.record_batch(
        [new_event_ids(rows), pa.array(seconds, pa.float64()), pc.dictionary_encode(source), tags, content.cast(pa.string())],
        schema=event_schema(),
    )
    skip = set(time_names) | set(content_keys)
    extras = {
        f"{name}_field" if name in _EVENT_NAMES else name: values.cast(pa.string())
        for name, values in fields.items()
        if name not in skip
    }
    return _Records(batch, extras, rows)


@dataclass
class _Records:
    """A chunk's records: the event columns, and the format's other fields."""

    batch: pa.RecordBatch
    extras: dict[str, pa.Array]
    rows: int = 0


def _frame(records: Iterable[_Records]) -> pd.DataFrame:
    """Records as one event frame, then a ``string[pyarrow]`` column per other field (missing where a record has none).

    Each chunk's event columns are converted as it comes (while the next chunk is matched).
    """
    seen: list[_Records] = []

    def batches() -> Iterator[pa.RecordBatch]:
        for r in records:
            seen.append(_Records(r.batch.slice(0, 0), r.extras, r.batch.num_rows))
            yield r.batch

    df = batches_to_dataframe(batches())
    names = list(dict.fromkeys(name for r in seen for name in r.extras))
    for name in names:
        pieces = [r.extras.get(name, pa.nulls(r.rows, pa.string())) for r in seen]
        column = pa.chunked_array(pieces, pa.string())
        df[name] = pd.Series(column.to_pandas(types_mapper=pd.ArrowDtype), dtype=pd.StringDtype("pyarrow"))
    return df


def _fail(plan: _Plan, report: LogReport, line: int, reason: str, text: str, count: int = 1) -> None:
    if plan.strict:
        raise DecodeError(f"{report.path or 'log'}: line {line}: {reason}: {text[:_TEXT_CHARS]!r}")
    report._note(line, reason, text, count)


def _describe(time_format: Any) -> str:
    if time_format is None:
        return "ISO-8601"
    if isinstance(time_format, (list, tuple)):
        return " or ".join(_describe(f) for f in time_format)
    return repr(time_format)


def _times(plan: _Plan, when: pa.Array) -> pd.Series:
    needs_year = any(not time_format_has_year(f) for f in _formats(plan.time_format))
    year, reference = plan.year, plan.reference
    if needs_year and year is None and reference is None:
        reference = time.time()
    stamps = parse_times(when, plan.time_format, tz=plan.tz, year=year, reference=reference, last_month=plan.last_month)
    if needs_year:
        found = stamps.dropna()
        if len(found):
            wall = found.iloc[-1].tz_convert(plan.tz) if plan.tz is not None else found.iloc[-1]
            plan.year, plan.last_month, plan.reference = wall.year, wall.month, None
    return cast(pd.Series, stamps)


def _formats(time_format: Any) -> list[Any]:
    return list(time_format) if isinstance(time_format, (list, tuple)) else [time_format]


def _source_column(plan: _Plan, fields: dict[str, pa.Array], rows: int) -> pa.Array:
    found, _ = _first_present(fields, plan.source)
    if found is not None:
        return pc.fill_null(found, plan.origin)
    return pa.array(np.full(rows, plan.origin, dtype=object), pa.string())


# --------------------------------------------------------------------------- the entry points


def _plan(
    source: Any,
    format: str | None,
    regex: str | None,
    template: str | None,
    time_format: Any,
    tz: Any,
    year: int | None,
    source_field: Any,
    tags: Any,
    multiline: bool | None,
    origin: str | None,
    strict: bool,
    add_tags: Sequence[str] = (),
) -> _Plan:
    given = [name for name, v in (("format", format), ("regex", regex), ("template", template)) if v is not None]
    if len(given) != 1:
        raise UsageError(
            f"read_log needs exactly one of format= (one of {sorted(LOG_FORMATS)}), regex= or template=; got {given or 'none'}"
        )
    if format is not None:
        fmt = LOG_FORMATS.get(format.lower())
        if fmt is None:
            raise UsageError(f"unknown log format {format!r}; the formats are {sorted(LOG_FORMATS)}, or give regex= or template=")
    elif regex is not None:
        fmt = LogFormat("regex", regex=regex, multiline=True, description="your regex")
    else:
        assert template is not None
        fmt = LogFormat("template", regex=template_regex(template), multiline=True, description="your template")
    if fmt.regex is not None:
        try:
            names = re.compile(fmt.regex).groupindex
        except re.error as exc:
            raise UsageError(f"invalid regex {fmt.regex!r}: {exc}") from None
        if not names:
            raise UsageError(f"the regex {fmt.regex!r} has no named group (?P<name>...): name at least the time")
        if _pick(dict(names), fmt.time_keys) is None and not any(k.lower() in _TIME_FIELDS for k in names):
            raise UsageError(f"the format names no time: a group 'timestamp' (or date/time fields); it has {list(names)}")
        empty = {name: pa.array([], pa.string()) for name in names}
        known: list[str] | None = list(fmt.derive(empty) if fmt.derive else empty)
    else:
        known = None
    src = fmt.source if source_field is None else ((source_field,) if source_field else ())
    tag_fields = tuple(fmt.tags) if tags is None else ((tags,) if isinstance(tags, str) else tuple(tags))
    if known is not None:
        asked = (list(src) if source_field else []) + (list(tag_fields) if tags is not None else [])
        wrong = [n for n in asked if _pick(dict.fromkeys(known), (n,)) is None]
        if wrong:
            raise UsageError(f"the format has no field {wrong[0]!r} (for source= or tags=); its fields are {known}")
    if isinstance(source, (str, os.PathLike)):
        path = str(source)
        default_origin = path
        try:
            reference: float | None = os.stat(source).st_mtime
        except OSError:
            reference = None
    else:
        default_origin, reference = "", None
    return _Plan(
        fmt=fmt,
        regex=fmt.regex,
        time_format=fmt.time_format if time_format is None else time_format,
        tz=tz,
        source=src,
        tags=tag_fields,
        multiline=fmt.multiline if multiline is None else bool(multiline),
        origin=default_origin if origin is None else origin,
        year=year,
        reference=reference,
        strict=strict,
        add_tags=tuple(t for t in ([add_tags] if isinstance(add_tags, str) else add_tags) if t),
    )


def iter_log(
    path_or_lines: Any,
    format: str | None = None,
    *,
    regex: str | None = None,
    template: str | None = None,
    time_format: str | Sequence[str] | None = None,
    tz: Any = None,
    year: int | None = None,
    source: str | None = None,
    tags: str | Sequence[str] | None = None,
    multiline: bool | None = None,
    origin: str | None = None,
    add_tags: Sequence[str] = (),
    strict: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    report: LogReport | None = None,
) -> Iterator[pd.DataFrame]:
    """The records of a log as frames, in line order, read ``batch_size`` lines at a time.

    A frame holds the records that start in its chunk of lines (a record whose
    continuation lines may go on in the next chunk goes with that one).

    A stream (``sys.stdin.buffer``) is read as its lines arrive: a frame comes
    as soon as they are read (with ``multiline``, a record's frame once the line
    after it shows where it ends).

    Takes the options of :func:`read_log`; the :class:`LogReport` (``report=``,
    also on each frame's ``attrs["theia_report"]``) grows as the chunks are read.

    >>> lines = ['{"time": "2024-05-01T10:00:00Z", "level": "info", "msg": "up"}',
    ...          '{"time": "2024-05-01T10:00:01Z", "level": "warn", "msg": "slow"}']
    >>> [len(df) for df in iter_log(lines, "jsonl", batch_size=1)]
    [1, 1]
    """
    batch_size = positive_int("batch_size", batch_size)
    plan = _plan(path_or_lines, format, regex, template, time_format, tz, year, source, tags, multiline, origin, strict, add_tags)
    report = report if report is not None else LogReport()
    for records in _records(path_or_lines, plan, report, batch_size):
        df = _frame([records])
        df.attrs["theia_report"] = report
        yield df


def _records(path_or_lines: Any, plan: _Plan, report: LogReport, batch_size: int) -> Iterator[_Records]:
    """The records of a log, a chunk of lines at a time."""
    if isinstance(path_or_lines, (str, os.PathLike)):
        report.path = str(path_or_lines)
    batches = line_batches(path_or_lines, batch_size, report.count_bytes)
    current = next(batches, None)
    line = 1
    with ahead() as pool:
        matching = pool.submit(_match_chunk, current, line, plan) if current is not None else None
        while current is not None and matching is not None:
            matched = matching.result()
            report.lines += len(current)
            line += len(current)
            current = next(batches, None)
            # the next chunk is matched while this one's times and frame are made
            matching = pool.submit(_match_chunk, current, line, plan) if current is not None else None
            records = _parse_chunk(matched, plan, report, final=current is None)
            if records is not None:
                yield records
    if plan.carried is not None:  # pragma: no cover - the final chunk carries nothing
        raise AssertionError("a record was left unread")


def read_log(
    path_or_lines: Any,
    format: str | None = None,
    *,
    regex: str | None = None,
    template: str | None = None,
    time_format: str | Sequence[str] | None = None,
    tz: Any = None,
    year: int | None = None,
    source: str | None = None,
    tags: str | Sequence[str] | None = None,
    multiline: bool | None = None,
    origin: str | None = None,
    add_tags: Sequence[str] = (),
    strict: bool = False,
    report: LogReport | None = None,
) -> pd.DataFrame:
    """A log as one event frame, each record with its own time, in line order.

    ``path_or_lines`` is a file's path, a binary file, or an iterable of lines
    (text). Give one of

    - ``format``: a preset of :data:`LOG_FORMATS` (``"syslog"``, ``"rfc5424"``,
      ``"access"``, ``"apache-error"``, ``"iso"``, ``"python"``, ``"jsonl"``, ``"logfmt"``);
    - ``regex``: your regex with named groups, e.g.
      ``r"(?P<timestamp>\\S+ \\S+) (?P<level>\\w+) (?P<content>.*)"`` (matched
      against the whole line);
    - ``template``: a ``<Field>`` template as logparser's ``log_format``, e.g.
      ``"<Date> <Time> <Level> <Component>: <Content>"`` (see :func:`~theia_frames.frames.logformats.template_regex`).

    ``time_format`` (strptime text, a list of them, ``"epoch"``, ``"epoch_ms"``;
    a preset has its own), ``tz`` (the zone of times without an offset; default
    UTC) and ``year`` (the first record's year, for formats without one; default:
    from the file's modification time, or now) say how times read.
    ``source`` names the field that becomes the source and ``tags`` the fields
    that become tags (each preset has defaults, see :data:`LOG_FORMATS`);
    ``origin`` is the source where there is no such field (default: the
    path, or ``""``); ``add_tags`` are tags every record gets besides.
    ``multiline`` joins lines that start no record to the record before them. See the module docstring for the rules.

    The :class:`LogReport` is ``df.attrs["theia_report"]`` (and filled into
    ``report``); lines not read raise an :class:`UnparsedLogWarning`, or with
    ``strict=True`` a :class:`~theia_frames.exceptions.DecodeError`.

    >>> df = read_log(["2024-05-01 10:00:00,123 ERROR app.db: lost the connection",
    ...                "Traceback (most recent call last):",
    ...                '  File "db.py", line 1, in connect'], format="python", tz="Europe/Berlin")
    >>> df.loc[0, "timestamp"], df.loc[0, "level"], df.loc[0, "tags"]
    (Timestamp('2024-05-01 08:00:00.123000+0000', tz='UTC'), 'ERROR', ['ERROR', 'app.db'])
    >>> print(df.loc[0, "content"])
    lost the connection
    Traceback (most recent call last):
      File "db.py", line 1, in connect
    """
    plan = _plan(path_or_lines, format, regex, template, time_format, tz, year, source, tags, multiline, origin, strict, add_tags)
    report = report if report is not None else LogReport()
    # one frame of all the chunks' Arrow columns: the sources' categories unified once
    df = _frame(_records(path_or_lines, plan, report, DEFAULT_BATCH_SIZE))
    if not report.ok:
        warnings.warn(UnparsedLogWarning(report.summary()), stacklevel=2)
    df.attrs["theia_report"] = report
    return df
