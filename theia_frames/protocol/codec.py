"""The theia event wire format, and the meaning of a server message.

Pure functions: nothing here opens a socket or a file.

Encoding writes the upstream collector's dialect byte for byte::

    >>> ev = Event(id="e1", timestamp=1509989630.6749051, source="/dev/door",
    ...            tags=["home", "door"], content="unlocked")
    >>> encode(ev)
    b'event: 76 68 8\\nid:e1\\ntimestamp: 1509989630.6749051\\nsource:/dev/door\\ntags:home,door\\nunlocked\\n'

Decoding reads both dialects (upstream and Go), header keys in any order::

    >>> decode(b"event:48 45 3\\nid:x\\ntimestamp:12.500000\\nsource:s:1\\ntags:a,b\\nabc")
    Event(id='x', timestamp=12.5, source='s:1', tags=['a', 'b'], content='abc')

Bad input raises :class:`~theia_frames.exceptions.DecodeError` naming the
problem, its byte offset and an excerpt.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Union

from ..event import Event
from ..exceptions import DecodeError, InvalidEventError
from ..timeparse import event_time_problem

__all__ = [
    "encode",
    "encode_many",
    "decode",
    "decode_stream",
    "iter_decode_stream",
    "EventColumns",
    "decode_columns",
    "StreamReport",
    "StreamDecoder",
    "header_problem",
    "LINE_BREAKS",
    "TAG_BREAKS",
]
# The extension's own messages (flush_request ... failed_flush, total_message,
# total_of, CHUNKS_PATH ... parse_chunks_reply) are wire vocabulary of this project's client, collector and mock
# only, not re-exported at the top level.

_KNOWN_KEYS = ("id", "timestamp", "source", "tags")


# --------------------------------------------------------------------------- encode


#: What the plain dialect cannot carry in an id, a source or a tag: a header line
#: ends at a line break, and a reader that takes ``\r\n`` for one line end (Go's
#: and upstream's readers, a plain ``/find``) would give back another id.
LINE_BREAKS = "\n\r"
#: What a tag cannot hold: a line break, or the comma that separates tags.
TAG_BREAKS = LINE_BREAKS + ","


def header_problem(id_: str, source: str, tags: Iterable[str] | str) -> str | None:
    """Why the plain dialect cannot carry an event with these header values, or None.

    The one rule of what an id, a source and a tag may hold, on both dialects:
    the client refuses such an event before sending it (:func:`encode`, and
    :func:`~theia_frames.protocol.arrow.uncarried_rows` for a batch) and the
    collector per event, whatever dialect brought it. ``tags`` is a list of
    tags, or their comma-joined wire text.

    >>> header_problem("a", "/s", ["x", "y"]) is None
    True
    >>> header_problem("a\\rb", "/s", "x,y")
    "event id must not contain a line break: 'a\\\\rb'"
    >>> header_problem("a", "/s", ["x,y"])
    "an event tag must not contain a comma or line break: 'x,y'"
    """
    for name, value in (("id", id_), ("source", source)):
        if "\n" in value or "\r" in value:
            return f"event {name} must not contain a line break: {value[:40]!r}"
    if isinstance(tags, str):
        if "\n" in tags or "\r" in tags:
            return f"an event tag must not contain a line break: {tags[:40]!r}"
        return None
    for tag in tags:
        if "," in tag or "\n" in tag or "\r" in tag:
            return f"an event tag must not contain a comma or line break: {tag!r}"
    return None


def encode(event: Event) -> bytes:
    """Serialize one event in the upstream collector's dialect (trailing newline included).

    Raises :class:`~theia_frames.exceptions.InvalidEventError` for an event the
    format cannot carry: a line break in id or source, a comma or line break in
    a tag, text that is not valid Unicode; and an event whose timestamp is not an
    event time (not finite, or outside :data:`~theia_frames.timeparse.EVENT_TIME_RANGE`).

    >>> encode(Event(id="old", timestamp=-1e11))
    Traceback (most recent call last):
    ...
    theia_frames.exceptions.InvalidEventError: event 'old': timestamp -100000000000.0 is outside the accepted range of event times, from 1678-01-01T00:00Z (inclusive) to 2262-01-01T00:00Z (exclusive)
    """
    id_, source, tags = event.id, event.source, event.tags
    if not isinstance(id_, str) or not isinstance(source, str) or not isinstance(event.content, str):
        raise InvalidEventError("event id, source and content must be strings")
    for tag in tags:
        if not isinstance(tag, str):
            raise InvalidEventError(f"event tags must be strings, got {tag!r}")
    problem = header_problem(id_, source, tags)
    if problem is not None:
        raise InvalidEventError(problem)
    try:
        ts = float(event.timestamp)
    except (TypeError, ValueError) as exc:
        raise InvalidEventError(f"event timestamp must be a number, got {event.timestamp!r}") from exc
    problem = event_time_problem(ts)
    if problem is not None:
        raise InvalidEventError(f"event {id_[:80]!r}: {problem}")
    try:
        header = f"id:{id_}\ntimestamp: {ts:.7f}\nsource:{source}\ntags:{','.join(tags)}\n".encode()
        content = event.content.encode()
    except UnicodeEncodeError as exc:
        raise InvalidEventError(f"event text is not valid Unicode: {exc}") from exc
    hsize, csize = len(header), len(content)
    return b"event: %d %d %d\n%s%s\n" % (hsize + csize, hsize, csize, header, content)


def encode_many(events: Iterable[Event]) -> bytes:
    """Serialize events into one byte stream in the upstream file-store layout.

    Each event is followed by one extra newline, so :func:`decode_stream` reads
    it back.

    >>> decode_stream(encode_many([Event(id="a", timestamp=1.0), Event(id="b", timestamp=2.0)]))
    [Event(id='a', timestamp=1.0, source='', tags=[], content=''), Event(id='b', timestamp=2.0, source='', tags=[], content='')]
    """
    return b"".join(encode(e) + b"\n" for e in events)


# --------------------------------------------------------------------------- decode

Buffer = Union[bytes, bytearray, memoryview]


def _parse_at(buf: bytes, pos: int, end: int) -> tuple[str, float, str, str, str, int]:
    """Parse one event starting at ``pos``; return its fields and the offset after its content.

    Tags are returned as the raw comma-joined text; callers split.
    """
    nl = buf.find(b"\n", pos, end)
    if nl < 0:
        if buf.startswith(b"event:", pos):
            raise DecodeError("truncated preamble (no end of line)", buf, pos)
        raise DecodeError("no preamble: expected 'event:'", buf, pos)
    if not buf.startswith(b"event:", pos):
        raise DecodeError("no preamble: expected 'event:'", buf, pos)
    parts = buf[pos + 6 : nl].split()
    # 19 digits: any size that fits in memory (and int() of very long digit strings is refused anyway).
    if len(parts) != 3 or not all(p.isdigit() and len(p) <= 19 for p in parts):
        raise DecodeError("bad preamble: expected 'event: <total> <header> <content>' sizes", buf, pos)
    total, hsize, csize = int(parts[0]), int(parts[1]), int(parts[2])
    if total != hsize + csize:
        raise DecodeError(
            f"sizes do not match: total {total} != header {hsize} + content {csize}", buf, pos
        )
    hstart = nl + 1
    cstart = hstart + hsize
    cend = cstart + csize
    if cend > end:
        raise DecodeError(
            f"truncated event: declares {total} bytes after the preamble, {max(end - hstart, 0)} available",
            buf,
            pos,
        )
    try:
        header = buf[hstart:cstart].decode()
    except UnicodeDecodeError as exc:
        raise DecodeError(f"header is not valid UTF-8 ({exc.reason})", buf, hstart + exc.start) from None
    if not header.endswith("\n"):
        raise DecodeError("header does not end with a newline (header size wrong?)", buf, hstart)
    id_ = ts_text = None
    source = tags = ""
    seen: set[str] = set()
    lines = header.split("\n")
    lines.pop()
    for line in lines:
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if not sep or key not in _KNOWN_KEYS:
            what = f"unknown header key {key[:40]!r}" if sep else f"header line without a colon: {line[:40]!r}"
            raise DecodeError(what, buf, hstart)
        if key in seen:
            raise DecodeError(f"duplicate header key {key!r}", buf, hstart)
        seen.add(key)
        if key == "id":
            id_ = value
        elif key == "timestamp":
            ts_text = value
        elif key == "source":
            source = value
        else:
            tags = value
    if id_ is None:
        raise DecodeError("header has no id", buf, hstart)
    if ts_text is None:
        raise DecodeError("header has no timestamp", buf, hstart)
    try:
        ts = float(ts_text)
    except ValueError:
        raise DecodeError(f"timestamp is not a number: {ts_text.strip()[:40]!r}", buf, hstart) from None
    if not math.isfinite(ts):
        raise DecodeError(f"timestamp is not a finite number: {ts_text.strip()[:40]!r}", buf, hstart)
    try:
        content = buf[cstart:cend].decode()
    except UnicodeDecodeError as exc:
        raise DecodeError(f"content is not valid UTF-8 ({exc.reason})", buf, cstart + exc.start) from None
    return id_, ts, source, tags, content, cend


def split_tags(raw: str) -> list[str]:
    """Tags from their wire text: ``""`` (an empty ``tags:`` line) is no tags."""
    return raw.split(",") if raw else []


def _as_bytes(data: Buffer | str) -> bytes:
    if isinstance(data, str):
        # Lone surrogates become bytes that are not UTF-8, so the parser reports them
        # where they are (and a lenient stream decode skips just that region).
        return data.encode("utf-8", "surrogatepass")
    return bytes(data) if not isinstance(data, bytes) else data


def decode(data: Buffer | str) -> Event:
    """Decode one serialized event (either dialect; a trailing newline is optional).

    >>> decode(encode(Event(id="a", timestamp=1.0, content="x\\nevent: 1 2 3"))).content
    'x\\nevent: 1 2 3'
    """
    buf = _as_bytes(data)
    id_, ts, source, tags, content, cend = _parse_at(buf, 0, len(buf))
    rest = buf[cend:]
    if rest.strip(b"\r\n"):
        raise DecodeError("unexpected data after the event content", buf, cend)
    return Event(id=id_, timestamp=ts, source=source, tags=split_tags(tags), content=content)


@dataclass
class StreamReport:
    """What a lenient stream decode skipped: ``(offset, reason)`` per damaged region."""

    events: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)
    skipped_bytes: int = 0

    @property
    def ok(self) -> bool:
        return not self.skipped


def _skip_separators(buf: bytes, pos: int, end: int) -> int:
    while pos < end and buf[pos] in (10, 13):
        pos += 1
    return pos


def iter_decode_stream(
    data: Buffer | str, *, strict: bool = True, report: StreamReport | None = None
) -> Iterator[Event]:
    """Iterate the events of a byte stream of concatenated events.

    With ``strict=True`` (the default) the first damaged event raises
    :class:`DecodeError`. With ``strict=False`` a damaged region is skipped up
    to the next line that starts an event that can be read, and recorded in
    ``report``; every intact event is still yielded (see :class:`StreamDecoder`,
    which does the work a piece at a time).
    """
    buf = _as_bytes(data)

    def damaged(offset: int, reason: str, size: int) -> None:
        if report is not None:
            report.skipped.append((offset, reason))
            report.skipped_bytes += size

    decoder = StreamDecoder(strict=strict, on_damage=damaged)
    with memoryview(buf) as view:
        for at in range(0, len(buf), _STREAM_PIECE):
            try:
                decoder.feed(view[at : at + _STREAM_PIECE])
            finally:
                events = decoder.take()
                if report is not None:
                    report.events += len(events)
            yield from events.events()
    try:
        decoder.finish()
    finally:
        events = decoder.take()
        if report is not None:
            report.events += len(events)
    yield from events.events()


def decode_stream(data: Buffer | str, *, strict: bool = True, report: StreamReport | None = None) -> list[Event]:
    """All events of a byte stream of concatenated events (see :func:`iter_decode_stream`)."""
    return list(iter_decode_stream(data, strict=strict, report=report))


# --------------------------------------------------------------------------- streams in pieces

# iter_decode_stream hands its input to the decoder in pieces of this size.
_STREAM_PIECE = 1 << 20
_BLANK = rb"[ \t\r\x0b\x0c]"
# What a preamble line must look like for _parse_at to accept it (bytes.split() splits at these
# blanks; at most 1000 of them in a row here, so that a candidate line is at most a few KiB).
_PREAMBLE = re.compile(
    rb"event:" + _BLANK + rb"{0,1000}([0-9]{1,19})" + _BLANK + rb"{1,1000}([0-9]{1,19})"
    + _BLANK + rb"{1,1000}([0-9]{1,19})" + _BLANK + rb"{0,1000}\n"
)
# A line that may start an event, for resynchronising after damage.
_CANDIDATE = re.compile(rb"\n" + _PREAMBLE.pattern)
_MAX_PREAMBLE = 4 * 1024


class _Placed:
    """Bytes of a longer stream at their offset in it; enough of a buffer for an error's excerpt."""

    __slots__ = ("data", "base")

    def __init__(self, data: bytes, base: int) -> None:
        self.data = data
        self.base = base

    def __len__(self) -> int:
        return self.base + len(self.data)

    def __getitem__(self, part: slice) -> bytes:
        return self.data[part.start - self.base : part.stop - self.base]


