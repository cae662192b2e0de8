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
and stops the server. The pytest plugin (:mod:`theia_frames.testing.pytest_plugin`)
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
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, NamedTuple

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from ..server.background import BackgroundLoop
from ..protocol.arrow import SUBPROTOCOL
from ..event import Event
from ..exceptions import TheiaTimeoutError, TransportError, UsageError
from ..protocol.messages import (
    CLOSE_DROPPED,
    CLOSE_NO_STATUS,
    CLOSE_NORMAL,
    EVENT_PATH,
    FIND_PATH,
    LIVE_PATH,
    OK,
    is_flush_request,
)
from .script import (
    TERMINAL,
    Close,
    Data,
    Expectation,
    Reject,
    Send,
    Stall,
    Step,
    answer_flush,
    as_event,
    check_expectable,
    describe_expected,
    describe_received,
    event_like,
    matches,
    outgoing,
    outgoing_many,
    request_path,
    units,
)

__all__ = ["MockServer", "MockExpectationError", "Received", "event_like"]

# websockets refuses to send these close codes; they only describe closes.
_UNSENDABLE_CODES = {1004, CLOSE_NO_STATUS, CLOSE_DROPPED, 1015}


class MockExpectationError(AssertionError):
    """A :class:`MockServer` did not receive what it was told to expect.

    An ``AssertionError``, so test runners report it as a failed test.
    """


class Received(NamedTuple):
    """One message a :class:`MockServer` received: the request path and the message."""

    path: str
    message: Data


# --------------------------------------------------------------------------- server


