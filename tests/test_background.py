"""BackgroundLoop: the one thread-plus-event-loop under the collector, MockServer and the upstream-like server."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import threading
from collections.abc import AsyncIterator

import pytest

from theia_frames.server.background import BackgroundLoop
from theia_frames.exceptions import TheiaTimeoutError, UsageError


class Recorder:
    """A lifespan that records what happened to it, on which thread."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.fail = fail
        self.steps: list[str] = []
        self.threads: set[str] = set()

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        self.threads.add(threading.current_thread().name)
        self.steps.append("enter")
        if self.fail is not None:
            raise self.fail
        try:
            yield
        finally:
            self.steps.append("exit")


def test_start_call_stop() -> None:
    rec = Recorder()
    background = BackgroundLoop(rec.lifespan, name="test-loop").start()
    try:
        assert background.running and rec.steps == ["enter"]

        async def where() -> str:
            return threading.current_thread().name

        assert background.call(where()) == "test-loop"
    finally:
        background.stop()
    assert rec.steps == ["enter", "exit"]
    assert not background.running and not background.thread.is_alive()
    assert background.loop is not None and background.loop.is_closed()


def test_start_failure_is_raised_in_the_caller() -> None:
    boom = ValueError("cannot bind")
    exits: list[str] = []
    background = BackgroundLoop(Recorder(fail=boom).lifespan, on_exit=lambda: exits.append(threading.current_thread().name))
    with pytest.raises(ValueError) as info:
        background.start()
    assert info.value is boom
    assert not background.thread.is_alive()
    assert exits == [background.thread.name]  # on_exit ran on the loop's thread, before start() returned
    background.stop()  # stopping a loop that never started serving is a no-op


def test_a_real_bind_failure_surfaces_as_the_oserror() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]

    @contextlib.asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", port)
        async with server:
            yield

    try:
        with pytest.raises(OSError) as info:
            BackgroundLoop(lifespan).start()
        assert info.value.errno == errno.EADDRINUSE
    finally:
        taken.close()


def test_stop_is_idempotent_and_works_from_another_thread() -> None:
    rec = Recorder()
    background = BackgroundLoop(rec.lifespan).start()
    stopper = threading.Thread(target=background.stop)
    stopper.start()
    stopper.join(30)
    assert not stopper.is_alive()
    assert not background.thread.is_alive()
    background.stop()
    background.stop(timeout=1)
    assert rec.steps == ["enter", "exit"]


def test_stop_from_the_loop_thread_asks_without_waiting() -> None:
    rec = Recorder()
    background = BackgroundLoop(rec.lifespan).start()

    async def stop_from_inside() -> None:
        background.stop()  # must not join its own thread

    asyncio.run_coroutine_threadsafe(stop_from_inside(), background.loop).result(10)  # type: ignore[arg-type]
    background.thread.join(30)
    assert not background.thread.is_alive()
    assert rec.steps == ["enter", "exit"]


def test_context_manager() -> None:
    rec = Recorder()
    with BackgroundLoop(rec.lifespan) as background:
        assert background.running
    assert rec.steps == ["enter", "exit"]
    assert not background.thread.is_alive()


def test_started_once() -> None:
    with BackgroundLoop(Recorder().lifespan) as background:
        with pytest.raises(UsageError, match="only once"):
            background.start()


def test_call_errors() -> None:
    background = BackgroundLoop(Recorder().lifespan)

    async def nothing() -> None:
        return None

    with pytest.raises(UsageError, match="not running"):
        background.call(nothing())
    background.start()

    async def fails() -> None:
        raise KeyError("inside")

    with pytest.raises(KeyError, match="inside"):
        background.call(fails())

    cancelled = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TheiaTimeoutError):
        background.call(forever(), timeout=0.05)
    assert cancelled.wait(10)

    async def from_inside() -> str:
        try:
            background.call(nothing())
        except UsageError as exc:
            return str(exc)
        return "no error"

    assert "own thread" in background.call(from_inside())
    background.stop()
    with pytest.raises(UsageError, match="not running"):
        background.call(nothing())
    assert background.call_soon(print) is False  # the loop is closed


def test_tasks_left_running_are_cancelled_at_stop() -> None:
    cancelled = threading.Event()

    async def lingering() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def spawn() -> None:
        asyncio.get_running_loop().create_task(lingering())
        await asyncio.sleep(0)

    with BackgroundLoop(Recorder().lifespan) as background:
        background.call(spawn())
    assert cancelled.is_set()


def test_start_timeout() -> None:
    release = threading.Event()

    @contextlib.asynccontextmanager
    async def slow() -> AsyncIterator[None]:
        while not release.is_set():
            await asyncio.sleep(0.01)
        yield

    background = BackgroundLoop(slow)
    try:
        with pytest.raises(TheiaTimeoutError, match="did not start"):
            background.start(timeout=0.05)
    finally:
        release.set()
        background.thread.join(30)
    assert not background.thread.is_alive()
