"""What both clients share besides the protocol core: their option table, and the policies
around a connection that are not I/O.

- :class:`ClientSettings` is the option table: its fields are the keyword
  arguments of both clients (:class:`SyncSettings` adds websocket-client's
  ``sslopt`` for the sync one), checked and normalised in one place;
  :data:`CLIENT_OPTIONS` is derived from it.
- :func:`base_url`, :func:`header_lines`, :func:`token_header`, :func:`tls_context`:
  the collector URL, the handshake's header lines, TLS.
- :func:`connect_error` and :func:`handshake_error`: what a failed connection
  means (each transport only says which kind of failure its library reported).
- :func:`lacks_endpoint`, :func:`chunks_answer`: reading the answer to a one-question
  request (``/chunks``; ``/count`` is read by :func:`~theia_frames.protocol.count.count_answer`).
- :func:`events_to_send`, :func:`data_close_error`, :func:`unconfirmed_error`,
  :func:`flush_timeout_error`: the rules of sending both clients follow.

>>> base_url("127.0.0.1:6433/find")
'ws://127.0.0.1:6433'
>>> token_header("s3cret", None)
['Authorization: Bearer s3cret']
>>> handshake_error("ws://h/find", 401, "Client").status
401
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa

from ..checks import positive_int, positive_seconds
from ..event import Event
from ..exceptions import (
    AuthenticationError,
    ConnectError,
    ConnectionClosed,
    ConnectReason,
    HandshakeRefused,
    ProtocolError,
    ServerError,
    TheiaError,
    TheiaTimeoutError,
    UnconfirmedError,
    UsageError,
)
from ..frames.events_table import to_event_table
from ..protocol.arrow import SUBPROTOCOL
from ..protocol.messages import MAX_CHUNK_ENTRIES, PATHS, error_text, parse_chunks_reply

__all__ = [
    "DEFAULT_URL",
    "DEFAULT_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_FRAGMENTS",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_BACKOFF",
    "DEFAULT_MAX_BACKOFF",
    "DEFAULT_RESUME_MARGIN",
    "MAX_CHUNKS_REPLY",
    "UNSET",
    "CLIENT_OPTIONS",
    "ClientSettings",
    "SyncSettings",
    "split_client_options",
    "base_url",
    "header_lines",
    "token_header",
    "tls_context",
    "connect_error",
    "handshake_error",
    "lacks_endpoint",
    "chunks_answer",
    "events_to_send",
    "data_close_error",
    "unconfirmed_error",
    "flush_timeout_error",
    "closed_client_error",
]

DEFAULT_URL = "ws://127.0.0.1:6433"
#: Seconds to connect, to send one message, and to wait for the answer to a filter.
DEFAULT_TIMEOUT = 10.0
#: Seconds without a byte after which a ``/find`` on a server that never closes is complete.
DEFAULT_IDLE_TIMEOUT = 3.0
#: The largest message (bytes, all its fragments together) the client accepts from a server.
#: Our collector's messages are far smaller unless its events are large.
DEFAULT_MAX_MESSAGE_SIZE = 256 * 1024 * 1024
#: The most frames one message may arrive in (neither real peer fragments its messages).
DEFAULT_MAX_FRAGMENTS = 10_000
#: The most events per record batch: built from plain messages received, and per Arrow message sent.
DEFAULT_BATCH_SIZE = 10_000
#: Seconds a reconnecting live stream waits before its first attempt; doubled after each failure.
DEFAULT_BACKOFF = 0.05
#: The longest wait between two reconnection attempts, in seconds.
DEFAULT_MAX_BACKOFF = 2.0
#: Seconds before the last timestamp seen from which a reconnected stream fetches what it missed.
DEFAULT_RESUME_MARGIN = 5.0
#: Bytes of the answer to a ``/chunks`` request read at most (MAX_CHUNK_ENTRIES entries of three numbers).
MAX_CHUNKS_REPLY = MAX_CHUNK_ENTRIES * 80 + 64


class Unset:
    """The default of an argument left out: "use the client's setting" (its repr says so)."""

    def __repr__(self) -> str:
        return "<the client's setting>"


UNSET: Any = Unset()


# --------------------------------------------------------------------------- the option table


@dataclass(eq=False, repr=False)
class ClientSettings:
    """The settings both clients take: the fields are the table, checked and normalised here
    (see :class:`~theia_frames.client.Client` for their meanings).

    >>> ClientSettings("127.0.0.1:6433", token="s3cret").header_lines
    ['Authorization: Bearer s3cret']
    >>> ClientSettings(batch_size=0)
    Traceback (most recent call last):
    ...
    theia_frames.exceptions.UsageError: batch_size must be a positive whole number, got 0
    """

    url: str = DEFAULT_URL
    _: KW_ONLY
    timeout: float | None = DEFAULT_TIMEOUT
    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT
    headers: Mapping[str, str] | Sequence[str] | None = None
    token: str | None = None
    ssl_context: ssl.SSLContext | None = None
    cafile: str | os.PathLike[str] | None = None
    batch: bool = True
    strict: bool = False
    batch_size: int = DEFAULT_BATCH_SIZE
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    max_fragments: int = DEFAULT_MAX_FRAGMENTS
    #: the extra handshake header lines (credentials included)
    header_lines: list[str] = field(init=False)
    #: the TLS context of a ``wss://`` URL given ``ssl_context`` or ``cafile`` (None: the system's)
    tls: ssl.SSLContext | None = field(init=False)

    def __post_init__(self) -> None:
        self.url = base_url(self.url)
        self.timeout = positive_seconds("timeout", self.timeout, none_ok=True)
        self.idle_timeout = positive_seconds("idle_timeout", self.idle_timeout, none_ok=True)
        self.batch_size = positive_int("batch_size", self.batch_size)
        self.max_message_size = positive_int("max_message_size", self.max_message_size)
        self.max_fragments = positive_int("max_fragments", self.max_fragments)
        self.batch = bool(self.batch)
        self.strict = bool(self.strict)
        self.header_lines = header_lines(self.headers) + token_header(self.token, self.headers)
        self.tls = tls_context(self.url, self.ssl_context, self.cafile)


@dataclass(eq=False, repr=False)
class SyncSettings(ClientSettings):
    """:class:`ClientSettings` and websocket-client's own TLS options (``sslopt``), the sync client's.

    ``sslopt`` is kept as websocket-client takes it: the given options, with
    the context of ``ssl_context``/``cafile`` as ``"context"``.
    """

    _: KW_ONLY
    sslopt: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tls is not None:
            self.sslopt = {**dict(self.sslopt or {}), "context": self.tls}
        elif self.sslopt is not None:
            self.sslopt = dict(self.sslopt)


#: the keyword arguments of :class:`~theia_frames.Client` (AsyncClient takes them but ``sslopt``)
CLIENT_OPTIONS = frozenset(f.name for f in fields(SyncSettings) if f.init and f.name != "url")


def split_client_options(kw: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``kw`` as (the client's keyword arguments, the others)."""
    return {k: v for k, v in kw.items() if k in CLIENT_OPTIONS}, {k: v for k, v in kw.items() if k not in CLIENT_OPTIONS}


