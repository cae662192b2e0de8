"""What a :class:`~theia_frames.testing.mock.MockServer` script is made of: expectations and responses.

Matching: an expectation is text, bytes, an :class:`~theia_frames.event.Event`,
an :class:`~theia_frames.filter.EventFilter`, a dict (compared as JSON) or a
predicate such as :func:`event_like`; :func:`matches` compares it with what
arrived (a message, or each event of an Arrow batch: :func:`units`), and
:func:`describe_expected` / :func:`describe_received` say both in a failure.

Responses: the steps a script runs on a connection (:class:`Send`,
:class:`Close`, :class:`Stall`, :class:`Reject`) and :func:`outgoing`, the
frame a scripted message is sent as. Nothing here opens a socket.
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Union

from ..protocol.arrow import batch_to_ipc, ipc_to_batches, is_arrow_message, iter_batch_events
from ..protocol.codec import decode, encode
from ..event import Event
from ..exceptions import DecodeError, ServerError, UsageError
from ..filter import EventFilter
from ..protocol.messages import FIND_PATH, LIVE_PATH, OK, ErrorMessage, Ok, error_message, flush_reply, parse_flush_request

__all__ = [
    "TERMINAL", "Close", "Data", "Expectation", "Reject", "Send", "Stall", "Step", "answer_flush", "as_event",
    "check_expectable", "describe_expected", "describe_received", "event_like", "matches", "outgoing", "outgoing_many",
    "request_path", "units",
]

Data = Union[str, bytes]


# --------------------------------------------------------------------------- matching


class _EventLike:
    """Matches an event whose given fields are equal (see :func:`event_like`)."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def __call__(self, message: Data | Event) -> bool:
        event = as_event(message)
        if event is None:
            return False
        for name, want in self.fields.items():
            have = getattr(event, name)
            if isinstance(want, re.Pattern):
                if want.fullmatch(have) is None:
                    return False
            elif name == "timestamp":
                if not math.isclose(have, want, rel_tol=0.0, abs_tol=1e-6):
                    return False
            elif name == "tags":
                if list(have) != list(want):
                    return False
            elif have != want:
                return False
        return True

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.fields.items())
        return f"event_like({inner})"


def event_like(**fields: Any) -> Callable[[Data | Event], bool]:
    """An expectation matching any event whose given fields are equal.

    The code under test usually makes its own ids and timestamps; name only
    the fields that matter. A compiled regex (``re.compile(...)``) as a
    value must fully match the field. Timestamps compare to the microsecond.

    >>> from theia_frames import Event
    >>> from theia_frames.protocol.codec import encode
    >>> like = event_like(source="/dev/temp", content=re.compile(r"\\d+C"))
    >>> like(encode(Event(source="/dev/temp", content="21C")))
    True
    >>> like
    event_like(source='/dev/temp', content=re.compile('\\\\d+C'))
    """
    unknown = set(fields) - {"id", "timestamp", "source", "tags", "content"}
    if unknown:
        raise UsageError(f"event_like() got unknown event field(s): {', '.join(sorted(unknown))}")
    return _EventLike(fields)


def as_event(message: Data | Event) -> Event | None:
    if isinstance(message, Event):
        return message
    try:
        return decode(message)
    except DecodeError:
        return None


_NOT_JSON = object()


def _as_json(message: Data | Event) -> Any:
    if isinstance(message, Event):
        return _NOT_JSON
    try:
        return json.loads(message)
    except (ValueError, UnicodeDecodeError):
        return _NOT_JSON


def _as_bytes(message: Data | Event) -> bytes | None:
    if isinstance(message, Event):
        return None
    return message.encode() if isinstance(message, str) else bytes(message)


def _same_event(a: Event, b: Event) -> bool:
    # The wire keeps 6 or 7 decimals of a timestamp, so compare to the microsecond.
    return (
        a.id == b.id
        and a.source == b.source
        and list(a.tags) == list(b.tags)
        and a.content == b.content
        and math.isclose(float(a.timestamp), float(b.timestamp), rel_tol=0.0, abs_tol=1e-6)
    )


def _filter_forms(f: EventFilter, path: str | None) -> list[dict[str, Any]]:
    """The JSON objects a client may send for ``f`` on ``path`` (with and without the extension)."""
    find = [f.for_find(), f.for_find(plain=True)]
    live = [f.for_live(), f.for_live(plain=True)]
    if path == FIND_PATH:
        return find
    if path == LIVE_PATH:
        return live
    return [f.to_dict(), *find, *live]


