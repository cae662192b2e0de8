"""An asyncio event loop on a daemon thread, for servers that synchronous code starts and stops.

The embedded collector, :class:`~theia_frames.testing.mock.MockServer` and the
test suite's upstream-like server all run the same way: a thread owns an
event loop, the server starts on it while the caller waits, the caller gets
the server's start failure as its own exception, other threads hand the loop
coroutines, and a stop closes the server and joins the thread. That is
:class:`BackgroundLoop`.

What runs on the loop is a *lifespan*: an async context manager whose entry
starts the server and whose exit stops it. Entry finishing means ready; an
exception raised by the entry is re-raised by :meth:`BackgroundLoop.start`
in the caller's thread, unchanged.

    >>> import contextlib
    >>> @contextlib.asynccontextmanager
    ... async def lifespan():
    ...     print("started")
    ...     yield
    ...     print("stopped")
    >>> async def answer():
    ...     return 42
    >>> with BackgroundLoop(lifespan) as background:
    ...     background.call(answer())
    started
    42
    stopped

The thread is a daemon, so a forgotten server never keeps the interpreter
alive; once the lifespan has exited, the tasks still running on the loop are
cancelled and the loop is closed, as :func:`asyncio.run` does.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any, Self, TypeVar

from ..exceptions import TheiaTimeoutError, UsageError

__all__ = ["BackgroundLoop", "Lifespan", "StartStop", "Tasks"]

logger = logging.getLogger("theia_frames.server.background")

T = TypeVar("T")

#: What a :class:`BackgroundLoop` runs: called on the loop's thread, it returns an
#: async context manager that starts the server on entry and stops it on exit.
Lifespan = Callable[[], AbstractAsyncContextManager[Any]]


class StartStop(abc.ABC):
    """Something started once and stopped any number of times; as a context manager,
    started on entry (unless it already was) and stopped on exit."""

    @property
    @abc.abstractmethod
    def started(self) -> bool:
        """True once :meth:`start` was called."""

    @abc.abstractmethod
    def start(self) -> Self:
        """Start; returns self."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop (idempotent)."""

    def __enter__(self) -> Self:
        if not self.started:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class Tasks:
    """The tasks a server spawns on its loop and must end when it stops (loop thread only).

    >>> async def demo():
    ...     tasks = Tasks()
    ...     tasks.spawn(asyncio.sleep(3600))
    ...     await tasks.cancel_all()
    ...     return len(tasks)
    >>> asyncio.run(demo())
    0
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task of the running loop, kept until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def cancel_all(self) -> None:
        """Cancel every task still running and wait for them to end."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def __len__(self) -> int:
        return len(self._tasks)


