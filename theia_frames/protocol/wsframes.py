"""WebSocket frames on the client side (RFC 6455), without I/O.

:class:`FrameReader` is fed the bytes a connection received and returns the
complete data messages, with the control frames to send back (a pong, the
echo of a close); :func:`client_frame` builds one masked frame. The sync
client's transport only moves bytes between a socket and these two.

>>> reader = FrameReader("ws://example", max_message=1024, max_fragments=8)
>>> reader.feed(bytes([0x81, 2]) + b"ok")
>>> reader.messages()
['ok']
>>> reader.feed(bytes([0x88, 2]) + (1000).to_bytes(2, "big"))
>>> reader.messages(), reader.close_code, reader.replies
([], 1000, [(8, b'\\x03\\xe8')])
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from ..exceptions import ProtocolError, UsageError

__all__ = [
    "OP_CONT",
    "OP_TEXT",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "MAX_CONTROL",
    "MessageTooBig",
    "FrameReader",
    "client_frame",
    "client_frames",
    "mask",
    "close_payload",
]

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
CONTROL = (OP_CLOSE, OP_PING, OP_PONG)
MAX_CONTROL = 125  # RFC 6455 section 5.5
TOO_BIG, POLICY = 1009, 1008


class MessageTooBig(ProtocolError):
    """A message over one of the reader's bounds; ``code`` is the close code to send (1009 or 1008)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# below this many bytes, masking through Python's big integers is faster than numpy
NUMPY_MASK = 16384


def _header(opcode: int, n: int) -> bytes:
    """The first bytes of a final, masked frame of ``n`` payload bytes, before its key."""
    if n < 126:
        return bytes((0x80 | opcode, 0x80 | n))
    if n < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 0xFE, n)
    return struct.pack("!BBQ", 0x80 | opcode, 0xFF, n)


