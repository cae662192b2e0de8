"""A WebSocket server that writes exactly the bytes a test scripts, for faults no real peer shows.

The handshake and every frame are written by hand on a plain socket, so a
test can pace bytes (a message trickled over seconds, header lines one by
one) and break the framing rules (a frame header announcing a gigabyte,
thousands of fragments) in ways websockets, our collector and the upstream
collector never do.

    >>> def script(conn):
    ...     conn.recv_message()          # the client's filter
    ...     conn.send_frame(OP_TEXT, b"ok")
    ...     conn.close(1000)
    >>> with RawPeer(script) as peer:
    ...     peer.url.startswith("ws://127.0.0.1:")
    True
"""

from __future__ import annotations

import base64
import hashlib
import socket
import struct
import threading
import time
from collections.abc import Callable

__all__ = ["RawPeer", "RawConn", "server_frame", "read_client_frame", "OP_CONT", "OP_TEXT", "OP_BINARY", "OP_CLOSE"]

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE = 0, 1, 2, 8
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def server_frame(
    opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, masked: bool = False, length: int | None = None
) -> bytes:
    """A server-to-client frame (unmasked unless ``masked``: a zero mask); ``rsv``: reserved
    bits set; ``length`` overrides the announced payload length."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | rsv | opcode
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = bytes((first, mask_bit | n))
    elif n < 65536:
        head = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, n)
    return head + (b"\0\0\0\0" if masked else b"") + payload


def _exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("the client closed the connection")
        out += chunk
    return bytes(out)


def read_client_frame(sock: socket.socket, *, masked: bool = True) -> tuple[int, bytes]:
    """The next client-to-server frame on ``sock``: (opcode, unmasked payload), unmasked by
    hand (RFC 6455 section 5.3). ``masked=False`` also reads a frame without a mask."""
    b0, b1 = _exactly(sock, 2)
    if masked:
        assert b1 & 0x80, "client frames must be masked"
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", _exactly(sock, 2))[0]
    elif n == 127:
        n = struct.unpack("!Q", _exactly(sock, 8))[0]
    key = _exactly(sock, 4) if b1 & 0x80 else b"\0\0\0\0"
    data = _exactly(sock, n)
    keys = (key * (n // 4 + 1))[:n]
    payload = (int.from_bytes(data, "little") ^ int.from_bytes(keys, "little")).to_bytes(n, "little")
    return b0 & 0x0F, payload


class RawConn:
    """One accepted connection, after the request was read (and answered, unless ``handshake=False``)."""

    def __init__(self, sock: socket.socket, request: bytes) -> None:
        self.sock = sock
        self.request = request
        self.received: list[tuple[int, bytes]] = []

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_frame(self, opcode: int, payload: bytes, *, fin: bool = True) -> None:
        self.sock.sendall(server_frame(opcode, payload, fin=fin))

    def trickle(self, data: bytes, seconds: float, pieces: int = 20) -> None:
        """Write ``data`` in ``pieces`` parts spread over about ``seconds``."""
        step = max(1, -(-len(data) // pieces))
        for at in range(0, len(data), step):
            self.sock.sendall(data[at : at + step])
            time.sleep(seconds / pieces)

    def recv_frame(self) -> tuple[int, bytes]:
        """The next frame from the client (opcode, unmasked payload); also kept in ``received``."""
        frame = read_client_frame(self.sock, masked=False)
        self.received.append(frame)
        return frame

    def recv_message(self) -> bytes:
        """The payload of the client's next data frame (our client never fragments)."""
        while True:
            opcode, data = self.recv_frame()
            if opcode in (OP_TEXT, OP_BINARY):
                return data

    def close(self, code: int = 1000) -> None:
        """Send a close frame and wait a moment for the client's."""
        try:
            self.send_frame(OP_CLOSE, struct.pack("!H", code))
            self.sock.settimeout(5)
            while self.recv_frame()[0] != OP_CLOSE:
                pass
        except OSError:
            pass


class RawPeer:
    """Serve each connection on a free loopback port with ``script(conn)`` in a thread.

    With ``handshake=True`` the server answers ``101`` (accepting ``subprotocol``
    when given) before the script runs; with ``False`` the script writes the answer.
    """

    def __init__(
        self, script: Callable[[RawConn], None], *, subprotocol: str | None = None, handshake: bool = True
    ) -> None:
        self.script = script
        self.subprotocol = subprotocol
        self.handshake = handshake
        self.conns: list[RawConn] = []
        self.errors: list[BaseException] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.url = f"ws://127.0.0.1:{self._listener.getsockname()[1]}"

    @property
    def stopping(self) -> bool:
        """Set when the test is over: a script that would go on forever should stop."""
        return self._stop.is_set()

    def __enter__(self) -> RawPeer:
        accept = threading.Thread(target=self._accept, name="raw-peer", daemon=True)
        accept.start()
        self._threads.append(accept)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for conn in self.conns:
            try:
                conn.sock.close()
            except OSError:
                pass
        for t in self._threads:
            t.join(10)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, sock: socket.socket) -> None:
        try:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = sock.recv(4096)
                if not chunk:
                    return
                request += chunk
            conn = RawConn(sock, request)
            self.conns.append(conn)
            if self.handshake:
                key = next(
                    line.split(b":", 1)[1].strip()
                    for line in request.split(b"\r\n")
                    if line.lower().startswith(b"sec-websocket-key:")
                )
                accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
                answer = (
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Accept: " + accept + b"\r\n"
                )
                if self.subprotocol:
                    answer += f"Sec-WebSocket-Protocol: {self.subprotocol}\r\n".encode()
                sock.sendall(answer + b"\r\n")
            self.script(conn)
        except OSError:
            pass  # the client went away: what the test is about, usually
        except BaseException as exc:  # pragma: no cover - shown by the test that reads errors
            self.errors.append(exc)
        finally:
            try:
                sock.close()
            except OSError:
                pass