class BackgroundLoop(StartStop):
    """Run ``lifespan`` on a new event loop in a daemon thread named ``name``.

    ``on_exit`` (optional) is called on that thread once the loop is closed,
    whether the lifespan started or not: the place to release what the
    lifespan's owner holds outside the loop (its worker threads, a store).

    Use :meth:`start` and :meth:`stop`, or the object as a context manager.
    A loop is started once; :meth:`stop` can be called any number of times,
    from any thread.
    """

    def __init__(self, lifespan: Lifespan, *, name: str = "theia-frames-loop", on_exit: Callable[[], None] | None = None) -> None:
        self._lifespan = lifespan
        self._on_exit = on_exit
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._start_error: BaseException | None = None
        self._started = False
        self._stopping = False
        self._serving = False

    # ------------------------------------------------------------------ state
    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop, once :meth:`start` has begun (``None`` before)."""
        return self._loop

    @property
    def thread(self) -> threading.Thread:
        """The daemon thread that runs the loop."""
        return self._thread

    @property
    def started(self) -> bool:
        """True once :meth:`start` was called."""
        return self._started

    @property
    def running(self) -> bool:
        """True from the end of a successful :meth:`start` until :meth:`stop` is called."""
        return self._serving and not self._stopping

    @property
    def stop_requested(self) -> bool:
        """True once :meth:`stop` has been called: the lifespan is exiting or has exited."""
        return self._stopping

    def in_loop_thread(self) -> bool:
        """True when called from the loop's own thread (a handler of the server)."""
        return threading.current_thread() is self._thread

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float | None = None) -> Self:
        """Start the thread and wait until the lifespan has entered; returns self.

        An exception raised while entering is re-raised here, unchanged, after
        the thread has ended. ``timeout`` (seconds, ``None`` for no limit)
        bounds the wait: past it the loop is stopped and
        :class:`~theia_frames.exceptions.TheiaTimeoutError` raised.
        """
        with self._lock:
            if self._started:
                raise UsageError("a background loop can be started only once")
            self._started = True
        self._thread.start()
        if not self._ready.wait(timeout):
            self._ask_stop()  # the lifespan exits as soon as its entry ends
            raise TheiaTimeoutError(f"{self._thread.name} did not start within {timeout} s")
        if self._start_error is not None:
            self._thread.join()
            raise self._start_error
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Exit the lifespan, close the loop and join the thread. Idempotent.

        Called from the loop's own thread (a handler), it only asks the loop
        to stop: a thread cannot wait for itself. ``timeout`` bounds the join
        (``None``: wait as long as it takes); a thread still running past it
        raises :class:`~theia_frames.exceptions.TheiaTimeoutError`.
        """
        if not self._ask_stop() or self.in_loop_thread():
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TheiaTimeoutError(f"{self._thread.name} did not stop within {timeout} s")

    def __repr__(self) -> str:
        state = "running" if self.running else ("stopped" if self._stopping else "not started")
        return f"<BackgroundLoop {self._thread.name} ({state})>"

    # ------------------------------------------------------------------ other threads
    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 10.0) -> T:
        """Run ``coro`` on the loop and return its result (or raise its exception).

        ``timeout`` in seconds (``None``: no limit); past it the coroutine is
        cancelled and :class:`~theia_frames.exceptions.TheiaTimeoutError`
        raised. Not from the loop's own thread (it would wait for itself) and
        not once stopped: both are a :class:`~theia_frames.exceptions.UsageError`.
        """
        loop = self._loop
        problem = None
        if self.in_loop_thread():
            problem = "cannot wait for the background loop from its own thread"
        elif loop is None or not self.running:
            problem = f"{self._thread.name} is not running"
        if problem is not None:
            coro.close()
            raise UsageError(problem)
        assert loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout)
        except TimeoutError as exc:  # concurrent.futures.TimeoutError is TimeoutError since 3.11
            if not future.done():
                future.cancel()
                raise TheiaTimeoutError(f"{self._thread.name} did not finish a call within {timeout} s") from exc
            raise

    def call_soon(self, callback: Callable[..., object], *args: Any) -> bool:
        """Schedule ``callback(*args)`` on the loop from any thread; False when the loop has ended."""
        loop = self._loop
        if loop is None:
            return False
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed
            return False
        return True

    # ------------------------------------------------------------------ the thread
    def _ask_stop(self) -> bool:
        """Ask the loop to exit the lifespan; False when it was never started."""
        with self._lock:
            first = not self._stopping
            self._stopping = True
            started = self._started
        if started and first:
            self.call_soon(self._request_stop)
        return started

    def _request_stop(self) -> None:
        if self._stop_requested is not None:
            self._stop_requested.set()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            asyncio.set_event_loop(loop)
            self._loop = loop
            loop.run_until_complete(self._main())
        except BaseException as exc:  # pragma: no cover - a bug of the lifespan's exit; keep the caller from hanging
            logger.exception("the event loop of %s failed", self._thread.name)
            if not self._ready.is_set():
                self._start_error = exc
        finally:
            try:
                _cancel_remaining(loop)
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                asyncio.set_event_loop(None)
                loop.close()
                try:
                    if self._on_exit is not None:
                        self._on_exit()
                finally:
                    self._ready.set()

    async def _main(self) -> None:
        self._stop_requested = asyncio.Event()
        if self._stopping:  # stop() came before the loop existed
            self._stop_requested.set()
        lifespan = self._lifespan()
        try:
            await lifespan.__aenter__()
        except BaseException as exc:
            self._start_error = exc
            self._ready.set()
            return
        self._serving = True
        self._ready.set()
        try:
            await self._stop_requested.wait()
        except BaseException as exc:
            if not await lifespan.__aexit__(type(exc), exc, exc.__traceback__):
                raise
        else:
            await lifespan.__aexit__(None, None, None)


def _cancel_remaining(loop: asyncio.AbstractEventLoop) -> None:
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
