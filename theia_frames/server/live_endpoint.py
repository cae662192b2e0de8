"""The collector's ``/live`` endpoint (:class:`LiveEndpoint`, a part of
:class:`~theia_frames.server.collector.Collector`): subscribers, what each is sent, and
dropping the ones that fall behind.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from websockets.exceptions import ConnectionClosed

from ..protocol.arrow import (
    batch_to_ipc,
)
from .fanout import Subscriber
from .output import (
    ConnectionState,
    error_message,
    joined_frames,
    peer_name,
    plain_frames,
    pyarrow_module,
    write_frames,
)
from ..filter import EventFilter
from ..protocol.messages import OK

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
    """The ``/live`` endpoint of the collector: subscribers, what each is sent, and dropping the slow ones."""

    _live: tuple[Subscriber, ...]
    _log: Any
    _published: Any
    _subscribers: set[Subscriber]
    live_queue: Any
    if TYPE_CHECKING:  # defined by the Collector
        async def _read_filter(self, ws: ServerConnection, message: str | bytes | None=None) -> EventFilter | None: ...
        def _spawn(self, coro: Any) -> asyncio.Task[Any]: ...

    # ------------------------------------------------------------------ /live
    async def _on_live(self, ws: ServerConnection, batched: bool, state: ConnectionState) -> None:
        flt = await self._read_filter(ws)
        if flt is None:
            return
        state.watched = False  # a subscriber only listens
        sub = Subscriber(ws, flt, batched, self._published)
        # Registered before "ok": every event stored after the client reads "ok" is pushed.
        self._subscribers.add(sub)
        self._live = tuple(self._subscribers)
        try:
            await ws.send(OK)
            sub.sender = self._spawn(self._live_sender(sub))
            async for message in ws:
                flt = await self._read_filter(ws, message)
                if flt is None:
                    return
                sub.filter = flt
                await ws.send(OK)
        finally:
            self._subscribers.discard(sub)
            self._live = tuple(self._subscribers)
            if sub.sender is not None:
                sub.sender.cancel()

    def _deliver(self, parts: list[tuple[Subscriber, Any]]) -> None:
        """Hand a commit's matches (computed by the fan-out thread) to their subscribers (loop thread)."""
        for sub, part in parts:
            if sub.dropped or sub not in self._subscribers:
                continue
            if sub.waiting >= self.live_queue and sub.writing:
                # Over its bound while its sender is stuck writing (not merely not yet
                # woken: the fan-out may hand over several commits at once).
                self._drop_slow(sub)
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
                self._drop_slow(sub)

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
                    batch = pending[0] if len(pending) == 1 else pyarrow_module().concat_batches(pending)
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

    def _drop_slow(self, sub: Subscriber, why: str | None = None) -> None:
        """Drop a subscriber: more than ``live_queue`` events waiting, or ``why``."""
        if why is None:
            why = f"more than {self.live_queue} events were waiting to be sent"
        sub.dropped = True
        sub.pending.clear()
        if sub.sender is not None:
            sub.sender.cancel()
        self._log.warning("slow", "dropping live subscriber %s: %s", peer_name(sub.ws), why)
        self._spawn(self._close_slow(sub, why))

    async def _close_slow(self, sub: Subscriber, why: str) -> None:
        text = error_message(f"subscriber too slow: {why}; reconnect, and use /find for the events missed")
        try:
            await asyncio.wait_for(sub.ws.send(text), _SLOW_NOTICE_TIMEOUT)
        except Exception:  # timed out or already closed: the close below still ends it
            pass
        try:
            # Writing the close frame waits for the subscriber to read (flow control).
            await asyncio.wait_for(sub.ws.close(1013, "subscriber too slow"), _SLOW_CLOSE_GRACE)
        except asyncio.TimeoutError:
            logger.warning("cutting off live subscriber %s: it read nothing for %s s", peer_name(sub.ws), _SLOW_CLOSE_GRACE)
            sub.ws.transport.abort()
