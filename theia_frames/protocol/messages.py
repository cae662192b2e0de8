"""The messages of both dialects and of the extension other than events, and what they mean.

The words (``ok``, error objects, the flush request, its reply and its
failure, the announced total, the ``/chunks`` layout) are built and parsed
here, in one place, for the clients, the collector and the mock server; and
here a reader learns what a received message or a close code means: data to
decode, the end of a stream, or an error to raise. Events themselves are
:mod:`theia_frames.protocol.codec` (plain) and :mod:`theia_frames.protocol.arrow` (Arrow).

>>> data, total = sort_messages(['ok', b'event: 3 3 0\\n...', '{"total": 2}'], "ws://h/find")
>>> len(data), total
(1, 2)
>>> end_error("ws://h/find", 1000, "", None, "after 2 event(s)") is None
True
>>> end_error("ws://h/live", 1013, "", None, "after 2 event(s)")
SubscriberTooSlow('ws://h/live dropped this subscriber (closed with code 1013): it did not keep up')
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard, Union

from .arrow import ARROW_MARKER
from .codec import Buffer, decode
from ..event import Event
from ..exceptions import ConnectionClosed, ServerError, SubscriberTooSlow, TheiaError

__all__ = [
    # the paths
    "EVENT_PATH",
    "FIND_PATH",
    "LIVE_PATH",
    "PATHS",
    # the words, built and parsed
    "OK",
    "Ok",
    "ErrorMessage",
    "Message",
    "parse_message",
    "is_ok",
    "error_message",
    "error_text",
    "flush_request",
    "is_flush_request",
    "parse_flush_request",
    "flush_reply",
    "parse_flush_reply",
    "flush_failure",
    "failed_flush",
    "total_message",
    "total_of",
    "CHUNKS_PATH",
    "MAX_CHUNK_ENTRIES",
    "coalesce_chunks",
    "chunks_reply",
    "parse_chunks_reply",
    # the close codes and what they mean to a reader
    "CLOSE_NORMAL",
    "CLOSE_GOING_AWAY",
    "CLOSE_NO_STATUS",
    "CLOSE_DROPPED",
    "CLOSE_INVALID_DATA",
    "CLOSE_REFUSED",
    "CLOSE_TOO_LARGE",
    "CLOSE_SERVER_ERROR",
    "CLOSE_RESTARTING",
    "CLOSE_TOO_SLOW",
    "CLOSE_WORDS",
    "TOO_SLOW",
    "too_slow_message",
    "NORMAL_CLOSE",
    "TOO_SLOW_CODES",
    "DATA_CLOSE_CODES",
    "is_too_slow",
    "sort_messages",
    "end_error",
]

# --------------------------------------------------------------------------- the words


#: The protocol's three endpoints (both dialects); the extension adds
#: :data:`CHUNKS_PATH` and :data:`theia_frames.protocol.count.COUNT_PATH`.
EVENT_PATH = "/event"
FIND_PATH = "/find"
LIVE_PATH = "/live"
PATHS = (EVENT_PATH, FIND_PATH, LIVE_PATH)

OK = "ok"


@dataclass(frozen=True)
class Ok:
    """The server accepted a filter (the text message ``ok``)."""


@dataclass(frozen=True)
class ErrorMessage:
    """An error reported by the server, with its own text."""

    text: str


Message = Union[Ok, ErrorMessage, Event]


def is_ok(message: Buffer | str) -> bool:
    """Whether a message is the server's ``ok``."""
    if isinstance(message, str):
        return message.strip() == OK
    return bytes(message).strip() == b"ok"


def error_message(text: str) -> str:
    """The error a server sends in place of an answer: ``{"error": text}``.

    >>> error_message("bad filter")
    '{"error": "bad filter"}'
    >>> error_text(error_message("bad filter"))
    'bad filter'
    """
    return json.dumps({"error": text})


def error_text(message: Buffer | str) -> str | None:
    """The text of an error message (``{"error": "..."}`` or ``{"error": true, "message": "..."}``), else None.

    >>> error_text('{"error": "Missing start timestamp"}')
    'Missing start timestamp'
    >>> error_text(b"event: 1 1 0") is None
    True
    >>> error_text(memoryview(b'{"error": "Missing start timestamp"}'))
    'Missing start timestamp'
    """
    if isinstance(message, str):
        if not message.lstrip().startswith("{"):
            return None
    else:
        if not bytes(message[:64]).lstrip().startswith(b"{"):
            return None
    try:
        obj = json.loads(message if isinstance(message, (str, bytes, bytearray)) else bytes(message))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict) or "error" not in obj:
        return None
    err = obj["error"]
    if isinstance(err, str):
        return err
    msg = obj.get("message")
    return str(msg) if msg is not None else json.dumps(err)


