"""The collector's ``/find`` and ``/chunks`` endpoints (:class:`FindEndpoint`,
:class:`ChunksEndpoint`): a filter in, the stored events out as ready frames, what matched
so far sent after ``find_wait``, a stalled reader cut off; or the layout of the stored chunks.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..exceptions import StoreError
from ..protocol.arrow import SUBPROTOCOL
from ..protocol.messages import CHUNKS_PATH, CLOSE_NORMAL, CLOSE_REFUSED, OK, chunks_reply, error_message, total_message
from .filters import FilterReader
from .output import (
    ConnectionState,
    Stalled,
    ThrottledLog,
    next_find_output,
    peer_name,
    release_arrow_memory,
    write_frames,
)
from .query import Queries
from .store import EventStore

if TYPE_CHECKING:  # pragma: no cover
    from websockets.asyncio.server import ServerConnection

__all__ = [
    "FindEndpoint",
    "FindMemory",
    "ExtensionEndpoint",
    "ChunksEndpoint",
]


# Events read and encoded per step of a plain /find (one frame each, written together).
_PLAIN_CHUNK = 8_192


class FindMemory:
    """The total of the bytes the running ``/find`` queries hold read and encoded but
    not yet handed to their sockets, and the bound on it (loop thread only).

    A find charges each part it has read before sending it and gives the bytes back
    once its socket took them; it starts reading its next part only while the total
    is below ``limit``. Its first part is read without waiting, so a small find is
    never held up by large ones: the finds together hold at most ``limit``, plus
    the parts being read at that moment (one per find worker thread), plus one
    first part per find just begun.

    >>> import asyncio
    >>> async def demo():
    ...     memory = FindMemory(100)
    ...     memory.charge(150)
    ...     waiting = asyncio.ensure_future(memory.room())
    ...     await asyncio.sleep(0)
    ...     before = waiting.done()
    ...     memory.release(150)
    ...     await waiting
    ...     return before, memory.held, memory.peak
    >>> asyncio.run(demo())
    (False, 0, 150)
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.peak = 0
        self.waits = 0  # times a find waited for room
        self._below: asyncio.Event | None = None

    def charge(self, nbytes: int) -> None:
        """Count ``nbytes`` read and not yet sent."""
        self.held += nbytes
        self.peak = max(self.peak, self.held)

    def release(self, nbytes: int) -> None:
        """Give back ``nbytes`` a socket has taken; wakes the finds waiting for room."""
        self.held -= nbytes
        if self._below is not None and self.held < self.limit:
            self._below.set()

    async def room(self) -> None:
        """Wait until the total is below the bound."""
        if self.held < self.limit:
            return
        self.waits += 1
        if self._below is None:
            self._below = asyncio.Event()
        while self.held >= self.limit:
            self._below.clear()
            await self._below.wait()


