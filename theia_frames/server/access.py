"""Who may connect to the collector (:class:`Admission`, a part of
:class:`~theia_frames.server.collector.Collector`): its paths, credentials, connection
limits per server and per address, idle connections.
"""

from __future__ import annotations

import asyncio
import hmac
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .output import ConnectionState, close_quietly, peer_address, peer_name
from ..protocol.messages import CHUNKS_PATH
from ..protocol.count import COUNT_PATH

if TYPE_CHECKING:  # pragma: no cover
    from websockets.asyncio.server import ServerConnection
    from websockets.http11 import Request, Response

__all__ = [
    "ENDPOINTS",
    "Admission",
]



#: The paths served: the protocol's three, and the extension's :data:`~theia_frames.protocol.messages.CHUNKS_PATH` and :data:`~theia_frames.protocol.count.COUNT_PATH`.
ENDPOINTS = ("/event", "/find", "/live", CHUNKS_PATH, COUNT_PATH)


class Admission:
    """Who may connect to the collector: credentials, connection limits, idle connections."""

    _connections: dict[ServerConnection, ConnectionState]
    _log: Any
    _per_address: dict[str, int]
    _token: Any
    idle_timeout: Any
    max_connections: Any
    max_connections_per_address: Any
    if TYPE_CHECKING:  # defined by the Collector
        @property
        def _loop(self) -> asyncio.AbstractEventLoop | None: ...
        def _spawn(self, coro: Any) -> asyncio.Task[Any]: ...

    # ------------------------------------------------------------------ admission
    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Answer the handshake: credentials first, then the path, then the connection limits."""
        try:
            return self._admit(connection, request)
        except Exception as exc:  # a bug must not become a traceback per connection
            self._log.warning("handshake", "refused %s: cannot read its handshake: %s", peer_name(connection), exc)
            return connection.respond(HTTPStatus.BAD_REQUEST, "cannot read this handshake\n")

    def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if self._token is not None:
            presented = request.headers.get_all("Authorization")
            if len(presented) > 1:
                self._log.info("auth", "refused %s: %d Authorization headers", peer_name(connection), len(presented))
                return connection.respond(HTTPStatus.BAD_REQUEST, "more than one Authorization header\n")
            if not presented:
                self._log.info("auth", "refused %s: no credentials", peer_name(connection))
                response = connection.respond(HTTPStatus.UNAUTHORIZED, "this collector needs a bearer token\n")
                response.headers["WWW-Authenticate"] = 'Bearer realm="theia"'
                return response
            scheme, _, value = presented[0].partition(" ")
            expected = self._token.encode()
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode("utf-8", "replace"), expected):
                self._log.info("auth", "refused %s: wrong credentials", peer_name(connection))
                return connection.respond(HTTPStatus.FORBIDDEN, "wrong bearer token\n")
        if path not in ENDPOINTS:
            self._log.info("path", "refused %s: unknown path %r", peer_name(connection), path[:100])
            return connection.respond(
                HTTPStatus.NOT_FOUND, f"unknown path: this collector serves {', '.join(ENDPOINTS)}\n"
            )
        address = peer_address(connection)
        if len(self._connections) >= self.max_connections:
            self._log.warning("full", "refused %s: %d connections open (the limit)", peer_name(connection), self.max_connections)
            return connection.respond(
                HTTPStatus.SERVICE_UNAVAILABLE, f"too many connections (this collector serves {self.max_connections})\n"
            )
        if self._per_address.get(address, 0) >= self.max_connections_per_address:
            self._log.warning(
                "full-address", "refused %s: %d connections open from %s (the limit)",
                peer_name(connection), self.max_connections_per_address, address,
            )
            return connection.respond(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"too many connections from {address} (this collector serves {self.max_connections_per_address} per address)\n",
            )
        assert self._loop is not None
        self._connections[connection] = ConnectionState(address, path, self._loop.time())
        self._per_address[address] = self._per_address.get(address, 0) + 1
        self._spawn(self._forget_when_closed(connection))
        return None

    async def _forget_when_closed(self, connection: ServerConnection) -> None:
        try:
            await connection.wait_closed()
        finally:
            state = self._connections.pop(connection, None)
            if state is not None:
                left = self._per_address.get(state.address, 1) - 1
                if left > 0:
                    self._per_address[state.address] = left
                else:
                    self._per_address.pop(state.address, None)

    async def _close_idle(self) -> None:
        """Close connections that sent nothing for ``idle_timeout`` seconds (one sweep every few seconds)."""
        idle = self.idle_timeout
        assert idle is not None and self._loop is not None
        every = min(idle / 4, 5.0)
        while True:
            await asyncio.sleep(every)
            now = self._loop.time()
            for connection, state in list(self._connections.items()):
                if not state.watched or now - state.last < idle:
                    continue
                state.watched = False
                self._log.info("idle", "closing %s on %s: nothing received for %s s", peer_name(connection), state.path, idle)
                self._spawn(close_quietly(connection, 1008, f"idle for more than {idle:g} s"))
