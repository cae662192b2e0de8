"""The collector's output side: ready WebSocket frames written without copies, plain
messages of stored events, and the small helpers every endpoint shares (peer names,
quiet sends and closes, the throttled log, the state kept per connection, what an
endpoint is to the collector).
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from websockets.exceptions import ConnectionClosed

from ..protocol.arrow import (
    SUBPROTOCOL,
    batch_to_columns,
    encode_batch,
    uncarried_rows,
)
from ..protocol.codec import EventColumns, encode, split_tags
from ..protocol.messages import error_message
from ..event import Event
from ..exceptions import (
    InvalidEventError,
    UsageError,
)

if TYPE_CHECKING:  # pragma: no cover
    from websockets.asyncio.server import ServerConnection

__all__ = [
    "LOG_EVERY",
    "server_ssl_context",
    "select_subprotocol",
    "peer_name",
    "send_quietly",
    "release_arrow_memory",
    "plain_messages",
    "BINARY_FRAME",
    "TEXT_FRAME",
    "ws_frames",
    "plain_frames",
    "joined_frames",
    "write_frames",
    "next_find_output",
    "Stalled",
    "ConnectionState",
    "ThrottledLog",
    "peer_address",
    "close_quietly",
    "Endpoint",
]


# Seconds between two log lines about the same kind of refusal (the rest are counted).
LOG_EVERY = 10.0


def server_ssl_context(
    certfile: str | os.PathLike[str] | None, keyfile: str | os.PathLike[str] | None
) -> ssl.SSLContext | None:
    if certfile is None and keyfile is None:
        return None
    if certfile is None:
        raise UsageError("keyfile was given without certfile: TLS needs both")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(os.fspath(certfile), None if keyfile is None else os.fspath(keyfile))
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load the TLS certificate {os.fspath(certfile)!r}: {exc}") from exc
    return context


def select_subprotocol(connection: ServerConnection, offered: Any) -> Any:
    # websockets refuses clients that offer nothing when the server has
    # subprotocols; plain peers must be served, so "none" is a valid answer.
    return SUBPROTOCOL if SUBPROTOCOL in offered else None


def peer_name(ws: ServerConnection) -> str:
    try:
        address = ws.remote_address
    except Exception:  # pragma: no cover - transport already gone
        return "a client"
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


async def send_quietly(ws: ServerConnection, message: str | bytes) -> None:
    try:
        await ws.send(message)
    except ConnectionClosed:
        pass


def release_arrow_memory() -> None:
    """Give the memory Arrow's pool keeps after its buffers were freed back to the system
    (a collector calls it when its last ``/find`` ends; a worker thread)."""
    pa.default_memory_pool().release_unused()


def plain_messages(cols: EventColumns) -> list[bytes | str]:
    """One upstream-encoded event per message; an event the format cannot carry becomes an error."""
    out: list[bytes | str] = []
    append = out.append
    for id_, ts, source, tags, content in zip(cols.id, cols.timestamp, cols.source, cols.tags, cols.content):
        try:
            append(encode(Event(id_, ts, source, split_tags(tags), content)))
        except InvalidEventError as exc:
            append(error_message(f"stored event {id_!r} cannot be sent in the plain format: {exc}"))
    return out


# WebSocket opcodes with the FIN bit: a whole binary or text message in one frame.
BINARY_FRAME = 0x82


TEXT_FRAME = 0x81


def ws_frames(payloads: pa.Array, opcodes: int | np.ndarray) -> pa.Array:
    """Each payload as one complete, unmasked WebSocket frame (a large_binary array).

    ``opcodes`` is one first byte for all, or a numpy array of one per payload.
    """
    payloads = payloads.cast(pa.large_binary())
    n = len(payloads)
    size = pc.binary_length(payloads).to_numpy(zero_copy_only=False).astype(np.int64)
    head = np.where(size < 126, 2, np.where(size < 65536, 4, 10))
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(head, out=offsets[1:])
    out = np.zeros(int(offsets[-1]), dtype=np.uint8)
    at = offsets[:-1]
    out[at] = opcodes
    small = size < 126
    out[at[small] + 1] = size[small]
    medium = ~small & (size < 65536)
    out[at[medium] + 1] = 126
    out[at[medium] + 2] = size[medium] >> 8
    out[at[medium] + 3] = size[medium] & 0xFF
    large = size >= 65536
    if large.any():
        out[at[large] + 1] = 127
        for k in range(8):
            out[at[large] + 2 + k] = (size[large] >> (8 * (7 - k))) & 0xFF
    heads = pa.LargeBinaryArray.from_buffers(pa.large_binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(out)])
    return pc.binary_join_element_wise(heads, payloads, pa.scalar(b"", pa.large_binary()))


def plain_frames(batch: pa.RecordBatch) -> Any:
    """One frame per event of ``batch``, exactly what a plain peer gets for it.

    A binary frame holding the upstream encoding; for an event the plain
    format cannot carry (a line break in id, source or a tag, a comma in a tag) a text frame
    with an error, as :func:`plain_messages` says.
    """
    if not batch.num_rows:
        return pa.array([], pa.large_binary())
    if uncarried_rows(batch) is not None:
        messages = plain_messages(batch_to_columns(batch))
        opcodes = np.array([TEXT_FRAME if isinstance(m, str) else BINARY_FRAME for m in messages], dtype=np.uint8)
        payloads = pa.array([m.encode() if isinstance(m, str) else m for m in messages], pa.large_binary())
        return ws_frames(payloads, opcodes)
    return ws_frames(encode_batch(batch), BINARY_FRAME)


def joined_frames(parts: list[Any]) -> memoryview:
    """The bytes of frame arrays, one after the other (no copy for a single array)."""
    views = []
    for frames in parts:
        if not len(frames):
            continue
        offsets = np.frombuffer(frames.buffers()[1], dtype=np.int64)
        first, last = int(offsets[frames.offset]), int(offsets[frames.offset + len(frames)])
        views.append(memoryview(frames.buffers()[2])[first:last])
    if len(views) == 1:
        return views[0]
    return memoryview(b"".join(views))


async def write_frames(ws: ServerConnection, frames: bytes | memoryview) -> None:
    """Write complete, ready-made data frames at once, with the connection's flow control.

    The frames are what :meth:`send` would write for each message (the
    collector negotiates no compression), so peers see the same bytes; one
    write instead of one per message is what makes plain transfers fast.
    """
    if not len(frames):
        return
    async with ws.send_context():
        ws.send_data()  # anything the protocol has queued goes first
        ws.transport.write(frames)


def next_find_output(results: Iterator[Any], batched: bool) -> bytes | memoryview | None:
    """The next output of a /find (None when done); runs on a worker thread.

    Batched: one Arrow IPC message. Plain: the frames of the next events.
    """
    item = next(results, None)
    if item is None or batched:
        return item
    return joined_frames([plain_frames(item)])


class Stalled(Exception):
    """A /find whose client took none of its bytes for the stall timeout (the connection is cut off)."""


class ConnectionState:
    """What the collector knows of an open connection: where from, which endpoint, when
    it last sent something, and whether the idle timeout applies to it."""

    __slots__ = ("address", "path", "last", "watched")

    def __init__(self, address: str, path: str, now: float) -> None:
        self.address = address
        self.path = path
        self.last = now
        self.watched = True


class ThrottledLog:
    """Log lines of one kind at most once per :data:`LOG_EVERY` seconds, the rest counted:
    a flood of bad clients must not become a flood of log."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}
        self._lock = threading.Lock()

    def _emit(self, level: int, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(kind, -LOG_EVERY) < LOG_EVERY:
                self._skipped[kind] = self._skipped.get(kind, 0) + 1
                return
            self._last[kind] = now
            skipped = self._skipped.pop(kind, 0)
        if skipped:
            message += f" (and {skipped} more like it in the last {LOG_EVERY:g} s)"
        self._log.log(level, message, *args)

    def info(self, kind: str, message: str, *args: Any) -> None:
        self._emit(logging.INFO, kind, message, *args)

    def warning(self, kind: str, message: str, *args: Any) -> None:
        self._emit(logging.WARNING, kind, message, *args)

    def error(self, kind: str, message: str, *args: Any) -> None:
        self._emit(logging.ERROR, kind, message, *args)


def peer_address(ws: ServerConnection) -> str:
    try:
        address = ws.remote_address
    except Exception:  # pragma: no cover - transport already gone
        return "?"
    if isinstance(address, tuple) and address:
        return str(address[0])
    return str(address)


async def close_quietly(ws: ServerConnection, code: int, reason: str) -> None:
    try:
        await ws.close(code, reason)
    except Exception:  # pragma: no cover - already closed
        pass


class Endpoint(Protocol):
    """What the collector routes a connection to: one path's conversation."""

    async def serve(self, ws: ServerConnection, batched: bool, state: ConnectionState) -> None:
        """Serve one connection (``batched``: it negotiated the extension) until it ends."""