class StreamDecoder:
    """Decode a byte stream of concatenated events fed in pieces, in bounded memory.

    :meth:`feed` the pieces as they are read and call :meth:`finish` at the
    end; the events decoded so far are collected as :class:`EventColumns` and
    handed over by :meth:`take`. The decoder holds the unread rest of the
    last piece and at most one incomplete event (``max_event`` bytes after its
    preamble line, unlimited by default), never the whole stream::

        >>> d = StreamDecoder()
        >>> data = encode_many([Event(id="a", timestamp=1.0), Event(id="b", timestamp=2.0)])
        >>> d.feed(data[:30]); d.take().id
        []
        >>> d.feed(data[30:]); d.finish(); d.take().id
        ['a', 'b']

    A damaged region runs from a place where no event can be read to the next
    line that starts an event that can be read (or to the end): it is skipped
    and, once it ends, reported to ``on_damage(offset, reason, size)`` with its
    byte offset in the stream, why its first event could not be read, and its
    size. An event that declares more than ``max_event`` bytes is damage too.
    With ``strict=True`` the first damage raises :class:`DecodeError` instead
    (offset counted from the start of the stream; ``name``, if given, starts
    its message).
    """

    def __init__(
        self,
        *,
        strict: bool = False,
        max_event: int | None = None,
        on_damage: Callable[[int, str, int], None] | None = None,
        name: str = "",
    ) -> None:
        self.strict = strict
        self.max_event = max_event
        self.on_damage = on_damage
        self.name = name
        #: events decoded and not yet taken
        self.columns = EventColumns()
        #: bytes fed so far
        self.offset = 0
        self._buf = b""
        self._pos = 0  # where decoding goes on in _buf
        self._base = 0  # the stream offset of _buf[0]
        self._waiting: list[bytes] = []
        self._waiting_bytes = 0
        self._need = 0  # the stream offset up to which data must be there before decoding goes on
        self._bad: tuple[int, str] | None = None  # the damaged region being skipped: start, reason
        self._finished = False

    @property
    def buffered(self) -> int:
        """Bytes held: the unread part of the stream fed so far."""
        return len(self._buf) - self._pos + self._waiting_bytes

    def take(self) -> EventColumns:
        """The events decoded since the last call (in stream order)."""
        cols, self.columns = self.columns, EventColumns()
        return cols

    def feed(self, data: Buffer) -> None:
        """Decode what ``data`` completes; keep the rest for the next piece."""
        if self._finished:
            raise ValueError("this StreamDecoder is finished")
        if not data:
            return
        piece = bytes(data)
        self.offset += len(piece)
        self._waiting.append(piece)
        self._waiting_bytes += len(piece)
        if self.offset < self._need:
            return  # an incomplete event still: joined once, when it is all there
        self._join()
        self._run(final=False)

    def finish(self) -> None:
        """The stream ended: what is left is read, or reported as damage."""
        if self._finished:
            return
        self._finished = True
        if self._waiting:
            self._join()
        self._run(final=True)
        self._buf, self._pos = b"", 0

    # ------------------------------------------------------------------ internals
    def _join(self) -> None:
        """The unread rest and the pieces waiting, as one buffer (a piece alone is not copied)."""
        rest = self._buf[self._pos :]
        joined = b"".join(self._waiting)
        self._buf = rest + joined if rest else joined
        self._base += self._pos
        self._pos = 0
        self._waiting, self._waiting_bytes = [], 0

    def _damage(self, pos: int, reason: str, at: int) -> None:
        """A damaged region starts at ``_buf[pos]`` (the problem itself is at ``_buf[at]``)."""
        if self.strict:
            message = f"{self.name}: {reason}" if self.name else reason
            # excerpt() takes only len() and a slice of its data: a _Placed is enough
            raise DecodeError(message, _Placed(self._buf, self._base), self._base + at)  # type: ignore[arg-type]
        self._bad = (self._base + pos, reason)

    def _healed(self, pos: int) -> None:
        """The damaged region being skipped ends before ``_buf[pos]``."""
        start, reason = self._bad  # type: ignore[misc]
        self._bad = None
        if self.on_damage is not None:
            self.on_damage(start, reason, self._base + pos - start)

    def _declared(self, buf: bytes, pos: int, end: int) -> tuple[int, int] | None:
        """An event's declared size after its preamble line and where it ends, if the line
        is all there and consistent; None when the event is damaged whatever follows."""
        m = _PREAMBLE.match(buf, pos, min(end, pos + _MAX_PREAMBLE))
        if m is None:
            return None
        total, hsize, csize = (int(g) for g in m.groups())
        if total != hsize + csize:
            return None
        return total, m.end() + total

    def _over(self, total: int) -> str | None:
        if self.max_event is not None and total > self.max_event:
            return f"event declares {total} bytes, more than the bound of {self.max_event}"
        return None

    def _unfinished(self, buf: bytes, pos: int, end: int, final: bool) -> str | None:
        """Why an event at ``pos`` that failed to decode did, when that depends on what follows ``end``:
        ``""`` when more data may complete it (``_need`` says how much), the bound's reason
        when it declares more than ``max_event``; None when it is damaged whatever follows."""
        if not final and buf.find(b"\n", pos, end) < 0:
            return "" if end - pos < _MAX_PREAMBLE else None
        sizes = self._declared(buf, pos, end)
        if sizes is None:
            return None
        total, cend = sizes
        over = self._over(total)
        if over is not None:
            return over
        if final or cend <= end:
            return None
        self._need = self._base + cend
        return ""

    def _run(self, *, final: bool) -> None:
        buf, pos, end = self._buf, self._pos, len(self._buf)
        cols = self.columns
        ids, tss, srcs, tgs, cnts = cols.id, cols.timestamp, cols.source, cols.tags, cols.content
        max_event = self.max_event
        check = (not final) or max_event is not None
        self._need = 0
        while True:
            candidate = self._bad is not None
            if candidate:
                # skipping damage: on to the next line that may start an event
                m = _CANDIDATE.search(buf, pos)
                if m is None:
                    if final:
                        self._healed(end)
                        pos = end
                    else:
                        # keep an unfinished last line, which may yet start an event
                        tail = buf.rfind(b"\n", pos)
                        pos = tail if tail >= 0 and end - tail <= _MAX_PREAMBLE else end
                    break
                pos = m.start() + 1
                # what _parse_at would refuse whatever follows, at a fraction of its cost
                total, hsize, csize = m.groups()
                header_end = m.end() + int(hsize)
                if int(total) != int(hsize) + int(csize) or (header_end <= end and buf[header_end - 1] != 10):
                    pos += 1  # the region goes on
                    continue
            else:
                pos = _skip_separators(buf, pos, end)
                if pos >= end:
                    break
            try:
                id_, ts, source, tags, content, cend = _parse_at(buf, pos, end)
            except DecodeError as exc:
                why = self._unfinished(buf, pos, end, final) if check else None
                if why == "":
                    if candidate:
                        pos -= 1  # found again by the next search
                    break
                if self._bad is None:
                    self._damage(pos, why or exc.reason, pos if why else exc.offset)
                if candidate:
                    pos += 1  # past this candidate: the region goes on
                continue
            if max_event is not None and cend - pos > max_event:
                sizes = self._declared(buf, pos, end)
                over = self._over(sizes[0]) if sizes is not None else None
                if over is not None:
                    if self._bad is None:
                        self._damage(pos, over, pos)
                    if candidate:
                        pos += 1
                    continue
            if candidate:
                self._healed(pos)
            ids.append(id_)
            tss.append(ts)
            srcs.append(source)
            tgs.append(tags)
            cnts.append(content)
            pos = cend
        self._pos = pos


