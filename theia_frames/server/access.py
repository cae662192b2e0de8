"""Who may connect to the collector (:class:`Admission`): its paths, credentials,
connection limits per server and per address, idle connections.
"""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .background import Tasks
from .output import ConnectionState, ThrottledLog, close_quietly, peer_address, peer_name
from ..protocol.messages import CHUNKS_PATH, CLOSE_REFUSED, PATHS
from ..protocol.count import COUNT_PATH

if TYPE_CHECKING:  # pragma: no cover
    from websockets.asyncio.server import ServerConnection
    from websockets.http11 import Request, Response

__all__ = [
    "ENDPOINTS",
    "Admission",
]


#: The paths served: the protocol's three, and the extension's :data:`~theia_frames.protocol.messages.CHUNKS_PATH` and :data:`~theia_frames.protocol.count.COUNT_PATH`.
ENDPOINTS = (*PATHS, CHUNKS_PATH, COUNT_PATH)


@dataclass(kw_only=True, eq=False)
class Admission:
    """Who may connect to the collector: credentials, connection limits, idle connections.

    ``token``: the bearer token every handshake must present (None: none needed);
    ``tasks``: where the watch over each connection runs; ``log``: where refusals go.
    It keeps the open connections (:attr:`connections`, on the loop thread).
    """

    token: str | None
    max_connections: int
    max_connections_per_address: int
    idle_timeout: float | None
    tasks: Tasks
    log: ThrottledLog
    connections: dict[ServerConnection, ConnectionState] = field(default_factory=dict, init=False)
    _per_address: dict[str, int] = field(default_factory=dict, init=False)

    def state(self, connection: ServerConnection, path: str) -> ConnectionState:
        """What is known of an admitted connection (registered at its handshake)."""
        state = self.connections.get(connection)
        if state is None:  # pragma: no cover - admitted connections are registered
            state = ConnectionState(peer_address(connection), path, asyncio.get_running_loop().time())
        return state

    def abort_all(self) -> None:
        """Cut off every open connection (a stop whose clients do not answer the close)."""
        for connection in list(self.connections):
            connection.transport.abort()

    def check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Answer the handshake: credentials first, then the path, then the connection limits."""
        try:
            return self._admit(connection, request)
        except Exception as exc:  # a bug must not become a traceback per connection
            self.log.warning("handshake", "refused %s: cannot read its handshake: %s", peer_name(connection), exc)
            return connection.respond(HTTPStatus.BAD_REQUEST, "cannot read this handshake\n")

    def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if self.token is not None:
            presented = request.headers.get_all("Authorization")
            if len(presented) > 1:
                self.log.info("auth", "refused %s: %d Authorization headers", peer_name(connection), len(presented))
                return connection.respond(HTTPStatus.BAD_REQUEST, "more than one Authorization header\n")
            if not presented:
                self.log.info("auth", "refused %s: no credentials", peer_name(connection))
                response = connection.respond(HTTPStatus.UNAUTHORIZED, "this collector needs a bearer token\n")
                response.headers["WWW-Authenticate"] = 'Bearer realm="theia"'
                return response
            scheme, _, value = presented[0].partition(" ")
            expected = self.token.encode()
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode("utf-8", "replace"), expected):
                self.log.info("auth", "refused %s: wrong credentials", peer_name(connection))
                return connection.respond(HTTPStatus.FORBIDDEN, "wrong bearer token\n")
        if path not in ENDPOINTS:
            self.log.info("path", "refused %s: unknown path %r", peer_name(connection), path[:100])
            return connection.respond(
                HTTPStatus.NOT_FOUND, f"unknown path: this collector serves {', '.join(ENDPOINTS)}\n"
            )
        address = peer_address(connection)
        if len(self.connections) >= self.max_connections:
            self.log.warning("full", "refused %s: %d connections open (the limit)", peer_name(connection), self.max_connections)
            return connection.respond(
                HTTPStatus.SERVICE_UNAVAILABLE, f"too many connections (this collector serves {self.max_connections})\n"
            )
        if self._per_address.get(address, 0) >= self.max_connections_per_address:
            self.log.warning(
                "full-address", "refused %s: %d connections open from %s (the limit)",
                peer_name(connection), self.max_connections_per_address, address,
            )
            return connection.respond(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"too many connections from {address} (this collector serves {self.max_connections_per_address} per address)\n",
            )
        self.connections[connection] = ConnectionState(address, path, asyncio.get_running_loop().time())
        self._per_address[address] = self._per_address.get(address, 0) + 1
        self.tasks.spawn(self._forget_when_closed(connection))
        return None

    async def _forget_when_closed(self, connection: ServerConnection) -> None:
        try:
            await connection.wait_closed()
        finally:
            state = self.connections.pop(connection, None)
            if state is not None:
                left = self._per_address.get(state.address, 1) - 1
                if left > 0:
                    self._per_address[state.address] = left
                else:
                    self._per_address.pop(state.address, None)

    async def close_idle(self) -> None:
        """Close connections that sent nothing for ``idle_timeout`` seconds (one sweep every
        few seconds; returns at once when there is no such limit)."""
        idle = self.idle_timeout
        if idle is None:
            return
        loop = asyncio.get_running_loop()
        every = min(idle / 4, 5.0)
        while True:
            await asyncio.sleep(every)
            now = loop.time()
            for connection, state in list(self.connections.items()):
                if not state.watched or now - state.last < idle:
                    continue
                state.watched = False
                self.log.info("idle", "closing %s on %s: nothing received for %s s", peer_name(connection), state.path, idle)
                self.tasks.spawn(close_quietly(connection, CLOSE_REFUSED, f"idle for more than {idle:g} s"))
