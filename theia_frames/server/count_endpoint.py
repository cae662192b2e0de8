"""The collector's ``/count`` endpoint (:class:`CountEndpoint`): a count request in, the counts of the
stored events that match its filter out, as one message (see :mod:`theia_frames.protocol.count`).

The stored chunks are read through the store's :meth:`~theia_frames.server.store.EventStore.scan`
(its checks, ``/find``'s matching), in the columns counted and those the filter reads alone,
and counted where they are: only the small answer crosses the network. For a count of time
alone, a chunk inside the time range is counted without reading it when its index row is
enough (ungrouped, its events in one slot) or from its summary (a grain of whole seconds, or
none: :mod:`~theia_frames.server.summaries`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..exceptions import UsageError
from ..protocol.count import COUNT_PATH, MAX_COUNT_REPLY, Counter, count_reply, parse_count_request
from ..protocol.messages import CLOSE_NORMAL, CLOSE_REFUSED, error_message
from .find_endpoint import ExtensionEndpoint
from .query import Queries
from .summaries import summary_counting

if TYPE_CHECKING:  # pragma: no cover
    from websockets.asyncio.server import ServerConnection

__all__ = ["CountEndpoint"]


@dataclass(kw_only=True, eq=False)
class CountEndpoint(ExtensionEndpoint):
    """The ``/count`` endpoint of the collector: the store scanned, the scan counted among
    the running ``queries`` (a stop cancels it), at most ``max_groups`` (time slot, group)
    pairs in an answer."""

    path = COUNT_PATH
    queries: Queries
    max_groups: int

    async def answer(self, ws: ServerConnection) -> None:
        """A count request in, ``{"counted": ...}`` (or ``{"error": ...}``) out, then a normal close."""
        message = await ws.recv()
        try:
            request = parse_count_request(message)
        except UsageError as exc:
            await ws.send(error_message(str(exc)))
            await ws.close(CLOSE_REFUSED, "invalid count request")
            return
        flt = await self.filters.read(ws, request.filter)
        if flt is None:
            return
        store, pool = self.store, self.pool
        # the stored chunks in the columns counted and those the filter reads, matched as /find matches
        fields = ["timestamp"] + ([] if request.by is None else ["source" if request.by == "source" else "tags"])
        counter = Counter(request.grain, request.by, self.max_groups, spans=request.spans)
        # a chunk inside the range of a time-only count is counted from its index row (its events all
        # in one slot, ungrouped) or its summary (a grain of whole seconds), else read
        results: Any = store.scan(flt, fields, taken=counter.add_span, summarized=summary_counting(counter))  # a Results: cancel(), close()
        self.queries.add(results)

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
                await ws.close(CLOSE_REFUSED, "count refused")
                return
        finally:
            gone.cancel()
            await loop.run_in_executor(pool, results.close)
            self.queries.discard(results)
        await ws.send(reply)
        await ws.close(CLOSE_NORMAL)
