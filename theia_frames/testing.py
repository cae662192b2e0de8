"""A scriptable theia server for tests: :class:`MockServer`.

A :class:`MockServer` is a real WebSocket server on a free loopback port, so
the code under test runs its real client path: handshake, frames, closes,
dropped connections. It is scripted before that code connects, and checks
afterwards that what it was told to expect did arrive.

    >>> from theia_frames import Client, Event, Filter
    >>> mock = MockServer().expect(Filter(10), path="/find").on_find(
    ...     [Event(id="e1", timestamp=12.0, content="21.5C")])
    >>> with mock, Client(mock.url) as client:
    ...     [e.content for e in client.find(Filter(10))]
    ['21.5C']
    >>> mock.received
    [Received(path='/find', message='{"start": 10.0}')]

Leaving the ``with`` block checks the expectations (:meth:`MockServer.verify`)
and stops the server. The pytest plugin (:mod:`theia_frames.pytest_plugin`)
hands a fresh one to each test as the ``theia_mock`` fixture.

What it mirrors from the Go client's ``WebsocketMock``: ``Expect`` is
:meth:`~MockServer.expect`, ``Respond`` :meth:`~MockServer.respond`,
``HandleReceivedMessage`` :meth:`~MockServer.handle`, ``AddError``
:meth:`~MockServer.add_error` (collected in ``.errors``), ``Terminate``
:meth:`~MockServer.terminate`, ``WaitRequestsToComplete``
:meth:`~MockServer.wait_requests`.

Scripts are per connection: the steps scripted for a path (``respond``,
``close_abruptly``, ``close_with``, ``stall``) run on a connection once its
first message (for ``/find`` and ``/live``, the filter) has arrived. A closing
step ends one connection's script; steps scripted after it are for the next
connection to that path. Connections take scripts in order, and once they
run out the last script is used again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Union

from .background import BackgroundLoop
from .batch import SUBPROTOCOL, batch_to_ipc, ipc_to_batches, is_arrow_message, iter_batch_events
from .codec import decode, encode
from .protocol.messages import OK, ErrorMessage, Ok, flush_reply, is_flush_request, parse_flush_request
from .event import Event
from .exceptions import DecodeError, ServerError, TheiaTimeoutError, TransportError, UsageError
from .filter import EventFilter

__all__ = ["MockServer", "MockExpectationError", "Received", "event_like"]

Data = Union[str, bytes]

# websockets refuses to send these close codes; they only describe closes.
_UNSENDABLE_CODES = {1004, 1005, 1006, 1015}


class MockExpectationError(AssertionError):
    """A :class:`MockServer` did not receive what it was told to expect.

    An ``AssertionError``, so test runners report it as a failed test.
    """


class Received(NamedTuple):
    """One message a :class:`MockServer` received: the request path and the message."""

    path: str
    message: Data


# --------------------------------------------------------------------------- matching


class _EventLike:
    """Matches an event whose given fields are equal (see :func:`event_like`)."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def __call__(self, message: Data | Event) -> bool:
        event = _as_event(message)
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
    >>> from theia_frames.codec import encode
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


def _as_event(message: Data | Event) -> Event | None:
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
    if path == "/find":
        return find
    if path == "/live":
        return live
    return [f.to_dict(), *find, *live]


def _check_expectable(expected: Any) -> None:
    if isinstance(expected, (str, bytes, bytearray, memoryview, Event, EventFilter, Mapping)):
        return
    if callable(expected):
        return
    raise UsageError(
        f"MockServer cannot expect a {type(expected).__name__}: use text, bytes, an Event, "
        "an EventFilter, a dict (compared as JSON) or a predicate"
    )


def _matches(expected: Any, unit: Data | Event, path: str) -> bool:
    if isinstance(expected, Event):
        event = _as_event(unit)
        return event is not None and _same_event(expected, event)
    if isinstance(expected, EventFilter):
        return _as_json(unit) in _filter_forms(expected, path)
    if isinstance(expected, Mapping):
        return _as_json(unit) == dict(expected)
    if isinstance(expected, str):
        return _as_bytes(unit) == expected.encode()
    if isinstance(expected, (bytes, bytearray, memoryview)):
        return _as_bytes(unit) == bytes(expected)
    return bool(expected(unit))


