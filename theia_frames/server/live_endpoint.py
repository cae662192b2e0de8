"""The collector's ``/live`` endpoint (:class:`LiveEndpoint`): subscribers, what each is
sent, and dropping the ones that fall behind.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from websockets.exceptions import ConnectionClosed

from ..protocol.arrow import batch_to_ipc
from ..protocol.messages import CLOSE_TOO_SLOW, OK, TOO_SLOW, too_slow_message
from .background import Tasks
from .event_endpoint import Published
from .fanout import Subscriber
from .filters import FilterReader
from .output import (
    ConnectionState,
    ThrottledLog,
    joined_frames,
    peer_name,
    plain_frames,
    write_frames,
)

if TYPE_CHECKING:  # pragma: no cover
    from websockets.asyncio.server import ServerConnection

__all__ = [
    "LiveEndpoint",
]


logger = logging.getLogger("theia_frames.server.collector")


# Seconds a dropped subscriber has to take what was on its way, the notice and
# the close frame; one that reads nothing for that long is cut off.
_SLOW_CLOSE_GRACE = 10.0


# Seconds allowed to send the "too slow" error to a subscriber that is not reading.
_SLOW_NOTICE_TIMEOUT = 1.0


# Seconds a live subscriber's sender may be stuck writing one slice while more than
# live_queue events wait before the subscriber is dropped as too slow.
_STUCK_WRITE = 1.0


class LiveEndpoint:
    """The ``/live`` endpoint of the collector: subscribers, what each is sent, and dropping the slow ones.

    A subscriber starts after the last commit ``published`` has taken in; at most
    ``live_queue`` of its events wait to be sent. It is the fan-out's
    :class:`~theia_frames.server.fanout.FanoutTarget`.
    """

    def __init__(
        self, filters: FilterReader, published: Published, tasks: Tasks, log: ThrottledLog, *, live_queue: int
    ) -> None:
        self.filters = filters
        self.published = published
        self.tasks = tasks
        self.log = log
        self.live_queue = live_queue
        self.subscribers: set[Subscriber] = set()
        self._live: tuple[Subscriber, ...] = ()  # the same, as the fan-out thread reads it

    @property
    def live(self) -> tuple[Subscriber, ...]:
        """The subscribers now (read from the fan-out thread)."""
        return self._live

    async def serve(self, ws: ServerConnection, batched: bool, state: ConnectionState) -> None:
        """Read the filter, answer ``ok``, then push what matches until the subscriber leaves."""
        flt = await self.filters.read(ws)
        if flt is None:
            return
        state.watched = False  # a subscriber only listens
        sub = Subscriber(ws, flt, batched, self.published.upto)
        # Registered before "ok": every event stored after the client reads "ok" is pushed.
        self.subscribers.add(sub)
        self._live = tuple(self.subscribers)
        try:
            await ws.send(OK)
            sub.sender = self.tasks.spawn(self._live_sender(sub))
            async for message in ws:
                flt = await self.filters.read(ws, message)
                if flt is None:
                    return
                sub.filter = flt
                await ws.send(OK)
        finally:
            self.subscribers.discard(sub)
            self._live = tuple(self.subscribers)
            if sub.sender is not None:
                sub.sender.cancel()

    def deliver(self, parts: list[tuple[Subscriber, Any]]) -> None:
        """Hand a commit's matches (computed by the fan-out thread) to their subscribers (loop thread)."""
        for sub, part in parts:
            if sub.dropped or sub not in self.subscribers:
                continue
            if sub.waiting >= self.live_queue and sub.writing:
                # Over its bound while its sender is stuck writing (not merely not yet
                # woken: the fan-out may hand over several commits at once).
                self.drop_slow(sub)
                continue
            sub.pending.append(part)
            sub.waiting += len(part)
            sub.wake.set()

    async def _live_sender(self, sub: Subscriber) -> None:
        # Events are written in slices of at most live_queue and count as waiting until
        # their slice is written out (flow control included): a subscriber that stops
        # reading holds one slice in its socket buffer, however large a commit was,
        # and the next commit finds it over its bound and drops it.
        ws = sub.ws
        step = self.live_queue
        loop = asyncio.get_running_loop()

        def stuck() -> None:
            # Still writing a slice while more than the bound waits: behind by more
            # than the bound, whether or not another commit comes to notice it.
            if not sub.dropped and sub.writing and sub.waiting >= step:
                self.drop_slow(sub)

        async def write(sending: Awaitable[Any]) -> None:
            watch = loop.call_later(_STUCK_WRITE, stuck)
            try:
                await sending
            finally:
                watch.cancel()

        try:
            while True:
                sub.writing = False
                await sub.wake.wait()
                sub.writing = True
                sub.wake.clear()
                pending, sub.pending = sub.pending, []
                if not pending:
                    continue
                if not sub.batched:
                    for part in pending:
                        for i in range(0, len(part), step):
                            piece = part.slice(i, step)
                            await write(write_frames(ws, joined_frames([piece])))
                            sub.waiting -= len(piece)
                elif len(pending) > 1 or len(pending[0]) > 1:
                    batch = pending[0] if len(pending) == 1 else pa.concat_batches(pending)
                    for i in range(0, batch.num_rows, step):
                        piece = batch.slice(i, step)
                        await write(ws.send(batch_to_ipc(piece)))
                        sub.waiting -= piece.num_rows
                else:
                    # One event waiting: a plain message, as a plain peer would get it.
                    await write(write_frames(ws, joined_frames([plain_frames(pending[0])])))
                    sub.waiting -= 1
        except ConnectionClosed:
            pass

    def drop_slow(self, sub: Subscriber, why: str | None = None) -> None:
        """Drop a subscriber: more than ``live_queue`` events waiting, or ``why``."""
        if why is None:
            why = f"more than {self.live_queue} events were waiting to be sent"
        sub.dropped = True
        sub.pending.clear()
        if sub.sender is not None:
            sub.sender.cancel()
        self.log.warning("slow", "dropping live subscriber %s: %s", peer_name(sub.ws), why)
        self.tasks.spawn(self._close_slow(sub, why))

    async def _close_slow(self, sub: Subscriber, why: str) -> None:
        text = too_slow_message(why)
        try:
            await asyncio.wait_for(sub.ws.send(text), _SLOW_NOTICE_TIMEOUT)
        except Exception:  # timed out or already closed: the close below still ends it
            pass
        try:
            # Writing the close frame waits for the subscriber to read (flow control).
            await asyncio.wait_for(sub.ws.close(CLOSE_TOO_SLOW, TOO_SLOW), _SLOW_CLOSE_GRACE)
        except asyncio.TimeoutError:
            logger.warning("cutting off live subscriber %s: it read nothing for %s s", peer_name(sub.ws), _SLOW_CLOSE_GRACE)
            sub.ws.transport.abort()