_FLUSH_FAILED = re.compile(r"^flush (-?[0-9]+): ", re.ASCII)


def flush_request(token: int) -> str:
    """The extension's request on ``/event``: answer once everything sent before it is stored.

    >>> flush_request(7), is_flush_request(flush_request(7)), parse_flush_request('{"flush": 7}')
    ('{"flush": 7}', True, 7)
    """
    return json.dumps({"flush": token})


def is_flush_request(message: Buffer | str) -> TypeGuard[str]:
    """Whether a text message on ``/event`` is (or claims to be) a flush request."""
    return isinstance(message, str) and message.startswith('{"flush"')


def parse_flush_request(message: str) -> Any:
    """The token of a flush request (echoed as it came); ValueError when it is not one."""
    try:
        return json.loads(message)["flush"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"invalid flush request: {message[:80]!r}") from None


def flush_reply(token: Any, stored: int, rejected: int, duplicates: int = 0) -> str:
    """The collector's answer to a flush: ``stored`` events of the connection committed
    (new events only), ``rejected`` messages refused, ``duplicates`` events acknowledged as
    already stored (exact repeats: stored once, not counted in ``stored``; the field is sent
    only when there are some, so an answer without any reads as it always did).

    >>> flush_reply(7, 10, 1, 2), flush_reply(7, 10, 1)
    ('{"flushed": 7, "stored": 10, "rejected": 1, "duplicates": 2}', '{"flushed": 7, "stored": 10, "rejected": 1}')
    >>> parse_flush_reply(flush_reply(7, 10, 1, 2)), parse_flush_reply('{"flushed": 7, "stored": 10}')
    ((7, 10, 2), (7, 10, 0))
    """
    answer = {"flushed": token, "stored": stored, "rejected": rejected}
    if duplicates:
        answer["duplicates"] = duplicates
    return json.dumps(answer)


def parse_flush_reply(message: Buffer | str) -> tuple[int, int | None, int] | None:
    """``(token, stored, duplicates)`` of a flush answer (``stored`` None when absent,
    ``duplicates`` 0: a collector that does not count them), else None."""
    if not isinstance(message, str) or not message.startswith("{"):
        return None
    try:
        answer = json.loads(message)
    except ValueError:
        return None
    token = answer.get("flushed") if isinstance(answer, dict) else None
    if not isinstance(token, int) or isinstance(token, bool):
        return None

    def count(name: str) -> int | None:
        value = answer.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None

    return token, count("stored"), count("duplicates") or 0


def flush_failure(token: Any, reason: str) -> str:
    """The text of the error the collector sends when what a flush covers could not be stored.

    >>> failed_flush(flush_failure(7, "disk is full"))
    7
    """
    return f"flush {token}: {reason}"


def failed_flush(text: str) -> int | None:
    """The token of a :func:`flush_failure` text, else None."""
    failed = _FLUSH_FAILED.match(text)
    return int(failed.group(1)) if failed is not None else None


def total_message(total: int) -> str:
    """The extension's announcement of how many events a ``/find`` will send.

    >>> total_message(1200)
    '{"total": 1200}'
    """
    return json.dumps({"total": int(total)})


def total_of(message: Buffer | str) -> int | None:
    """The count of a :func:`total_message`, else None (sent only on a connection
    that negotiated the extension, before the first event of a ``/find``).

    >>> total_of('{"total": 1200}'), total_of("ok"), total_of('{"total": -1}')
    (1200, None, None)
    """
    head = message[:10] if isinstance(message, str) else bytes(message[:10]).decode("latin-1")
    if not head.startswith('{"total"'):
        return None
    try:
        obj = json.loads(message if isinstance(message, (str, bytes, bytearray)) else bytes(message))
    except (ValueError, UnicodeDecodeError):
        return None
    total = obj.get("total") if isinstance(obj, dict) and len(obj) == 1 else None
    if isinstance(total, int) and not isinstance(total, bool) and total >= 0:
        return total
    return None


