"""The collector's ``/count`` endpoint (:class:`CountEndpoint`, a part of
:class:`~theia_frames.server.collector.Collector`): a count request in, the counts of the
stored events that match its filter out, as one message (see :mod:`theia_frames.protocol.count`).

The stored chunks are read through the store's :meth:`~theia_frames.server.store.EventStore.scan`
(its checks, ``/find``'s matching), in the columns counted and those the filter reads alone,
and counted where they are: only the small answer crosses the network.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ..exceptions import UsageError
from ..filter import EventFilter
from ..protocol.arrow import SUBPROTOCOL
from ..protocol.count import COUNT_PATH, MAX_COUNT_REPLY, Counter, count_reply, parse_count_request
from .output import error_message
from .store import EventStore

if TYPE_CHECKING:  # pragma: no cover
    from websockets.asyncio.server import ServerConnection

__all__ = ["CountEndpoint"]


class CountEndpoint:
    """The ``/count`` endpoint of the collector."""

    _pool: ThreadPoolExecutor | None
    _queries: set[Any]
    max_groups: int
    store: EventStore | None
    if TYPE_CHECKING:  # defined by the Collector
        async def _read_filter(self, ws: ServerConnection, message: str | bytes | None = None) -> EventFilter | None: ...

    async def _on_count(self, ws: ServerConnection, batched: bool) -> None:
        """A count request in, ``{"counted": ...}`` (or ``{"error": ...}``) out, then a normal close."""
        if not batched:
            await ws.send(error_message(f"{COUNT_PATH} is part of the {SUBPROTOCOL} extension: offer that subprotocol"))
            await ws.close(1008, "extension not negotiated")
            return
        message = await ws.recv()
        try:
            request = parse_count_request(message)
        except UsageError as exc:
            await ws.send(error_message(str(exc)))
            await ws.close(1008, "invalid count request")
            return
        flt = await self._read_filter(ws, request.filter)
        if flt is None:
            return
        store, pool = self.store, self._pool
        assert store is not None and pool is not None
        # the stored chunks in the columns counted and those the filter reads, matched as /find matches
        fields = ["timestamp"] + ([] if request.by is None else ["source" if request.by == "source" else "tags"])
        counter = Counter(request.grain, request.by, self.max_groups)
        # a chunk of a time-only count whose events all fall in one slot is counted from its index row
        results: Any = store.scan(flt, fields, taken=counter.add_span)  # a Results: cancel(), close()
        self._queries.add(results)

        def count() -> str:
            for batch in results:
                counter.add(batch)
            reply = count_reply(counter.result())
            if len(reply.encode("utf-8")) > MAX_COUNT_REPLY:
                raise UsageError(f"count refused: its answer would take more than {MAX_COUNT_REPLY:,} bytes")
            return reply

        loop = asyncio.get_running_loop()
        gone = loop.create_task(ws.wait_closed())
        job = loop.run_in_executor(pool, count)
        try:
            await asyncio.wait((job, gone), return_when=asyncio.FIRST_COMPLETED)
            if not job.done():
                results.cancel()  # the client left: the count ends at its next chunk
                await asyncio.gather(job, return_exceptions=True)
                return
            try:
                reply = job.result()
            except UsageError as exc:
                await ws.send(error_message(str(exc)))
                await ws.close(1008, "count refused")
                return
        finally:
            gone.cancel()
            await loop.run_in_executor(pool, results.close)
            self._queries.discard(results)
        await ws.send(reply)
        await ws.close(1000)