# --------------------------------------------------------------------------- columns


@dataclass
class EventColumns:
    """Decoded events as parallel columns, for building frames without Event objects.

    ``tags`` holds each event's raw comma-joined tag text (``""`` = no tags).
    """

    id: list[str] = field(default_factory=list)
    timestamp: list[float] = field(default_factory=list)
    source: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    content: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.id)

    def append_raw(self, data: Buffer | str) -> None:
        """Decode one serialized event (or a stream of them) onto the columns."""
        buf = _as_bytes(data)
        end = len(buf)
        pos = 0
        ids, tss, srcs, tgs, cnts = self.id, self.timestamp, self.source, self.tags, self.content
        while True:
            id_, ts, source, tags, content, cend = _parse_at(buf, pos, end)
            ids.append(id_)
            tss.append(ts)
            srcs.append(source)
            tgs.append(tags)
            cnts.append(content)
            pos = _skip_separators(buf, cend, end)
            if pos >= end:
                return

    def append_event(self, event: Event) -> None:
        self.id.append(event.id)
        self.timestamp.append(float(event.timestamp))
        self.source.append(event.source)
        self.tags.append(",".join(event.tags))
        self.content.append(event.content)

    def tag_lists(self) -> list[list[str]]:
        return [split_tags(t) for t in self.tags]

    def events(self) -> Iterator[Event]:
        for i in range(len(self.id)):
            yield Event(self.id[i], self.timestamp[i], self.source[i], split_tags(self.tags[i]), self.content[i])

    def take(self, mask: Iterable[bool]) -> EventColumns:
        """The rows where ``mask`` is true, as new columns."""
        keep = [i for i, m in enumerate(mask) if m]
        return EventColumns(
            [self.id[i] for i in keep],
            [self.timestamp[i] for i in keep],
            [self.source[i] for i in keep],
            [self.tags[i] for i in keep],
            [self.content[i] for i in keep],
        )

    def extend(self, other: EventColumns) -> None:
        self.id.extend(other.id)
        self.timestamp.extend(other.timestamp)
        self.source.extend(other.source)
        self.tags.extend(other.tags)
        self.content.extend(other.content)


def decode_columns(messages: Iterable[Buffer | str]) -> EventColumns:
    """Decode many serialized events (each message one event or a stream) into columns.

    >>> cols = decode_columns([encode(Event(id="a", timestamp=1.0, tags=["x"]))])
    >>> cols.id, cols.timestamp, cols.tags
    (['a'], [1.0], ['x'])
    """
    cols = EventColumns()
    for m in messages:
        cols.append_raw(m)
    return cols


# --------------------------------------------------------------------------- messages