def base_url(url: str) -> str:
    """The collector's base URL: scheme ws/wss, no trailing slash, no endpoint path."""
    if not isinstance(url, str) or not url.strip():
        raise UsageError(f"a collector URL must be a non-empty string like {DEFAULT_URL!r}, got {url!r}")
    url = url.strip()
    if "://" not in url:
        url = "ws://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise UsageError(f"a collector URL must start with ws:// or wss://, got {url!r}")
    if not parts.hostname:
        raise UsageError(f"a collector URL needs a host, got {url!r}")
    path = parts.path.rstrip("/")
    for endpoint in PATHS:
        if path.endswith(endpoint):
            path = path[: -len(endpoint)]
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def header_lines(headers: Mapping[str, str] | Sequence[str] | None) -> list[str]:
    """Extra handshake headers as ``"Name: value"`` lines."""
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        return [f"{k}: {v}" for k, v in headers.items()]
    return [str(h) for h in headers]


def token_header(token: str | None, headers: Mapping[str, str] | Sequence[str] | None) -> list[str]:
    """The ``Authorization`` line of ``token`` (none without one)."""
    if token is None:
        return []
    if not isinstance(token, str) or not token or any(c in token for c in "\r\n"):
        raise UsageError("token must be a non-empty string on one line")
    if any(line.split(":", 1)[0].strip().lower() == "authorization" for line in header_lines(headers)):
        raise UsageError("give either token= or an Authorization header, not both")
    return [f"Authorization: Bearer {token}"]


def tls_context(url: str, ssl_context: ssl.SSLContext | None, cafile: str | os.PathLike[str] | None) -> ssl.SSLContext | None:
    """The TLS context that verifies a ``wss://`` server for ``ssl_context`` or ``cafile``
    (None when neither is given: the system's trusted certificates)."""
    if ssl_context is None and cafile is None:
        return None
    if not url.startswith("wss://"):
        raise UsageError(f"ssl_context and cafile are for wss:// URLs; {url!r} is not encrypted")
    if ssl_context is not None and cafile is not None:
        raise UsageError("give either ssl_context or cafile, not both (load the file into the context)")
    if ssl_context is not None:
        if not isinstance(ssl_context, ssl.SSLContext):
            raise UsageError(f"ssl_context must be an ssl.SSLContext, got {type(ssl_context).__name__}")
        return ssl_context
    assert cafile is not None
    path = os.fspath(cafile)
    try:
        return ssl.create_default_context(cafile=path)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise UsageError(f"cannot load the CA file {path!r}: {exc}") from exc


# --------------------------------------------------------------------------- a failed connection


