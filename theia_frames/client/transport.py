"""The sync client's transport: one WebSocket connection over a socket.

websocket-client does the handshake (HTTP, TLS, proxies); after it, frames
are read and written here through :mod:`theia_frames.protocol.wsframes`:
websocket-client reads a frame with several small ``recv`` calls, and
reading large chunks and splitting frames in one loop keeps the per-message
overhead low enough for bulk transfers (``bench/run.py``, case ``find``).
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import websocket

from ..protocol.arrow import SUBPROTOCOL
from ..exceptions import ConnectionClosed, ProtocolError, TheiaTimeoutError
from ..protocol.wsframes import OP_BINARY, OP_CLOSE, OP_TEXT, FrameReader, MessageTooBig, client_frame, client_frames, close_payload
from .options import DEFAULT_MAX_FRAGMENTS, DEFAULT_MAX_MESSAGE_SIZE, UNSET, connect_error, handshake_error

__all__ = ["Connection", "Silence", "connect_within", "HandshakeDeadline"]

RECV_CHUNK = 256 * 1024
# a read returns after about this much more data, or this many messages, once it has one
DRAIN_LIMIT = 8 * 1024 * 1024
DRAIN_MESSAGES = 65_536
# below this much drained, a read lingers (see Connection.linger)
LINGER_BYTES = 256 * 1024
# frames sent together by send_binaries
SEND_GROUP = 1 << 20


class Silence(Exception):
    """No byte arrived within the wait (internal; callers decide what it means)."""


class HandshakeDeadline:
    """Cut a handshake off after ``seconds`` in all.

    websocket-client's own timeout bounds each ``recv``, so a server that
    answers ``101`` and then sends header lines one by one, each in time,
    would hold the handshake forever. A watcher thread shuts the socket down
    once the deadline has passed (websocket-client hands the socket over only
    once TCP, and for ``wss://`` TLS, are connected, so the watcher keeps
    trying until the handshake returns: the TLS handshake itself is bounded
    per receive only).
    """

    def __init__(self, ws: websocket.WebSocket, seconds: float) -> None:
        self._ws = ws
        self._done = threading.Event()
        self.expired = False
        self._thread = threading.Thread(target=self._watch, args=(seconds,), name="theia-handshake-deadline", daemon=True)
        self._thread.start()

    def _watch(self, seconds: float) -> None:
        if self._done.wait(seconds):
            return
        self.expired = True
        while True:
            sock = self._ws.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except (OSError, ValueError):
                    pass
            if self._done.wait(0.05):
                return

    def stop(self) -> bool:
        """End the watch; returns whether the deadline had passed."""
        self._done.set()
        return self.expired


def connect_within(ws: websocket.WebSocket, url: str, timeout: float | None, header: list[str]) -> None:
    """``ws.connect``, raising :class:`TimeoutError` when it took longer than ``timeout`` in all."""
    if timeout is None:
        ws.connect(url, timeout=None, header=header)  # type: ignore[no-untyped-call]
        return
    deadline = HandshakeDeadline(ws, timeout)
    try:
        ws.connect(url, timeout=timeout, header=header)  # type: ignore[no-untyped-call]
    except Exception as exc:
        if deadline.stop():
            raise TimeoutError(f"the handshake with {url} took longer than {timeout} s") from exc
        raise
    if deadline.stop():
        # finished just as the deadline shut the socket: the connection is not usable
        ws.shutdown()  # type: ignore[no-untyped-call]
        raise TimeoutError(f"the handshake with {url} took longer than {timeout} s")


class Connection:
    """One WebSocket connection: handshake by websocket-client, frames read and written here.

    websocket-client reads a frame with several small ``recv`` calls; reading
    large chunks and splitting frames in one loop keeps per-message overhead
    low enough for bulk transfers.
    """

    def __init__(
        self,
        ws: websocket.WebSocket,
        url: str,
        negotiated: bool,
        timeout: float | None,
        *,
        max_message: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_fragments: int = DEFAULT_MAX_FRAGMENTS,
    ) -> None:
        self.ws = ws
        # open: the handshake has just finished (websocket-client types it as maybe gone)
        self.sock: socket.socket = cast(socket.socket, ws.sock)
        self.url = url
        self.negotiated = negotiated
        self.timeout = timeout
        self.ended = False
        self.close_code: int | None = None
        self.close_reason = ""
        self.failure: BaseException | None = None
        self.reader = FrameReader(url, max_message=max_message, max_fragments=max_fragments)
        self._chunk = bytearray(RECV_CHUNK)
        self._sock_timeout: Any = UNSET
        self._send_lock = threading.Lock()
        self._state = threading.Lock()
        self._reading = False
        self._closed = False
        #: seconds a read may wait for more data once it has a message (see _read)
        self.linger = 0.0

    # ------------------------------------------------------------------ open
    @classmethod
    def open(
        cls,
        url: str,
        *,
        timeout: float | None,
        headers: list[str],
        offer: bool,
        sslopt: Mapping[str, Any] | None = None,
        on_handshake: Callable[[websocket.WebSocket | None], None] | None = None,
        max_message: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_fragments: int = DEFAULT_MAX_FRAGMENTS,
    ) -> Connection:
        """Connect and shake hands, within ``timeout`` seconds in all; ``on_handshake`` is told the
        socket object while the handshake runs (and ``None`` after), so another thread can abort it.
        ``max_message`` and ``max_fragments`` bound each message received (see the module's Bounds)."""
        header = list(headers)
        if offer:
            # A plain header, not websocket-client's subprotocols= option, which fails
            # the handshake against servers that do not echo the protocol (upstream).
            header.append(f"Sec-WebSocket-Protocol: {SUBPROTOCOL}")
        ws = websocket.WebSocket(sslopt=dict(sslopt or {}), skip_utf8_validation=True, enable_multithread=True)
        if on_handshake is not None:
            on_handshake(ws)
        try:
            connect_within(ws, url, timeout, header)
        except websocket.WebSocketBadStatusException as exc:
            raise handshake_error(url, exc.status_code, "Client") from exc
        except websocket.WebSocketAddressException as exc:
            raise connect_error(url, "unknown-host", exc) from exc
        except (TimeoutError, websocket.WebSocketTimeoutException) as exc:
            raise connect_error(url, "timeout", timeout=timeout) from exc
        except ConnectionRefusedError as exc:
            raise connect_error(url, "refused") from exc
        except ssl.SSLError as exc:
            raise connect_error(url, "tls", exc) from exc
        except (websocket.WebSocketException, OSError, ValueError) as exc:
            raise connect_error(url, "other", exc) from exc
        finally:
            if on_handshake is not None:
                on_handshake(None)
        answered = (ws.getheaders() or {}).get("sec-websocket-protocol", "")
        negotiated = offer and answered.strip().lower() == SUBPROTOCOL
        return cls(ws, url, negotiated, timeout, max_message=max_message, max_fragments=max_fragments)

    # ------------------------------------------------------------------ sending
    def _settimeout(self, timeout: float | None) -> None:
        if timeout != self._sock_timeout:
            self.sock.settimeout(timeout)
            self._sock_timeout = timeout

    def _sendall(self, data: bytes | bytearray) -> None:
        with self._send_lock:
            if self._closed:
                raise ConnectionClosed(f"the connection to {self.url} is closed", url=self.url)
            try:
                self.sock.sendall(data)
            except TimeoutError as exc:
                raise TheiaTimeoutError(f"timed out after {self.timeout} s sending to {self.url}") from exc
            except OSError as exc:
                self.ended = True
                self.failure = exc
                raise ConnectionClosed(
                    f"the connection to {self.url} was lost while sending: {exc}", url=self.url, code=1006
                ) from exc

    def send_text(self, text: str) -> None:
        self._settimeout(self.timeout)
        self._sendall(client_frames(OP_TEXT, (text.encode(),), os.urandom(4)))

    def send_binary(self, payload: bytes) -> None:
        self._settimeout(self.timeout)
        self._sendall(client_frames(OP_BINARY, (payload,), os.urandom(4)))

    def send_binaries(self, payloads: Sequence[bytes]) -> None:
        """Send many binary messages, written in groups of about a megabyte.

        Each group's frames are built in one buffer (each payload read once,
        masked into place) and written with one ``sendall``.
        """
        self._settimeout(self.timeout)
        keys = os.urandom(4 * len(payloads))
        begin, size = 0, 0
        for i, payload in enumerate(payloads):
            size += len(payload)
            if size >= SEND_GROUP:
                self._sendall(client_frames(OP_BINARY, payloads[begin : i + 1], keys[4 * begin : 4 * i + 4]))
                begin, size = i + 1, 0
        if begin < len(payloads):
            self._sendall(client_frames(OP_BINARY, payloads[begin:], keys[4 * begin :]))

    def _send_control(self, opcode: int, payload: bytes) -> None:
        # Control frames also go out from the reading thread (pong) or a closing
        # thread; never block long on them.
        frame = client_frame(opcode, payload, os.urandom(4))
        with self._send_lock:
            if self._closed and opcode != OP_CLOSE:
                return
            try:
                _, writable, _ = select.select([], [self.sock], [], 1.0)
                if writable:
                    self.sock.send(frame)
            except (OSError, ValueError):
                pass

    # ------------------------------------------------------------------ receiving
    def read(self, timeout: float | None, *, idle: bool = True) -> list[bytes | str]:
        """The next complete data messages (binary as bytes, text as str).

        Blocks until at least one message arrives; then also takes whatever else
        has already arrived. Returns ``[]`` once the connection has ended (see
        ``close_code``); raises :class:`Silence` after ``timeout`` seconds
        in which not a byte arrived (a message arriving slowly is waited for),
        or, with ``idle=False``, after ``timeout`` seconds in all.
        """
        with self._state:
            if self._closed:
                self.ended = True
                return []
            self._reading = True
        try:
            return self._read(timeout, idle)
        finally:
            with self._state:
                self._reading = False
                close_now = self._closed
            if close_now:
                self._close_socket()

    def _read(self, timeout: float | None, idle: bool = True) -> list[bytes | str]:
        out: list[bytes | str] = []
        if self.reader.buf:
            self._parse(out)
        if out or self.ended:
            return out
        deadline = None if timeout is None else time.monotonic() + timeout
        while not out and not self.ended:
            wait = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            if wait is not None and wait <= 0.0:
                raise Silence()
            if self._recv(wait) and idle and timeout is not None:
                # silence is counted from the last byte, not from the start of a message
                deadline = time.monotonic() + timeout
            if self.reader.buf:
                self._parse(out)
        drained = 0
        while out and not self.ended and drained < DRAIN_LIMIT and len(out) < DRAIN_MESSAGES:
            # With `linger`, wait a moment for more while little has arrived:
            # fewer, larger reads when a server sends one small message at a time.
            if not self._readable(self.linger if drained < LINGER_BYTES else 0.0):
                break
            drained += self._recv(None)
            if self.reader.buf:
                self._parse(out)
        return out

    def poll(self) -> list[bytes | str]:
        """Messages that have already arrived, without waiting (handles ping and close)."""
        out: list[bytes | str] = []
        while not self.ended and len(out) < DRAIN_MESSAGES and self._readable():
            self._recv(None)
            if self.reader.buf:
                self._parse(out)
        return out

    def _readable(self, wait: float = 0.0) -> bool:
        try:
            if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
                return True
            readable, _, _ = select.select([self.sock], [], [], wait)
        except (OSError, ValueError):
            return True  # let recv report what happened
        return bool(readable)

    def _recv(self, timeout: float | None) -> int:
        try:
            self._settimeout(timeout)
            n = self.sock.recv_into(self._chunk)
        except TimeoutError:
            raise Silence() from None
        except ssl.SSLWantReadError:
            return 0
        except (OSError, ValueError, AttributeError) as exc:
            self._end(1006, "", exc)
            return 0
        if n == 0:
            self._end(1006, "")
            return 0
        self.reader.feed(memoryview(self._chunk)[:n])
        return n

    def _end(self, code: int, reason: str, failure: BaseException | None = None) -> None:
        if not self.ended:
            self.ended = True
            if self.close_code is None:
                self.close_code = code
                self.close_reason = reason
            if failure is not None and self.failure is None:
                self.failure = failure

    def _parse(self, out: list[bytes | str]) -> None:
        reader = self.reader
        try:
            reader.messages(out)
        except MessageTooBig as exc:
            raise self._refuse(exc.code, str(exc)) from None
        finally:
            replies, reader.replies = reader.replies, []
            for opcode, payload in replies:
                self._send_control(opcode, payload)
        if reader.close_code is not None:
            self._end(reader.close_code, reader.close_reason)

    def _refuse(self, code: int, text: str) -> ProtocolError:
        """A message over a bound: close with ``code`` and drop what was buffered; the error to raise."""
        if not self.reader.sent_close:
            self.reader.sent_close = True
            self._send_control(OP_CLOSE, close_payload(code))
        self.ended = True
        self.failure = self.failure or ProtocolError(text)
        self.reader.reset()
        return ProtocolError(text)

    # ------------------------------------------------------------------ closing
    def close(self, *, wait: float = 0.0) -> None:
        """Close politely (close frame, 1000), from any thread; idempotent.

        With ``wait``, first wait up to that many seconds for the server's own
        close frame, so that nothing we sent is lost to a reset connection.
        """
        with self._state:
            if self._closed:
                return
            reading = self._reading
            if not self.ended and not self.reader.sent_close:
                self.reader.sent_close = True
                send_close = True
            else:
                send_close = False
        if send_close:
            self._send_control(OP_CLOSE, close_payload(1000))
            if wait and not reading:
                deadline = time.monotonic() + wait
                try:
                    while not self.ended:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        self._read(remaining, False)
                except (Silence, ProtocolError):
                    pass
        with self._state:
            self._closed = True
            reading = self._reading
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except (OSError, ValueError, AttributeError):
            pass
        if not reading:
            self._close_socket()

    def _close_socket(self) -> None:
        self.ended = True
        try:
            self.sock.close()
        except (OSError, AttributeError):
            pass
