"""The settings both clients share: defaults, the collector URL, credentials, TLS.

>>> base_url("127.0.0.1:6433/find")
'ws://127.0.0.1:6433'
>>> token_header("s3cret", None)
['Authorization: Bearer s3cret']
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping, Sequence
from typing import Any, Union
from urllib.parse import urlsplit, urlunsplit

from ..exceptions import UsageError
from ..filter import EventFilter

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
    "FilterLike",
    "UNSET",
    "CLIENT_OPTIONS",
    "base_url",
    "header_lines",
    "token_header",
    "tls_options",
    "as_filter",
    "check_settings",
    "ClientSettings",
    "split_client_options",
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


class Unset:
    """The default of an argument left out: "use the client's setting" (its repr says so)."""

    def __repr__(self) -> str:
        return "<the client's setting>"


UNSET: Any = Unset()

FilterLike = Union[EventFilter, Mapping[str, Any], None]

#: the keyword arguments of :class:`~theia_frames.Client` (and of AsyncClient)
CLIENT_OPTIONS = frozenset(
    {
        "timeout",
        "idle_timeout",
        "headers",
        "token",
        "ssl_context",
        "cafile",
        "batch",
        "strict",
        "batch_size",
        "send_batch_size",
        "sslopt",
        "max_message_size",
        "max_fragments",
    }
)


def split_client_options(kw: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``kw`` as (the client's keyword arguments, the others)."""
    return {k: v for k, v in kw.items() if k in CLIENT_OPTIONS}, {k: v for k, v in kw.items() if k not in CLIENT_OPTIONS}


def check_settings(
    *,
    timeout: float | None,
    idle_timeout: float | None,
    batch_size: int,
    max_message_size: int,
    max_fragments: int,
) -> None:
    """Raise :class:`~theia_frames.exceptions.UsageError` for a bad client setting."""
    for name, bound in (("max_message_size", max_message_size), ("max_fragments", max_fragments)):
        if isinstance(bound, bool) or not isinstance(bound, int) or bound < 1:
            raise UsageError(f"{name} must be a whole number >= 1, got {bound!r}")
    for name, value in (("timeout", timeout), ("idle_timeout", idle_timeout)):
        if value is not None and (isinstance(value, bool) or not value > 0):
            raise UsageError(f"{name} must be a positive number of seconds or None, got {value!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch_size must be a whole number >= 1, got {batch_size!r}")


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
    for endpoint in ("/event", "/find", "/live"):
        if path.endswith(endpoint):
            path = path[: -len(endpoint)]
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def header_lines(headers: Mapping[str, str] | Sequence[str] | None) -> list[str]:
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        return [f"{k}: {v}" for k, v in headers.items()]
    return [str(h) for h in headers]


def token_header(token: str | None, headers: Mapping[str, str] | Sequence[str] | None) -> list[str]:
    if token is None:
        return []
    if not isinstance(token, str) or not token or any(c in token for c in "\r\n"):
        raise UsageError("token must be a non-empty string on one line")
    if any(line.split(":", 1)[0].strip().lower() == "authorization" for line in header_lines(headers)):
        raise UsageError("give either token= or an Authorization header, not both")
    return [f"Authorization: Bearer {token}"]


def tls_options(
    url: str,
    ssl_context: ssl.SSLContext | None,
    cafile: str | os.PathLike[str] | None,
    sslopt: Mapping[str, Any] | None,
) -> dict[str, Any] | None:
    """websocket-client's ``sslopt`` for ``ssl_context``/``cafile``/``sslopt``."""
    if ssl_context is None and cafile is None:
        return None if sslopt is None else dict(sslopt)
    if not url.startswith("wss://"):
        raise UsageError(f"ssl_context and cafile are for wss:// URLs; {url!r} is not encrypted")
    if ssl_context is not None and cafile is not None:
        raise UsageError("give either ssl_context or cafile, not both (load the file into the context)")
    if ssl_context is not None:
        if not isinstance(ssl_context, ssl.SSLContext):
            raise UsageError(f"ssl_context must be an ssl.SSLContext, got {type(ssl_context).__name__}")
        context = ssl_context
    else:
        path = os.fspath(cafile)  # type: ignore[arg-type]
        try:
            context = ssl.create_default_context(cafile=path)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise UsageError(f"cannot load the CA file {path!r}: {exc}") from exc
    return {**dict(sslopt or {}), "context": context}


def as_filter(filter: FilterLike) -> EventFilter:
    if filter is None:
        return EventFilter()
    if isinstance(filter, EventFilter):
        return filter
    if isinstance(filter, Mapping):
        return EventFilter.from_dict(filter)
    raise UsageError(f"expected an EventFilter (or a dict, or None), got {type(filter).__name__}")


class ClientSettings:
    """The settings both clients take, checked and kept in one way (see
    :class:`~theia_frames.client.Client` for their meanings)."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float | None,
        idle_timeout: float | None,
        headers: Mapping[str, str] | Sequence[str] | None,
        token: str | None,
        batch: bool,
        strict: bool,
        batch_size: int,
        max_message_size: int,
        max_fragments: int,
    ) -> None:
        check_settings(
            timeout=timeout,
            idle_timeout=idle_timeout,
            batch_size=batch_size,
            max_message_size=max_message_size,
            max_fragments=max_fragments,
        )
        self.url = base_url(url)
        self.timeout = timeout
        self.idle_timeout = idle_timeout
        self.batch = bool(batch)
        self.strict = bool(strict)
        self.batch_size = int(batch_size)
        self.max_message_size = max_message_size
        self.max_fragments = max_fragments
        #: the extra handshake header lines (credentials included)
        self.header_lines = header_lines(headers) + token_header(token, headers)