def connect_error(url: str, reason: ConnectReason, detail: object = "", *, timeout: float | None = None) -> TheiaError:
    """The error for a connection to ``url`` that failed for ``reason`` (``detail``: the library's words).

    A handshake that did not finish in time is a
    :class:`~theia_frames.exceptions.TheiaTimeoutError`; every other failure a
    :class:`~theia_frames.exceptions.ConnectError` whose ``.reason`` is ``reason``.

    >>> connect_error("ws://h/find", "refused")
    ConnectError('connection refused by ws://h/find (is a collector running there?)')
    >>> connect_error("ws://h/find", "unknown-host", "Name or service not known").reason
    'unknown-host'
    """
    if reason == "timeout":
        return TheiaTimeoutError(f"timed out after {timeout} s connecting to {url} (the handshake did not finish)")
    if reason == "refused":
        text = f"connection refused by {url} (is a collector running there?)"
    elif reason == "unknown-host":
        text = f"cannot resolve the host of {url}: {detail}"
    elif reason == "tls":
        text = f"TLS handshake with {url} failed: {detail}"
    else:
        text = f"cannot connect to {url}: {detail}"
    return ConnectError(text, url=url, reason=reason)


def handshake_error(url: str, status: int, client: str) -> HandshakeRefused:
    """The error for a server at ``url`` that answered the WebSocket handshake with HTTP ``status``:
    :class:`~theia_frames.exceptions.AuthenticationError` for 401 and 403 (``client``, the class
    name, says where the token goes), :class:`~theia_frames.exceptions.HandshakeRefused` otherwise."""
    if status == 401:
        return AuthenticationError(
            f"{url} refused the WebSocket handshake with HTTP status 401: it needs credentials ({client}(..., token=...))",
            url=url,
            status=401,
        )
    if status == 403:
        return AuthenticationError(
            f"{url} refused the WebSocket handshake with HTTP status 403: it refused the credentials", url=url, status=403
        )
    return HandshakeRefused(f"{url} refused the WebSocket handshake with HTTP status {status}", url=url, status=status)


def lacks_endpoint(exc: ConnectError) -> bool:
    """Whether a failed connection to an extension's path means the peer does not have it
    (it answered the handshake with an HTTP status other than 401/403)."""
    return isinstance(exc, HandshakeRefused) and not isinstance(exc, AuthenticationError)


# --------------------------------------------------------------------------- replies


def chunks_answer(answer: bytes | str | None, url: str) -> list[tuple[float, float, int]]:
    """The layout a collector answered on ``/chunks`` at ``url`` (see
    :func:`~theia_frames.protocol.messages.parse_chunks_reply`); its error answer raises
    :class:`~theia_frames.exceptions.ServerError`, anything else
    :class:`~theia_frames.exceptions.ProtocolError`.

    >>> chunks_answer('{"chunks": [[1.0, 2.0, 3]]}', "ws://h/chunks")
    [(1.0, 2.0, 3)]
    """
    if answer is None:
        raise ConnectionClosed(f"{url} closed the connection before answering", url=url)
    text = error_text(answer)
    if text is not None:
        raise ServerError(text, url=url)
    entries = parse_chunks_reply(answer)
    if entries is None:
        raise ProtocolError(f"{url} answered its layout request with {str(answer)[:80]!r}")
    return entries


# --------------------------------------------------------------------------- sending


def events_to_send(
    events: Iterable[Event] | pa.RecordBatch | pa.Table | Any,
    columns: Mapping[str, str] | None,
    time_format: str | Sequence[str] | None,
    tz: Any,
) -> Iterable[Event] | pa.RecordBatch | pa.Table:
    """What ``send_many`` sends of ``events``: one event as a list, a frame (pandas,
    Polars, Arrow, or anything with ``columns``/``time_format``/``tz``) as an event table
    (:func:`~theia_frames.frames.events_table.to_event_table`), other iterables as they are."""
    if isinstance(events, Event):
        return [events]
    if columns is not None or time_format is not None or tz is not None or type(events).__module__.split(".")[0] in (
        "pandas",
        "polars",
        "pyarrow",
    ):
        return to_event_table(events, columns=columns, time_format=time_format, tz=tz)
    return events


def data_close_error(url: str, code: int | None, reason: str) -> ConnectionClosed:
    """The error for an ``/event`` connection the server closed because of what was sent."""
    why = f" ({reason})" if reason else ""
    return ConnectionClosed(
        f"{url} closed the connection with code {code}{why}; events sent before may not have been stored",
        url=url,
        code=code,
    )


def unconfirmed_error(url: str, batch: bool) -> UnconfirmedError:
    """The error of a flush on an ``/event`` connection that cannot confirm (no batched transfer)."""
    return UnconfirmedError(
        f"{url} cannot confirm that events were stored: the /event connection did not "
        f"negotiate {SUBPROTOCOL} (a plain or upstream collector{', or batch=False' if not batch else ''}), "
        "and the plain protocol has no acknowledgement"
    )


def flush_timeout_error(url: str, timeout: float | None, unconfirmed: int) -> TheiaTimeoutError:
    """The error of a flush not confirmed within ``timeout`` seconds."""
    return TheiaTimeoutError(
        f"{url}/event did not confirm the flush within {timeout} s "
        f"({unconfirmed} event(s) not confirmed yet; flush again to keep waiting)"
    )


def closed_client_error(url: str) -> UsageError:
    """The error of a call on a closed client."""
    return UsageError(f"this client of {url} is closed")