def _short(value: Any, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _describe_expected(expected: Any, path: str | None) -> str:
    if isinstance(expected, EventFilter):
        return f"filter {json.dumps(_filter_forms(expected, path)[0])}"
    if isinstance(expected, Mapping):
        return f"JSON {json.dumps(dict(expected), default=str)}"
    if isinstance(expected, (str, bytes, bytearray, memoryview, Event)):
        return _short(expected if not isinstance(expected, (bytearray, memoryview)) else bytes(expected))
    return getattr(expected, "__qualname__", None) or _short(expected)


def _describe_received(unit: Data | Event) -> str:
    if isinstance(unit, (bytes, bytearray)) and not is_arrow_message(unit):
        event = _as_event(unit)
        if event is not None:
            return f"{_short(event)} (encoded)"
    if isinstance(unit, bytes) and is_arrow_message(unit):
        return f"Arrow batch ({len(unit)} bytes)"
    return _short(unit)


def _units(message: Data) -> list[Data | Event]:
    """What expectations are compared with: the message, or each event of an Arrow batch."""
    if isinstance(message, bytes) and is_arrow_message(message):
        try:
            return [e for b in ipc_to_batches(message) for e in iter_batch_events(b)]
        except DecodeError:
            return [message]
    return [message]


def _flush_reply(message: str, events_seen: int) -> str:
    """The collector's answer to ``{"flush": token}``: every event received on the connection is confirmed."""
    try:
        token = parse_flush_request(message)
    except ValueError as exc:
        return json.dumps({"error": str(exc)})
    return flush_reply(token, events_seen, 0)


# --------------------------------------------------------------------------- responses


def _outgoing(message: Any) -> Data:
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
        return json.dumps({"error": message.text})
    if isinstance(message, Mapping):
        return json.dumps(dict(message))
    if type(message).__module__.startswith("pyarrow") and hasattr(message, "schema"):
        return batch_to_ipc(message)
    raise UsageError(
        f"MockServer cannot send a {type(message).__name__}: use text, bytes, an Event, "
        "a dict (sent as JSON), an ErrorMessage or a pyarrow RecordBatch"
    )


def _outgoing_many(value: Any) -> list[Data]:
    if isinstance(value, (list, tuple)):
        return [_outgoing(v) for v in value]
    return [_outgoing(value)]


@dataclass(frozen=True)
class _Send:
    messages: tuple[Data, ...]


@dataclass(frozen=True)
class _Close:
    code: int | None  # None: drop the TCP connection without a close frame
    reason: str = ""


@dataclass(frozen=True)
class _Stall:
    pass


@dataclass(frozen=True)
class _Reject:
    status: int
    body: str


_Step = Union[_Send, _Close, _Stall, _Reject]
_TERMINAL = (_Close, _Stall, _Reject)


@dataclass
class _Expectation:
    expected: Any
    path: str | None
    state: str = "pending"  # "met", "mismatch" or "reported"
    received: Any = None
    received_path: str = ""


def _request_path(target: str) -> str:
    return urllib.parse.urlsplit(target).path or "/"


# --------------------------------------------------------------------------- server


class MockServer:
    """A scriptable theia server on ``ws://127.0.0.1:<free port>``, run in a background thread.

    It starts when created and stops with :meth:`terminate` (or at the end of a
    ``with`` block, which also runs :meth:`verify`). Scripting methods return
    the server, so they chain. Script a server before the code under test
    connects: a connection takes its script when it opens.

    ``timeout`` is how long :meth:`verify` and :meth:`wait_requests` wait
    by default, in seconds.

    ``batch=True`` accepts the ``theia-frames.v1`` subprotocol when a client
    offers it, so responses may carry Arrow batches (``pyarrow.RecordBatch``),
    and answers ``{"flush": n}`` on ``/event`` as the collector does,
    confirming every event received on that connection (so ``Client.flush()``
    and ``send(..., wait=True)`` work against it), unless a :meth:`handle`
    function for ``/event`` is there to script the answer. By default the mock speaks
    the plain protocol, like the upstream collector.

    Handlers and predicates run in the server's thread; keep them quick and
    do not call :meth:`terminate`, :meth:`verify` or :meth:`wait_requests`
    from them.
    """

    def __init__(self, *, batch: bool = False, port: int = 0, timeout: float = 5.0) -> None:
        self.batch = batch
        self.timeout = timeout
        self.errors: list[BaseException] = []
        self._cond = threading.Condition()
        self._received: list[Received] = []
        self._expectations: list[_Expectation] = []
        self._handlers: list[tuple[str | None, Callable[[Data], Any]]] = []
        self._scripts: dict[str | None, list[list[_Step]]] = {}
        self._taken: dict[str | None, int] = {}
        self._assigned: dict[Any, tuple[_Step, ...]] = {}
        self._open: dict[Any, str] = {}
        self._subscribed: set[Any] = set()
        self._stalled: set[Any] = set()
        self._handled = 0
        self._connections = 0
        self._terminated = False
        self._stopping: asyncio.Event | None = None
        self.port = 0
        self._requested_port = port
        self._background = BackgroundLoop(self._serving, name="theia-mock-server")
        try:
            self._background.start()
        except OSError as exc:
            raise TransportError(f"MockServer could not listen on 127.0.0.1:{port}: {exc}") from exc

    # ------------------------------------------------------------------ basics
    @property
    def url(self) -> str:
        """The server's URL, ``ws://127.0.0.1:PORT``; hand it to a client."""
        return f"ws://127.0.0.1:{self.port}"

    @property
    def received(self) -> list[Received]:
        """Every message received so far, in order, as ``(path, message)`` pairs."""
        with self._cond:
            return list(self._received)

    @property
    def handled(self) -> int:
        """How many received messages have been fully handled."""
        with self._cond:
            return self._handled

    @property
    def connections(self) -> int:
        """How many WebSocket connections were opened (rejected handshakes excluded)."""
        with self._cond:
            return self._connections

    def events(self, path: str | None = None) -> list[Event]:
        """The events received (plain messages and Arrow batches), on ``path`` or any path.

        Messages that are not events (filters, text) are left out.
        """
        out: list[Event] = []
        for p, message in self.received:
            if path is not None and p != path:
                continue
            for unit in _units(message):
                event = _as_event(unit)
                if event is not None:
                    out.append(event)
        return out

    def __repr__(self) -> str:
        return f"<MockServer {self.url}>"

    def __enter__(self) -> MockServer:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                self.verify()
        finally:
            self.terminate()

    # ------------------------------------------------------------------ expectations
    def expect(self, *messages: Any, path: str | None = None) -> MockServer:
        """Expect these messages, in this order, on ``path`` (or on any path).

        A message may be text or bytes (compared byte for byte, whatever the
        frame type), an :class:`~theia_frames.Event` (compared field by field,
        timestamps to the microsecond), an :class:`~theia_frames.EventFilter`
        (compared as the JSON a client sends for it on that path), a dict
        (compared as JSON), or a predicate called with the received message
        (or with each event of an Arrow batch) — see :func:`event_like`.

        Each message received on the path is compared with the next expectation
        still waiting there; a difference is reported by :meth:`verify`, which
        shows what was expected and what was received.
        """
        if not messages:
            raise UsageError("expect() needs at least one message")
        for m in messages:
            _check_expectable(m)
        with self._cond:
            self._expectations.extend(_Expectation(m, path) for m in messages)
        return self

    def verify(self, timeout: float | None = None) -> None:
        """Raise :class:`MockExpectationError` if an expectation failed or an error was recorded.

        Waits up to ``timeout`` seconds (default: the server's ``timeout``;
        ``math.inf``: forever) for expectations still waiting, and returns as
        soon as all are met. Each problem is
        reported once: a second call does not raise for it again.
        """
        __tracebackhide__ = True  # pytest shows the failure, not this method
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._terminated and any(e.state == "pending" for e in self._expectations):
                if any(e.state == "mismatch" for e in self._expectations):
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, 3600.0))
            problems = self._problems(timeout)
            errors = list(self.errors)
            self.errors.clear()
        if errors:
            problems.append(f"{len(errors)} error(s) recorded by the mock:")
            problems.extend(f"  {type(e).__name__}: {e}" for e in errors)
        if problems:
            error = MockExpectationError("MockServer " + "\n".join(problems))
            if errors:
                raise error from errors[0]
            raise error

    def _problems(self, timeout: float) -> list[str]:
        problems: list[str] = []
        for e in self._expectations:
            where = e.path or "any path"
            if e.state == "mismatch":
                problems.append(
                    f"received an unexpected message on {e.received_path}:\n"
                    f"  expected: {_describe_expected(e.expected, e.received_path)}\n"
                    f"  received: {_describe_received(e.received)}"
                )
                e.state = "reported"
            elif e.state == "pending":
                waited = "" if self._terminated else f" (waited {timeout:g} s)"
                seen = [r for r in self._received if e.path is None or r.path == e.path]
                if seen:
                    last = "\n".join(f"    {r.path}: {_describe_received(r.message)}" for r in seen[-5:])
                    got = f"  received on {where}: {len(seen)} message(s), the last:\n{last}"
                else:
                    got = f"  received on {where}: nothing"
                problems.append(
                    f"expected a message that never arrived on {where}{waited}:\n"
                    f"  expected: {_describe_expected(e.expected, e.path)}\n{got}"
                )
                e.state = "reported"
        return problems

    def add_error(self, error: BaseException | str) -> MockServer:
        """Record an error in ``.errors`` (like the Go mock's ``AddError``); :meth:`verify` reports them."""
        if isinstance(error, str):
            error = MockExpectationError(error)
        with self._cond:
            self.errors.append(error)
            self._cond.notify_all()
        return self

    def wait_requests(self, n: int, timeout: float | None = None) -> None:
        """Wait until ``n`` messages (counted over all connections) have been handled.

        Raises :class:`~theia_frames.TheiaTimeoutError` (a ``TimeoutError``)
        if they were not within ``timeout`` seconds (default: the server's
        ``timeout``).
        """
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._handled < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = ", ".join(f"{r.path}: {_describe_received(r.message)}" for r in self._received[-5:])
                    raise TheiaTimeoutError(
                        f"MockServer handled {self._handled} of {n} expected message(s) "
                        f"within {timeout:g} s" + (f"; last received: {seen}" if seen else "")
                    )
                self._cond.wait(min(remaining, 3600.0))

    # ------------------------------------------------------------------ scripting
    def _add_step(self, path: str | None, step: _Step, *, new_connection: bool = False) -> MockServer:
        with self._cond:
            scripts = self._scripts.setdefault(path, [[]])
            current = scripts[-1]
            ended = bool(current) and isinstance(current[-1], _TERMINAL)
            if ended or (current and (new_connection or isinstance(step, _Reject))):
                current = []
                scripts.append(current)
            current.append(step)
        return self

    def respond(self, *messages: Any, path: str | None = None) -> MockServer:
        """Send these messages once a connection's first message has arrived.

        A message may be text (sent as a text frame, e.g. ``"ok"``), bytes
        (a binary frame, verbatim), an :class:`~theia_frames.Event` (encoded,
        binary), a dict (JSON text, e.g. ``{"error": "bad filter"}``), an
        ``ErrorMessage`` or ``ServerError`` (as an error object) or a pyarrow
        ``RecordBatch``/``Table`` (an Arrow batch; see ``batch=True``).
        Without ``path`` it applies to paths that have no script of their own.
        """
        return self._add_step(path, _Send(tuple(_outgoing(m) for m in messages)))

    def on_find(self, events: Iterable[Any] = (), *, path: str = "/find") -> MockServer:
        """Answer one ``/find`` like our collector: ``ok``, the events, then a normal close (1000)."""
        self._add_step(path, _Send((OK, *(_outgoing(e) for e in events))), new_connection=True)
        return self._add_step(path, _Close(1000, ""))

    def on_live(self, events: Iterable[Any] = (), *, path: str = "/live") -> MockServer:
        """Answer one ``/live`` with ``ok`` and the events, and keep the connection open.

        Send more later with :meth:`push`.
        """
        return self._add_step(path, _Send((OK, *(_outgoing(e) for e in events))), new_connection=True)

    def close_abruptly(self, *, path: str | None = None) -> MockServer:
        """Then drop the TCP connection without a WebSocket close frame (after flushing what was sent)."""
        return self._add_step(path, _Close(None))

    def close_with(self, code: int, reason: str = "", *, path: str | None = None) -> MockServer:
        """Then close the connection with this close code and reason."""
        if not (1000 <= code <= 4999) or code in _UNSENDABLE_CODES:
            raise UsageError(f"close code {code} cannot be sent (use 1000-1003, 1007-1014 or 3000-4999)")
        return self._add_step(path, _Close(code, reason))

    def stall(self, *, path: str | None = None) -> MockServer:
        """Then stop answering: nothing more is sent or read on the connection until :meth:`terminate`."""
        return self._add_step(path, _Stall())

    def reject(self, status: int = 403, body: str = "", *, path: str | None = None) -> MockServer:
        """Refuse the next connection's handshake with this HTTP status (e.g. 401, 403, 503)."""
        if not 400 <= status <= 599:
            raise UsageError(f"reject() needs an HTTP error status (400-599), got {status}")
        return self._add_step(path, _Reject(status, body))

    def next_connection(self, *, path: str | None = None) -> MockServer:
        """Start the script of the next connection to ``path``; earlier steps apply to earlier connections."""
        with self._cond:
            self._scripts.setdefault(path, [[]]).append([])
        return self

    def handle(self, fn: Callable[[Data], Any], *, path: str | None = None) -> MockServer:
        """Call ``fn(message)`` for each message received on ``path`` (or any path).

        A return value other than ``None`` is sent back (anything
        :meth:`respond` accepts, or a list of such). An exception raised by
        ``fn`` is recorded in ``.errors``.
        """
        with self._cond:
            self._handlers.append((path, fn))
        return self

    def push(self, *messages: Any, path: str = "/live") -> int:
        """Send messages now on every open connection to ``path`` whose first message arrived.

        Returns the number of connections sent to; wait for the subscription
        first (e.g. with :meth:`wait_requests`).
        """
        data = [_outgoing(m) for m in messages]
        self._check_running()
        return self._background.call(self._push(path, data), timeout=10)

    # ------------------------------------------------------------------ lifecycle
    def _check_running(self) -> None:
        if self._terminated:
            raise UsageError("this MockServer was terminated")
        if self._background.in_loop_thread():
            raise UsageError("MockServer methods that wait cannot be called from its own handlers")

    def terminate(self) -> None:
        """Stop the server: open connections are closed (1001, going away). Idempotent."""
        if self._background.in_loop_thread():
            raise UsageError("terminate() cannot be called from the mock's own handlers")
        with self._cond:
            if self._terminated:
                return
            self._terminated = True
            self._cond.notify_all()
        self._background.stop(timeout=15)

    @contextlib.asynccontextmanager
    async def _serving(self) -> AsyncIterator[None]:
        from websockets.asyncio.server import serve

        self._stopping = asyncio.Event()

        def select_subprotocol(connection: Any, offered: Any) -> Any:
            # Never refuse a client for what it offers: accept ours when enabled, else none.
            return SUBPROTOCOL if self.batch and SUBPROTOCOL in offered else None

        server = await serve(
            self._serve_connection,
            "127.0.0.1",
            self._requested_port,
            process_request=self._process_request,
            select_subprotocol=select_subprotocol,
            compression=None,
            ping_interval=None,
            close_timeout=1.0,
            max_size=None,
        )
        self.port = server.sockets[0].getsockname()[1]
        yield
        self._stopping.set()
        # A stalled connection reads nothing, so it could not finish a close handshake.
        for ws in list(self._stalled):
            ws.transport.abort()
        server.close()
        try:
            await asyncio.wait_for(server.wait_closed(), 5)
        except TimeoutError:
            for ws in list(self._open):
                ws.transport.abort()

    # ------------------------------------------------------------------ connections
    def _take_script(self, path: str) -> tuple[_Step, ...]:
        with self._cond:
            key: str | None = path if path in self._scripts else None
            scripts = self._scripts.get(key)
            if not scripts:
                return ()
            index = self._taken.get(key, 0)
            self._taken[key] = index + 1
            return tuple(scripts[min(index, len(scripts) - 1)])

    def _process_request(self, connection: Any, request: Any) -> Any:
        script = self._take_script(_request_path(request.path))
        if script and isinstance(script[0], _Reject):
            return connection.respond(script[0].status, script[0].body)
        self._assigned[connection] = script
        return None

    async def _serve_connection(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        path = _request_path(ws.request.path)
        script = self._assigned.pop(ws, ())
        with self._cond:
            self._open[ws] = path
            self._connections += 1
        first = True
        negotiated = path == "/event" and ws.subprotocol == SUBPROTOCOL
        events_seen = 0
        try:
            async for message in ws:
                if (
                    negotiated
                    and is_flush_request(message)
                    and not any(p is None or p == path for p, _ in self._handlers)
                ):
                    # answered as the collector does, and not matched against expectations
                    with self._cond:
                        self._received.append(Received(path, message))
                    await ws.send(_flush_reply(message, events_seen))
                    self._mark_handled()
                    continue
                if path == "/event":
                    events_seen += len(_units(message))
                terminal = None
                try:
                    for data in self._on_message(path, message):
                        await ws.send(data)
                    if first:
                        first = False
                        for step in script:
                            if not isinstance(step, _Send):
                                terminal = step
                                break
                            for data in step.messages:
                                await ws.send(data)
                        with self._cond:
                            self._subscribed.add(ws)
                finally:
                    self._mark_handled()
                if terminal is not None:
                    await self._finish(ws, terminal)
                    return
        except ConnectionClosed:
            pass  # the client went away; that is its right
        except Exception as exc:
            self.add_error(exc)
        finally:
            with self._cond:
                self._open.pop(ws, None)
                self._subscribed.discard(ws)
                self._stalled.discard(ws)

    async def _finish(self, ws: Any, step: _Step) -> None:
        if isinstance(step, _Close) and step.code is None:
            # transport.close() flushes what was sent, then ends TCP with no close frame.
            ws.transport.close()
            await ws.wait_closed()
        elif isinstance(step, _Close):
            await ws.close(step.code, step.reason)
        elif isinstance(step, _Stall):
            ws.transport.pause_reading()
            with self._cond:
                self._stalled.add(ws)
            assert self._stopping is not None
            await self._stopping.wait()

    def _mark_handled(self) -> None:
        with self._cond:
            self._handled += 1
            self._cond.notify_all()

    def _on_message(self, path: str, message: Data) -> list[Data]:
        with self._cond:
            self._received.append(Received(path, message))
            for unit in _units(message):
                self._check(path, unit)
            handlers = [fn for p, fn in self._handlers if p is None or p == path]
            self._cond.notify_all()
        replies: list[Data] = []
        for fn in handlers:
            try:
                out = fn(message)
                if out is not None:
                    replies.extend(_outgoing_many(out))
            except Exception as exc:
                self.add_error(exc)
        return replies

    def _check(self, path: str, unit: Data | Event) -> None:
        for e in self._expectations:
            if e.state == "pending" and (e.path is None or e.path == path):
                try:
                    ok = _matches(e.expected, unit, path)
                except Exception as exc:
                    self.errors.append(exc)
                    ok = False
                e.state = "met" if ok else "mismatch"
                e.received = unit
                e.received_path = path
                return

    async def _push(self, path: str, data: list[Data]) -> int:
        with self._cond:
            targets = [ws for ws in self._subscribed if self._open.get(ws) == path and ws not in self._stalled]
        sent = 0
        for ws in targets:
            try:
                for d in data:
                    await ws.send(d)
                sent += 1
            except Exception:
                continue  # closed meanwhile
        return sent