#: The extension's endpoint for the layout of a time range (see :func:`chunks_reply`).
CHUNKS_PATH = "/chunks"


#: Most entries in a :func:`chunks_reply`: neighbouring chunks are summed into one entry past it.
MAX_CHUNK_ENTRIES = 4096


def coalesce_chunks(
    chunks: Iterable[tuple[float, float, int]], limit: int = MAX_CHUNK_ENTRIES
) -> list[tuple[float, float, int]]:
    """``(min_ts, max_ts, rows)`` of stored chunks in time order, as at most ``limit`` entries:
    neighbours (by ``min_ts``) summed into one entry spanning them, in runs of equal length.

    >>> coalesce_chunks([(3.0, 4.0, 2), (1.0, 2.0, 5), (5.0, 9.0, 1)], limit=2)
    [(1.0, 4.0, 7), (5.0, 9.0, 1)]
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    ordered = sorted((float(lo), float(hi), int(n)) for lo, hi, n in chunks)
    if len(ordered) <= limit:
        return ordered
    per = -(-len(ordered) // limit)
    out = []
    for i in range(0, len(ordered), per):
        run = ordered[i : i + per]
        out.append((run[0][0], max(hi for _, hi, _ in run), sum(n for _, _, n in run)))
    return out


def chunks_reply(chunks: Iterable[tuple[float, float, int]]) -> str:
    """The collector's answer on :data:`CHUNKS_PATH`: how many events its stored chunks hold
    in a filter's time range, as ``(first timestamp, last timestamp, events)`` entries from
    its index (at most :data:`MAX_CHUNK_ENTRIES`, see :func:`coalesce_chunks`).

    >>> chunks_reply([(1.5, 2.0, 3)])
    '{"chunks": [[1.5, 2.0, 3]]}'
    >>> parse_chunks_reply(chunks_reply([(1.5, 2.0, 3)]))
    [(1.5, 2.0, 3)]
    """
    return json.dumps({"chunks": [[float(lo), float(hi), int(n)] for lo, hi, n in coalesce_chunks(chunks)]})


def parse_chunks_reply(message: Buffer | str) -> list[tuple[float, float, int]] | None:
    """The entries of a :func:`chunks_reply`, else None (anything else, or entries that are not
    ``[first, last, events]`` with ``first <= last`` and ``events >= 0``, or too many of them).

    >>> parse_chunks_reply('{"chunks": []}'), parse_chunks_reply("ok"), parse_chunks_reply('{"chunks": [[2, 1, 3]]}')
    ([], None, None)
    """
    if not isinstance(message, str) or not message.startswith('{"chunks"'):
        return None
    try:
        obj = json.loads(message)
    except ValueError:
        return None
    entries = obj.get("chunks") if isinstance(obj, dict) and len(obj) == 1 else None
    if not isinstance(entries, list) or len(entries) > MAX_CHUNK_ENTRIES:
        return None
    out = []
    for entry in entries:
        if not isinstance(entry, list) or len(entry) != 3:
            return None
        lo, hi, n = entry
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)):
            return None
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            return None
        if not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
            return None
        out.append((float(lo), float(hi), n))
    return out


def parse_message(message: Buffer | str) -> Message:
    """What a server message means: :class:`Ok`, :class:`ErrorMessage` or an :class:`Event`.

    >>> parse_message("ok")
    Ok()
    >>> parse_message('{"error": "bad filter"}')
    ErrorMessage(text='bad filter')
    """
    if is_ok(message):
        return Ok()
    text = error_text(message)
    if text is not None:
        return ErrorMessage(text)
    return decode(message)


# --------------------------------------------------------------------------- what they mean


#: A normal end: a stream sent in full, a connection its client or server is done with.
CLOSE_NORMAL = 1000
#: The server is going away: the collector was stopped.
CLOSE_GOING_AWAY = 1001
#: A close frame without a status code (read as a normal end).
CLOSE_NO_STATUS = 1005
#: No close frame at all: the connection dropped (never sent, only read).
CLOSE_DROPPED = 1006
#: A message that is not what the endpoint takes (text that is not UTF-8).
CLOSE_INVALID_DATA = 1007
#: Refused: an invalid filter or count request, an extension's path without the
#: extension, a connection idle for too long.
CLOSE_REFUSED = 1008
#: A message larger than the collector accepts.
CLOSE_TOO_LARGE = 1009
#: The collector failed: its store, or too many of the events sent not stored.
CLOSE_SERVER_ERROR = 1011
#: The server is restarting.
CLOSE_RESTARTING = 1012
#: Try again later: a live subscriber that fell too far behind was dropped.
CLOSE_TOO_SLOW = 1013

#: What each close code means, in words a user can act on.
CLOSE_WORDS = {
    CLOSE_NORMAL: "the collector closed the stream",
    CLOSE_GOING_AWAY: "the collector went away (it was stopped or is restarting)",
    CLOSE_NO_STATUS: "the collector closed the stream",
    CLOSE_DROPPED: "the connection dropped without a goodbye (the network, or the collector stopped abruptly)",
    CLOSE_REFUSED: "the collector refused the subscription",
    CLOSE_TOO_LARGE: "the collector refused a message as too large",
    CLOSE_SERVER_ERROR: "the collector failed with an internal error",
    CLOSE_RESTARTING: "the collector is restarting",
    CLOSE_TOO_SLOW: "the collector is overloaded",
}

#: orderly ends of a stream
NORMAL_CLOSE = (CLOSE_NORMAL, CLOSE_NO_STATUS)
#: "try again later", as our collector closes a subscriber that fell behind
TOO_SLOW_CODES = (CLOSE_TOO_SLOW,)
#: the server closed because of what it was sent: events sent before may be lost
DATA_CLOSE_CODES = (CLOSE_INVALID_DATA, CLOSE_REFUSED, CLOSE_TOO_LARGE, CLOSE_SERVER_ERROR)

#: How the error sent to a dropped subscriber, and the reason of its close, begin.
TOO_SLOW = "subscriber too slow"


def too_slow_message(why: str) -> str:
    """The error the collector sends a live subscriber it drops for falling behind.

    >>> too_slow_message("10 events waiting")
    '{"error": "subscriber too slow: 10 events waiting; reconnect, and use /find for the events missed"}'
    >>> is_too_slow(error_text(too_slow_message("10 events waiting")) or "")
    True
    """
    return error_message(f"{TOO_SLOW}: {why}; reconnect, and use {FIND_PATH} for the events missed")


def is_too_slow(text: str) -> bool:
    """Whether an error message or a close reason says the subscriber fell behind.

    >>> is_too_slow("subscriber too slow: 10000 events waiting")
    True
    """
    return text.lower().lstrip().startswith(TOO_SLOW)


def sort_messages(msgs: Sequence[bytes | str], url: str) -> tuple[list[bytes], int | None]:
    """The data messages (plain events, Arrow batches) among ``msgs`` and the
    total announced, if any; ``ok`` is dropped wherever it appears, an error
    message raises :class:`~theia_frames.exceptions.ServerError` (or
    :class:`~theia_frames.exceptions.SubscriberTooSlow`)."""
    data: list[bytes] = []
    append = data.append
    total: int | None = None
    for m in msgs:
        if type(m) is bytes and (m[:6] == b"event:" or m[:4] == ARROW_MARKER):
            append(m)
            continue
        if is_ok(m):
            continue
        announced = total_of(m)
        if announced is not None:
            total = announced
            continue
        text = error_text(m)
        if text is not None:
            if is_too_slow(text):
                raise SubscriberTooSlow(f"{url} dropped this subscriber: {text}", url=url, code=CLOSE_TOO_SLOW)
            raise ServerError(text, url=url)
        append(m if isinstance(m, bytes) else m.encode())
    return data, total


def end_error(url: str, code: int | None, reason: str, failure: BaseException | None, after: str) -> TheiaError | None:
    """What the end of a stream with close ``code`` means: None for an orderly
    close, else the error to raise (``after`` completes its message)."""
    if code in NORMAL_CLOSE:
        return None
    why = f"closed with code {code}" + (f" ({reason})" if reason else "")
    if code == CLOSE_DROPPED:
        why = "dropped" + (f" ({failure})" if failure else " without a close frame")
    if code in TOO_SLOW_CODES or "slow" in reason.lower():
        return SubscriberTooSlow(f"{url} dropped this subscriber ({why}): it did not keep up", url=url, code=code)
    return ConnectionClosed(f"the connection to {url} {why} {after}", url=url, code=code)