class MockServer:
    """A scriptable theia server on ``ws://127.0.0.1:<free port>``, run in a background thread.

    It starts when created and stops with :meth:`terminate` (or at the end of a
    ``with`` block, which also runs :meth:`verify`). Scripting methods return
    the server, so they chain. Script a server before the code under test
    connects: a connection takes its script when it opens.

    ``timeout`` is how long :meth:`verify` and :meth:`wait_requests` wait
    by default, in seconds.

    ``batch=True`` accepts the ``theia-frames.v2`` subprotocol when a client
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
        self._expectations: list[Expectation] = []
        self._handlers: list[tuple[str | None, Callable[[Data], Any]]] = []
        self._scripts: dict[str | None, list[list[Step]]] = {}
        self._taken: dict[str | None, int] = {}
        self._assigned: dict[Any, tuple[Step, ...]] = {}
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
            for unit in units(message):
                event = as_event(unit)
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
            check_expectable(m)
        with self._cond:
            self._expectations.extend(Expectation(m, path) for m in messages)
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
                    f"  expected: {describe_expected(e.expected, e.received_path)}\n"
                    f"  received: {describe_received(e.received)}"
                )
                e.state = "reported"
            elif e.state == "pending":
                waited = "" if self._terminated else f" (waited {timeout:g} s)"
                seen = [r for r in self._received if e.path is None or r.path == e.path]
                if seen:
                    last = "\n".join(f"    {r.path}: {describe_received(r.message)}" for r in seen[-5:])
                    got = f"  received on {where}: {len(seen)} message(s), the last:\n{last}"
                else:
                    got = f"  received on {where}: nothing"
                problems.append(
                    f"expected a message that never arrived on {where}{waited}:\n"
                    f"  expected: {describe_expected(e.expected, e.path)}\n{got}"
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
                    seen = ", ".join(f"{r.path}: {describe_received(r.message)}" for r in self._received[-5:])
                    raise TheiaTimeoutError(
                        f"MockServer handled {self._handled} of {n} expected message(s) "
                        f"within {timeout:g} s" + (f"; last received: {seen}" if seen else "")
                    )
                self._cond.wait(min(remaining, 3600.0))

    # ------------------------------------------------------------------ scripting
    def _add_step(self, path: str | None, step: Step, *, new_connection: bool = False) -> MockServer:
        with self._cond:
            scripts = self._scripts.setdefault(path, [[]])
            current = scripts[-1]
            ended = bool(current) and isinstance(current[-1], TERMINAL)
            if ended or (current and (new_connection or isinstance(step, Reject))):
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
        return self._add_step(path, Send(tuple(outgoing(m) for m in messages)))

    def on_find(self, events: Iterable[Any] = (), *, path: str = FIND_PATH) -> MockServer:
        """Answer one ``/find`` like our collector: ``ok``, the events, then a normal close (1000)."""
        self._add_step(path, Send((OK, *(outgoing(e) for e in events))), new_connection=True)
        return self._add_step(path, Close(CLOSE_NORMAL, ""))

    def on_live(self, events: Iterable[Any] = (), *, path: str = LIVE_PATH) -> MockServer:
        """Answer one ``/live`` with ``ok`` and the events, and keep the connection open.

        Send more later with :meth:`push`.
        """
        return self._add_step(path, Send((OK, *(outgoing(e) for e in events))), new_connection=True)

    def close_abruptly(self, *, path: str | None = None) -> MockServer:
        """Then drop the TCP connection without a WebSocket close frame (after flushing what was sent)."""
        return self._add_step(path, Close(None))

    def close_with(self, code: int, reason: str = "", *, path: str | None = None) -> MockServer:
        """Then close the connection with this close code and reason."""
        if not (1000 <= code <= 4999) or code in _UNSENDABLE_CODES:
            raise UsageError(f"close code {code} cannot be sent (use 1000-1003, 1007-1014 or 3000-4999)")
        return self._add_step(path, Close(code, reason))

    def stall(self, *, path: str | None = None) -> MockServer:
        """Then stop answering: nothing more is sent or read on the connection until :meth:`terminate`."""
        return self._add_step(path, Stall())

    def reject(self, status: int = 403, body: str = "", *, path: str | None = None) -> MockServer:
        """Refuse the next connection's handshake with this HTTP status (e.g. 401, 403, 503)."""
        if not 400 <= status <= 599:
            raise UsageError(f"reject() needs an HTTP error status (400-599), got {status}")
        return self._add_step(path, Reject(status, body))

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

    def push(self, *messages: Any, path: str = LIVE_PATH) -> int:
        """Send messages now on every open connection to ``path`` whose first message arrived.

        Returns the number of connections sent to; wait for the subscription
        first (e.g. with :meth:`wait_requests`).
        """
        data = [outgoing(m) for m in messages]
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
    def _take_script(self, path: str) -> tuple[Step, ...]:
        with self._cond:
            key: str | None = path if path in self._scripts else None
            scripts = self._scripts.get(key)
            if not scripts:
                return ()
            index = self._taken.get(key, 0)
            self._taken[key] = index + 1
            return tuple(scripts[min(index, len(scripts) - 1)])

    def _process_request(self, connection: Any, request: Any) -> Any:
        script = self._take_script(request_path(request.path))
        if script and isinstance(script[0], Reject):
            return connection.respond(script[0].status, script[0].body)
        self._assigned[connection] = script
        return None

    async def _serve_connection(self, ws: Any) -> None:

        path = request_path(ws.request.path)
        script = self._assigned.pop(ws, ())
        with self._cond:
            self._open[ws] = path
            self._connections += 1
        first = True
        negotiated = path == EVENT_PATH and ws.subprotocol == SUBPROTOCOL
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
                    await ws.send(answer_flush(message, events_seen))
                    self._mark_handled()
                    continue
                if path == EVENT_PATH:
                    events_seen += len(units(message))
                terminal = None
                try:
                    for data in self._on_message(path, message):
                        await ws.send(data)
                    if first:
                        first = False
                        for step in script:
                            if not isinstance(step, Send):
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

    async def _finish(self, ws: Any, step: Step) -> None:
        if isinstance(step, Close) and step.code is None:
            # transport.close() flushes what was sent, then ends TCP with no close frame.
            ws.transport.close()
            await ws.wait_closed()
        elif isinstance(step, Close):
            await ws.close(step.code, step.reason)
        elif isinstance(step, Stall):
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
            for unit in units(message):
                self._check(path, unit)
            handlers = [fn for p, fn in self._handlers if p is None or p == path]
            self._cond.notify_all()
        replies: list[Data] = []
        for fn in handlers:
            try:
                out = fn(message)
                if out is not None:
                    replies.extend(outgoing_many(out))
            except Exception as exc:
                self.add_error(exc)
        return replies

    def _check(self, path: str, unit: Data | Event) -> None:
        for e in self._expectations:
            if e.state == "pending" and (e.path is None or e.path == path):
                try:
                    ok = matches(e.expected, unit, path)
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
