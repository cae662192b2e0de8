"""Every error theia_frames raises, in one place.

Users catch these and nothing else: errors of the libraries underneath
(``websocket``, ``websockets``, ``sqlite3``, ``json``) are translated at the
boundary with ``raise ... from exc``.

The tree::

    TheiaError                      base of everything below
    ├── TransportError              the connection itself failed
    │   ├── ConnectError            could not connect; ``.reason`` says why (names the URL)
    │   │   └── HandshakeRefused    the server answered the handshake with an HTTP ``.status``
    │   │       └── AuthenticationError  the server refused our credentials (401/403)
    │   └── ConnectionClosed        dropped or abnormally closed mid-stream (``.code``)
    │       ├── SubscriberTooSlow   the collector dropped a /live subscriber
    │       │                       that did not keep up
    │       └── GaveUp              a live stream stopped reconnecting
    │                               (``.attempts``; the last failure is ``.cause``)
    ├── TheiaTimeoutError           also a built-in ``TimeoutError``
    ├── ServerError                 the server sent ``{"error": ...}``; carries its text
    ├── ProtocolError               the peer broke the wire protocol
    │   └── DecodeError             bytes that are not an event (offset, excerpt)
    ├── UsageError                  local misuse (also a ``ValueError``)
    │   ├── InvalidEventError       an event the format cannot carry
    │   └── InvalidFilterError      a filter that cannot be built
    ├── UnconfirmedError            delivery cannot be confirmed by this peer
    ├── StoreError                  the collector's event store failed (names the file)
    └── MissingDependencyError      an optional extra is not installed
                                    (also an ``ImportError``; names the extra)

Whose fault: ``ProtocolError`` and ``ServerError`` are the remote peer's,
``UsageError`` is the caller's, ``TransportError`` is the network's.
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "TheiaError",
    "TransportError",
    "ConnectError",
    "HandshakeRefused",
    "AuthenticationError",
    "ConnectionClosed",
    "SubscriberTooSlow",
    "GaveUp",
    "TheiaTimeoutError",
    "ServerError",
    "ProtocolError",
    "DecodeError",
    "UsageError",
    "InvalidEventError",
    "InvalidFilterError",
    "UnconfirmedError",
    "StoreError",
    "MissingDependencyError",
    "excerpt",
    "shorten",
]


def excerpt(data: bytes | bytearray | memoryview | str, offset: int = 0, width: int = 40) -> str:
    """A short printable excerpt of ``data`` starting near ``offset``.

    >>> excerpt(b"event: 10 5 5\\nid:x", 0, 8)
    "b'event: 1'..."
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "replace")
    chunk = bytes(data[max(offset, 0) : max(offset, 0) + width])
    more = "..." if len(data) > max(offset, 0) + width else ""
    return f"{chunk!r}{more}"


def shorten(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was: a peer's words
    in our errors and logs stay bounded.

    >>> shorten("x" * 500, 10)
    'xxxxxxxxxx... (500 characters)'
    """
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class TheiaError(Exception):
    """Base class of every error raised by theia_frames."""


class TransportError(TheiaError):
    """The connection to a theia peer failed."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


ConnectReason = Literal["refused", "unknown-host", "tls", "timeout", "handshake", "other"]


class ConnectError(TransportError):
    """Could not open a connection.

    ``.reason`` says why, as a word code reads instead of the message:
    ``"refused"`` (nothing listens there), ``"unknown-host"`` (the name does
    not resolve), ``"tls"``, ``"timeout"``, ``"handshake"`` (the server
    answered the WebSocket handshake with something else: :class:`HandshakeRefused`)
    or ``"other"``.
    """

    def __init__(self, message: str, *, url: str | None = None, reason: ConnectReason = "other") -> None:
        super().__init__(message, url=url)
        self.reason: ConnectReason = reason


class HandshakeRefused(ConnectError):
    """The server answered the WebSocket handshake with HTTP ``.status`` instead of 101."""

    def __init__(self, message: str, *, url: str | None = None, status: int) -> None:
        super().__init__(message, url=url, reason="handshake")
        self.status = status


class AuthenticationError(HandshakeRefused):
    """The server refused the connection's credentials (HTTP 401 or 403)."""


class ConnectionClosed(TransportError):
    """The connection dropped, or closed abnormally, before the stream ended."""

    def __init__(self, message: str, *, url: str | None = None, code: int | None = None) -> None:
        super().__init__(message, url=url)
        self.code = code


class SubscriberTooSlow(ConnectionClosed):
    """The collector disconnected a live subscriber that fell too far behind."""


class GaveUp(ConnectionClosed):
    """A live stream stopped reconnecting after ``.attempts`` failed attempts; ``.cause`` is the last failure."""

    def __init__(self, message: str, *, url: str | None = None, attempts: int, cause: BaseException | None) -> None:
        super().__init__(message, url=url, code=getattr(cause, "code", None))
        self.attempts = attempts
        self.cause = cause


class TheiaTimeoutError(TheiaError, TimeoutError):
    """An operation did not finish within its timeout."""


class ServerError(TheiaError):
    """The server answered with an error message; ``.text`` is its own words."""

    def __init__(self, text: str, *, url: str | None = None) -> None:
        where = f" ({url})" if url else ""
        super().__init__(f"server error{where}: {text}")
        self.text = text
        self.url = url


class ProtocolError(TheiaError):
    """The peer sent something the protocol does not allow."""


class DecodeError(ProtocolError, ValueError):
    """Bytes that cannot be decoded as an event.

    ``offset`` is the byte offset of the problem in the input and ``excerpt``
    a printable piece of the input around it.
    """

    def __init__(self, reason: str, data: bytes | bytearray | memoryview | str = b"", offset: int = 0) -> None:
        self.reason = reason
        self.offset = offset
        self.excerpt = excerpt(data, offset)
        super().__init__(f"{reason} at byte {offset}: {self.excerpt}")


class UsageError(TheiaError, ValueError):
    """The caller asked for something that cannot be done."""


class InvalidEventError(UsageError):
    """An event the wire format cannot carry (e.g. a newline in its source)."""


class InvalidFilterError(UsageError):
    """A filter with a bad value (invalid regex, end before start, ...)."""


class UnconfirmedError(TheiaError):
    """The peer cannot confirm delivery (a plain collector has no acknowledgements)."""


class StoreError(TheiaError):
    """The event store failed: a file that is not a store, a full disk, a closed store."""


class MissingDependencyError(TheiaError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, package: str, extra: str, feature: str) -> None:
        super().__init__(
            f"{feature} needs the optional package {package!r}; "
            f"install it with: pip install 'theia-frames[{extra}]'"
        )
        self.package = package
        self.extra = extra