@dataclass(kw_only=True, eq=False)
class FindEndpoint:
    """The ``/find`` endpoint of the collector: a filter in, the stored events out.

    Dependencies: the ``store`` read, the ``pool`` of threads that read and encode it,
    the ``filters`` reader, the running ``queries`` (a stop cancels them), the finds'
    ``memory`` total, the ``pattern_steps`` places for steps of finds with patterns
    (the costly kind), ``stopping()`` (True once the collector is stopping) and the ``log``.
    ``batch_size``, ``find_wait`` and ``stall_timeout`` are the collector's options.
    """

    store: EventStore
    pool: Executor
    filters: FilterReader
    queries: Queries
    memory: FindMemory
    pattern_steps: asyncio.Semaphore
    stopping: Callable[[], bool]
    log: ThrottledLog
    batch_size: int
    find_wait: float
    stall_timeout: float | None

    async def serve(self, ws: ServerConnection, batched: bool, state: ConnectionState) -> None:
        """Read the filter, answer ``ok``, send what matches, close normally."""
        flt = await self.filters.read(ws)
        if flt is None:
            return
        state.watched = False  # from now on the stall timeout watches it
        loop = asyncio.get_running_loop()
        store, pool = self.store, self.pool
        # Batched: Arrow messages, stored chunks sent as stored. Plain: many events
        # encoded at once into ready WebSocket frames, written together.
        results: Any
        if batched:
            query = functools.partial(store.query_ipc, flt, batch_size=self.batch_size, wait=self.find_wait)
        else:
            query = functools.partial(store.query_batches, flt, batch_size=_PLAIN_CHUNK, wait=self.find_wait)
        results = await loop.run_in_executor(pool, query)
        self.queries.add(results)
        produce = functools.partial(next_find_output, results, batched)
        slots = None if flt.is_time_only else self.pattern_steps
        running = [False]  # whether the current step reached a worker thread

        async def step() -> bytes | memoryview | None:
            # A step of a find with patterns (Python matching, the costly kind) waits
            # for one of the places of such steps, in turn with the other such finds:
            # each gets a step in its turn, and a worker stays free for time-only finds.
            if slots is None:
                running[0] = True
                return await loop.run_in_executor(pool, produce)
            async with slots:
                running[0] = True
                return await loop.run_in_executor(pool, produce)

        def next_step() -> asyncio.Task[bytes | memoryview | None]:
            running[0] = False
            return loop.create_task(step())

        job: asyncio.Task[bytes | memoryview | None] | None = None
        gone = loop.create_task(ws.wait_closed())
        memory = self.memory
        charged = 0
        try:
            await self._send(ws, OK, False)
            if batched:
                # what a progress bar needs: sent when the index can tell (a filter of time alone)
                total = await loop.run_in_executor(pool, results.count)
                if total is not None:
                    await self._send(ws, total_message(total), False)
            job = next_step()
            while job is not None:
                await asyncio.wait((job, gone), return_when=asyncio.FIRST_COMPLETED)
                if not job.done():
                    return  # the client left: the query ends below, at its next chunk
                try:
                    output = job.result()
                except StoreError:
                    if self.stopping():
                        return  # cancelled by the stop: the connection is closing anyway
                    raise
                job = None
                if output is None:
                    break
                charged = len(output)
                memory.charge(charged)
                # Read and encode the next part while this one is sent, when the
                # finds together hold less than their bound; else after it is sent.
                if memory.held < memory.limit:
                    job = next_step()
                if not batched and not len(output):
                    await ws.ping()  # still matching: a plain peer has no empty message
                else:
                    await self._send(ws, output, not batched)
                del output
                memory.release(charged)
                charged = 0
                if job is None:
                    await self._room(memory, gone)
                    if gone.done():
                        return
                    job = next_step()
        finally:
            if charged:
                memory.release(charged)
            results.cancel()
            gone.cancel()
            if job is not None:
                if not running[0]:
                    job.cancel()  # still waiting for its turn: it never touched the query
                await asyncio.gather(job, return_exceptions=True)
            await loop.run_in_executor(pool, results.close)
            self.queries.discard(results)
            if not self.queries:
                # The last find has ended: the Arrow memory its parts took goes back to the system.
                loop.run_in_executor(pool, release_arrow_memory)
        await ws.close(CLOSE_NORMAL)

    @staticmethod
    async def _room(memory: FindMemory, gone: asyncio.Task[Any]) -> None:
        """Wait for room in the finds' memory, or until the client leaves."""
        if memory.held < memory.limit:
            return
        room = asyncio.ensure_future(memory.room())
        try:
            await asyncio.wait((room, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            room.cancel()

    async def _send(self, ws: ServerConnection, output: bytes | memoryview | str, frames: bool) -> None:
        """Send a part of a /find (a message, or ready frames when ``frames``); cut the
        connection off when its client takes none of its bytes for ``stall_timeout``."""
        send = write_frames(ws, output) if frames else ws.send(output)  # type: ignore[arg-type]
        stall = self.stall_timeout
        if stall is None:
            await send
            return
        task = asyncio.ensure_future(send)
        loop = asyncio.get_running_loop()
        try:
            last, since = -1, loop.time()
            while True:
                done, _ = await asyncio.wait((task,), timeout=min(1.0, stall))
                if done:
                    task.result()
                    return
                waiting = ws.transport.get_write_buffer_size()
                if last < 0 or waiting < last:
                    last, since = waiting, loop.time()  # the client took some
                elif loop.time() - since >= stall:
                    self.log.warning(
                        "stalled", "cutting off /find of %s: it took nothing of its results for %s s", peer_name(ws), stall
                    )
                    ws.transport.abort()
                    raise Stalled()
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


@dataclass(kw_only=True, eq=False)
class ExtensionEndpoint:
    """An endpoint of the extension (its ``path``), served only to a peer that negotiated
    it: the ``store`` read on threads of ``pool``, filters read by ``filters``."""

    path: ClassVar[str]
    store: EventStore
    pool: Executor
    filters: FilterReader

    async def serve(self, ws: ServerConnection, batched: bool, state: ConnectionState) -> None:
        """:meth:`answer`, or tell a peer that did not offer the extension that this path is part of it, and close."""
        if not batched:
            await ws.send(error_message(f"{self.path} is part of the {SUBPROTOCOL} extension: offer that subprotocol"))
            await ws.close(CLOSE_REFUSED, "extension not negotiated")
            return
        await self.answer(ws)

    async def answer(self, ws: ServerConnection) -> None:
        """Serve a peer that negotiated the extension."""
        raise NotImplementedError


@dataclass(kw_only=True, eq=False)
class ChunksEndpoint(ExtensionEndpoint):
    """The extension's ``/chunks`` endpoint: a filter in, the layout of the stored chunks of
    its time range out (from the store's index alone)."""

    path = CHUNKS_PATH

    async def answer(self, ws: ServerConnection) -> None:
        """``{"chunks": [[first, last, events], ...]}``, then a normal close."""
        flt = await self.filters.read(ws)
        if flt is None:
            return
        store = self.store
        start = -math.inf if flt.start is None else flt.start
        end = math.inf if flt.end is None else flt.end

        def layout() -> str:
            return chunks_reply(
                (c.min_ts, c.max_ts, c.rows) for c in store.chunks() if c.max_ts >= start and c.min_ts <= end
            )

        reply = await asyncio.get_running_loop().run_in_executor(self.pool, layout)
        await ws.send(reply)
        await ws.close(CLOSE_NORMAL)