def check_expectable(expected: Any) -> None:
    if isinstance(expected, (str, bytes, bytearray, memoryview, Event, EventFilter, Mapping)):
        return
    if callable(expected):
        return
    raise UsageError(
        f"MockServer cannot expect a {type(expected).__name__}: use text, bytes, an Event, "
        "an EventFilter, a dict (compared as JSON) or a predicate"
    )


def matches(expected: Any, unit: Data | Event, path: str) -> bool:
    if isinstance(expected, Event):
        event = as_event(unit)
        return event is not None and _same_event(expected, event)
    if isinstance(expected, EventFilter):
        return _as_json(unit) in _filter_forms(expected, path)
    if isinstance(expected, Mapping):
        return bool(_as_json(unit) == dict(expected))
    if isinstance(expected, str):
        return _as_bytes(unit) == expected.encode()
    if isinstance(expected, (bytes, bytearray, memoryview)):
        return _as_bytes(unit) == bytes(expected)
    return bool(expected(unit))


def _short(value: Any, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def describe_expected(expected: Any, path: str | None) -> str:
    if isinstance(expected, EventFilter):
        return f"filter {json.dumps(_filter_forms(expected, path)[0])}"
    if isinstance(expected, Mapping):
        return f"JSON {json.dumps(dict(expected), default=str)}"
    if isinstance(expected, (str, bytes, bytearray, memoryview, Event)):
        return _short(expected if not isinstance(expected, (bytearray, memoryview)) else bytes(expected))
    return getattr(expected, "__qualname__", None) or _short(expected)


def describe_received(unit: Data | Event) -> str:
    if isinstance(unit, (bytes, bytearray)) and not is_arrow_message(unit):
        event = as_event(unit)
        if event is not None:
            return f"{_short(event)} (encoded)"
    if isinstance(unit, bytes) and is_arrow_message(unit):
        return f"Arrow batch ({len(unit)} bytes)"
    return _short(unit)


def units(message: Data) -> list[Data | Event]:
    """What expectations are compared with: the message, or each event of an Arrow batch."""
    if isinstance(message, bytes) and is_arrow_message(message):
        try:
            return [e for b in ipc_to_batches(message) for e in iter_batch_events(b)]
        except DecodeError:
            return [message]
    return [message]


def answer_flush(message: str, events_seen: int) -> str:
    """The collector's answer to ``{"flush": token}``: every event received on the connection is confirmed."""
    try:
        token = parse_flush_request(message)
    except ValueError as exc:
        return error_message(str(exc))
    return flush_reply(token, events_seen, 0)


# --------------------------------------------------------------------------- responses


def outgoing(message: Any) -> Data:
    """The frame to send for a scripted message (text for str, binary for bytes)."""
    if isinstance(message, str):
        return message
    if isinstance(message, (bytes, bytearray, memoryview)):
        return bytes(message)
    if isinstance(message, Event):
        return encode(message)
    if isinstance(message, Ok):
        return OK
    if isinstance(message, (ErrorMessage, ServerError)):
        return error_message(message.text)
    if isinstance(message, Mapping):
        return json.dumps(dict(message))
    if type(message).__module__.startswith("pyarrow") and hasattr(message, "schema"):
        return batch_to_ipc(message)
    raise UsageError(
        f"MockServer cannot send a {type(message).__name__}: use text, bytes, an Event, "
        "a dict (sent as JSON), an ErrorMessage or a pyarrow RecordBatch"
    )


def outgoing_many(value: Any) -> list[Data]:
    if isinstance(value, (list, tuple)):
        return [outgoing(v) for v in value]
    return [outgoing(value)]


@dataclass(frozen=True)
class Send:
    messages: tuple[Data, ...]


@dataclass(frozen=True)
class Close:
    code: int | None  # None: drop the TCP connection without a close frame
    reason: str = ""


@dataclass(frozen=True)
class Stall:
    pass


@dataclass(frozen=True)
class Reject:
    status: int
    body: str


Step = Union[Send, Close, Stall, Reject]


TERMINAL = (Close, Stall, Reject)


@dataclass
class Expectation:
    expected: Any
    path: str | None
    state: str = "pending"  # "met", "mismatch" or "reported"
    received: Any = None
    received_path: str = ""


def request_path(target: str) -> str:
    return urllib.parse.urlsplit(target).path or "/"
