"""The filters a collector's peers send (:class:`FilterReader`): parsed and compiled on
worker threads, within the limits on patterns, and a bad one answered with what is
wrong with it and a close.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..exceptions import InvalidFilterError, shorten
from ..filter import EventFilter
from ..protocol.messages import CLOSE_REFUSED, error_message
from .output import ThrottledLog, peer_name

if TYPE_CHECKING:  # pragma: no cover
    from websockets.asyncio.server import ServerConnection

__all__ = ["FilterReader"]


@dataclass(kw_only=True, eq=False)
class FilterReader:
    """How the collector's endpoints read a peer's filter.

    ``kind`` is the class of the filters built (:class:`~theia_frames.filter.EventFilter`
    or a subclass of it); patterns are compiled with RE2, at most ``max_patterns`` of
    them, none longer than ``max_pattern_size`` bytes. Filters are built on ``pool``'s
    threads, never on the event loop: a large pattern takes a while.
    """

    pool: Executor
    log: ThrottledLog
    max_patterns: int
    max_pattern_size: int
    kind: type[EventFilter] = EventFilter

    def build(self, message: str | bytes) -> EventFilter:
        """A filter from the network, within the limits on patterns (a worker thread)."""
        return self.kind.from_json(
            message, engine="re2", max_patterns=self.max_patterns, max_pattern_size=self.max_pattern_size
        )

    async def read(self, ws: ServerConnection, message: str | bytes | None = None) -> EventFilter | None:
        """The client's filter (its next message, unless ``message`` is given), or None
        after telling the client what is wrong with it and closing the connection."""
        if message is None:
            message = await ws.recv()
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, self.build, message)
        except InvalidFilterError as exc:
            self.log.info("filter", "%s sent a bad filter: %s", peer_name(ws), shorten(str(exc)))
            await ws.send(error_message(str(exc)))
            await ws.close(CLOSE_REFUSED, "invalid filter")
            return None