def _mask_small(payload: bytes | bytearray | memoryview, key: bytes) -> bytes:
    n = len(payload)
    reps = key * (n // 4 + 1)
    return (int.from_bytes(payload, "little") ^ int.from_bytes(reps[:n], "little")).to_bytes(n, "little")


def _mask_into(out: bytearray, pos: int, payload: bytes | bytearray | memoryview, key: bytes) -> None:
    """Write ``payload`` masked with ``key`` into ``out[pos:pos + len(payload)]``: one read, one write."""
    import numpy as np

    n = len(payload)
    src = np.frombuffer(payload, np.uint8)
    dst = np.frombuffer(out, np.uint8, count=n, offset=pos)
    words = n // 8 * 8
    # the key twice fills a word; the same eight bytes over every word: endianness does not matter
    np.bitwise_xor(src[:words].view(np.uint64), np.frombuffer(key * 2, np.uint64)[0], out=dst[:words].view(np.uint64))
    if words < n:
        np.bitwise_xor(src[words:], np.frombuffer(key * 2, np.uint8, count=n - words), out=dst[words:])


def mask(payload: bytes | bytearray | memoryview, key: bytes) -> bytes:
    """``payload`` XOR-ed with the four bytes of ``key``, repeated (RFC 6455 section 5.3).

    >>> mask(mask(b"hello", b"abcd"), b"abcd")
    b'hello'
    """
    n = len(payload)
    if not n:
        return b""
    if n < NUMPY_MASK:
        return _mask_small(payload, key)
    out = bytearray(n)
    _mask_into(out, 0, payload, key)
    return bytes(out)


def client_frames(opcode: int, payloads: Sequence[bytes | bytearray | memoryview], keys: bytes) -> bytearray:
    """Final, masked client-to-server frames, one per payload, one after another in one buffer.

    Payload ``i`` is masked with ``keys[4 * i : 4 * i + 4]``. The buffer is
    allocated once and each payload is read once, masked straight into its
    place after its header: the bytes to hand to ``socket.sendall``.

    >>> bytes(client_frames(OP_BINARY, [b"", b"ab"], b"abcd" + bytes(4)))
    b'\\x82\\x80abcd\\x82\\x82\\x00\\x00\\x00\\x00ab'
    """
    if len(keys) != 4 * len(payloads):
        raise UsageError(f"client_frames() needs four key bytes per payload: {len(keys)} for {len(payloads)} payloads")
    # each frame's header and key, with its payload masked when small (big integers are
    # faster there); a large payload is masked later, straight into its place in the buffer
    parts: list[bytes] = []
    large = False
    for i, payload in enumerate(payloads):
        n = len(payload)
        key = keys[4 * i : 4 * i + 4]
        if n >= NUMPY_MASK:
            parts.append(_header(opcode, n) + key)
            large = True
        else:
            parts.append(_header(opcode, n) + key + _mask_small(payload, key) if n else _header(opcode, 0) + key)
    if not large:
        return bytearray().join(parts)
    out = bytearray(sum(map(len, parts)) + sum(len(p) for p in payloads if len(p) >= NUMPY_MASK))
    pos = 0
    for i, part in enumerate(parts):
        out[pos : pos + len(part)] = part
        pos += len(part)
        n = len(payloads[i])
        if n >= NUMPY_MASK:
            _mask_into(out, pos, payloads[i], keys[4 * i : 4 * i + 4])
            pos += n
    return out


def client_frame(opcode: int, payload: bytes | bytearray | memoryview, key: bytes) -> bytes:
    """One final, masked client-to-server frame (RFC 6455 section 5.2).

    >>> client_frame(OP_TEXT, b"", b"abcd")
    b'\\x81\\x80abcd'
    """
    return bytes(client_frames(opcode, (payload,), key))


def close_payload(code: int) -> bytes:
    """The payload of a close frame carrying ``code`` (no reason)."""
    return struct.pack("!H", code)


class FrameReader:
    """Server-to-client frames in, complete messages out; bounds checked on frame headers.

    :meth:`feed` appends received bytes; :meth:`messages` returns the complete
    data messages (binary as ``bytes``, text as ``str``) and leaves in
    :attr:`replies` the control frames to send back (``(opcode, payload)``).
    Once a close frame has arrived, :attr:`close_code` and
    :attr:`close_reason` are set and nothing after it is read. A message over
    ``max_message`` bytes or ``max_fragments`` frames raises
    :class:`MessageTooBig` as soon as a frame header says so, before its
    payload is buffered; other violations raise
    :class:`~theia_frames.exceptions.ProtocolError`.
    """

    def __init__(self, url: str, *, max_message: int, max_fragments: int) -> None:
        self.url = url
        self.max_message = max_message
        self.max_fragments = max_fragments
        self.buf = bytearray()
        self.replies: list[tuple[int, bytes]] = []
        self.close_code: int | None = None
        self.close_reason = ""
        #: whether a close frame was sent (by us, or echoed): the echo is not sent twice
        self.sent_close = False
        self._frag_op = 0
        self._frag = bytearray()
        self._frag_count = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes received from the connection."""
        self.buf += data

    def reset(self) -> None:
        """Drop what was buffered (after a bound was exceeded)."""
        self.buf = bytearray()
        self._frag_op, self._frag, self._frag_count = 0, bytearray(), 0

    def messages(self, out: list[bytes | str] | None = None) -> list[bytes | str]:
        """The complete data messages in the buffer, appended to ``out`` (returned)."""
        out = [] if out is None else out
        if self.close_code is not None:
            return out
        buf = self.buf
        end = len(buf)
        pos = 0
        max_message = self.max_message
        url = self.url
        with memoryview(buf) as view:
            while end - pos >= 2:
                b0 = buf[pos]
                b1 = buf[pos + 1]
                n = b1 & 0x7F
                head = 2
                if n == 126:
                    if end - pos < 4:
                        break
                    n = (buf[pos + 2] << 8) | buf[pos + 3]
                    head = 4
                elif n == 127:
                    if end - pos < 10:
                        break
                    n = int.from_bytes(view[pos + 2 : pos + 10], "big")
                    head = 10
                if b1 & 0x80:
                    raise ProtocolError(f"{url} sent a masked frame (servers must not mask)")
                if b0 & 0x70:
                    raise ProtocolError(f"{url} sent a frame with reserved bits set (no extension was agreed)")
                opcode = b0 & 0x0F
                fin = b0 & 0x80
                # Everything is checked on the frame header, before its payload is buffered.
                if opcode == OP_BINARY or opcode == OP_TEXT:
                    too_big = n > max_message
                elif opcode == OP_CONT:
                    too_big = n + len(self._frag) > max_message
                elif opcode in CONTROL:
                    too_big = False
                    if n > MAX_CONTROL or not fin:
                        raise ProtocolError(
                            f"{url} sent a control frame of {n} bytes or fragmented (at most {MAX_CONTROL}, whole)"
                        )
                else:
                    raise ProtocolError(f"{url} sent a frame with unknown opcode {opcode}")
                if too_big:
                    raise MessageTooBig(
                        f"{url} sent a message of more than {max_message} bytes, the client's bound "
                        "(Client(max_message_size=...) raises it)",
                        TOO_BIG,
                    )
                stop = pos + head + n
                if stop > end:
                    break
                pos = stop
                if opcode == OP_BINARY or opcode == OP_TEXT:
                    if self._frag_op:
                        raise ProtocolError(f"{url} started a new message inside a fragmented one")
                    if fin:
                        payload = view[stop - n : stop].tobytes()
                        out.append(payload if opcode == OP_BINARY else payload.decode("utf-8", "replace"))
                    else:
                        self._frag_op, self._frag_count = opcode, 1
                        self._frag += view[stop - n : stop]
                elif opcode == OP_CONT:
                    if not self._frag_op:
                        raise ProtocolError(f"{url} sent a continuation frame outside a message")
                    self._frag_count += 1
                    if self._frag_count > self.max_fragments:
                        raise MessageTooBig(
                            f"{url} sent a message in more than {self.max_fragments} fragments, the client's bound "
                            "(Client(max_fragments=...) raises it)",
                            POLICY,
                        )
                    self._frag += view[stop - n : stop]
                    if fin:
                        whole = bytes(self._frag)
                        out.append(whole if self._frag_op == OP_BINARY else whole.decode("utf-8", "replace"))
                        self._frag_op, self._frag, self._frag_count = 0, bytearray(), 0
                elif opcode == OP_PING:
                    self.replies.append((OP_PONG, view[stop - n : stop].tobytes()))
                elif opcode == OP_PONG:
                    pass
                else:  # OP_CLOSE, the only opcode left
                    payload = view[stop - n : stop].tobytes()
                    self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                    self.close_reason = payload[2:].decode("utf-8", "replace")
                    if not self.sent_close:
                        self.sent_close = True
                        self.replies.append((OP_CLOSE, payload[:2]))
                    pos = end
                    break
        del buf[:pos]
        return out
