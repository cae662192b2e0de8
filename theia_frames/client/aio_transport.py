"""The asyncio client's transport: ``websockets``' asyncio connections, and the
one table that maps ``websockets``' errors to this project's (:func:`open_error`
when connecting, :func:`closed_error` when a connection ends).

Reads count silence from the last byte received (:func:`recv`), not the last
message, as the sync client's transport does.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Awaitable
from typing import Any

from ..exceptions import ProtocolError, TheiaError
from .options import connect_error, handshake_error

import websockets.asyncio.client
import websockets.exceptions
from websockets.asyncio.client import ClientConnection

__all__ = [
    "Silence",
    "open_error",
    "closed_error",
    "ended_code",
    "connection_class",
    "within",
    "recv",
    "recv_raising",
    "close",
    "CLOSE_WAIT",
]

# seconds a close waits for the server's close frame
CLOSE_WAIT = 2.0


class Silence(Exception):
    """No byte arrived within the wait (internal; callers decide what it means)."""


# --------------------------------------------------------------------------- the error table


def open_error(exc: BaseException, url: str, timeout: float | None) -> TheiaError:
    """The error of this project for a failed ``websockets`` connect to ``url``.

    >>> open_error(ConnectionRefusedError(), "ws://h/find", 10)
    ConnectError('connection refused by ws://h/find (is a collector running there?)')
    """
    ws = websockets
    if isinstance(exc, ws.exceptions.InvalidStatus):
        return handshake_error(url, exc.response.status_code, "AsyncClient")
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return connect_error(url, "timeout", timeout=timeout)
    if isinstance(exc, ConnectionRefusedError):
        return connect_error(url, "refused")
    if isinstance(exc, ssl.SSLError):
        return connect_error(url, "tls", exc)
    if isinstance(exc, socket.gaierror):
        return connect_error(url, "unknown-host", exc)
    return connect_error(url, "other", exc)


def closed_error(exc: BaseException, url: str, max_message_size: int) -> ProtocolError | None:
    """The error to raise for a connection ``websockets`` closed on our side because
    of what the server sent (a message over the bound, a protocol violation); None otherwise."""
    ws = websockets
    if not isinstance(exc, ws.exceptions.ConnectionClosed):
        return None
    sent = exc.sent
    if sent is not None and (exc.rcvd is None or not exc.rcvd_then_sent):
        if sent.code == 1009:
            return ProtocolError(
                f"{url} sent a message of more than {max_message_size} bytes, the client's bound "
                "(AsyncClient(max_message_size=...) raises it)"
            )
        if sent.code in (1002, 1007):
            return ProtocolError(f"{url} broke the WebSocket protocol: {sent.reason or sent.code}")
    return None


def ended_code(exc: BaseException) -> tuple[int, str]:
    """The close code and reason the server sent (1006 when it sent none)."""
    rcvd = getattr(exc, "rcvd", None)
    if rcvd is None:
        return 1006, ""
    return rcvd.code, rcvd.reason


class TimedConnection(websockets.asyncio.client.ClientConnection):
    """``websockets``' client connection, noting when the last byte arrived."""

    last_bytes = 0.0

    def data_received(self, data: bytes) -> None:
        self.last_bytes = time.monotonic()
        super().data_received(data)


def connection_class() -> type[ClientConnection]:
    """The connection class the client connects with (:class:`TimedConnection`)."""
    return TimedConnection


async def within(awaitable: Awaitable[Any], seconds: float | None) -> Any:
    """``await awaitable``, raising :class:`TimeoutError` after ``seconds``."""
    timeout = getattr(asyncio, "timeout", None)
    if timeout is None:  # Python 3.10
        return await asyncio.wait_for(awaitable, seconds)
    async with timeout(seconds):
        return await awaitable


async def recv(ws: Any, wait: float | None, *, idle: bool = True) -> bytes | str | None:
    """The next message; None once the connection ended; :class:`Silence` after
    ``wait`` seconds without a byte (``idle=False``: in all)."""
    try:
        return await recv_raising(ws, wait, idle=idle)
    except websockets.exceptions.ConnectionClosed:
        return None


async def recv_raising(ws: Any, wait: float | None, *, idle: bool = True) -> bytes | str:
    """As :func:`recv`, raising ``websockets``' ConnectionClosed at the end (its ``rcvd`` tells the close)."""
    if wait is None:
        return await ws.recv()  # type: ignore[no-any-return]
    start = time.monotonic()
    remaining = wait
    while True:
        try:
            return await within(ws.recv(), remaining)  # type: ignore[no-any-return]  # cancelling recv() loses nothing
        except (TimeoutError, asyncio.TimeoutError):
            last = max(ws.last_bytes, start) if idle else start
            remaining = last + wait - time.monotonic()
            if remaining <= 0:
                raise Silence() from None


async def close(ws: Any) -> None:
    try:
        await within(ws.close(), CLOSE_WAIT)
    except Exception:
        ws.transport.abort()
