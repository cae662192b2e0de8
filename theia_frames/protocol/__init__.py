"""The protocol core: what is sent and received, and what it means, without I/O.

Both clients (sync and asyncio) are transports over these modules: they move
bytes and messages, and ask the core what to send and what to yield.

- ``wsframes``: WebSocket frames on the client side (the sync transport's framing).
- ``messages``: what a received message or a close code means.
- ``plain``: the decoder of plain event messages (either dialect).
- ``streams``: the state of a ``/find`` and of a ``/live`` subscription.
- ``resume``: resuming a live subscription after a reconnect; the backoff.
- ``live``: a reconnecting live subscription's session (its reconnect policy as states).
- ``ledger``: acknowledged sends (sent / confirmed / failed / in doubt).
- ``outgoing``: what to send for events (checked Arrow batches or plain messages).
- ``count``: the extension's ``/count`` request, its reply, and the counting.

The words of both dialects and of the extension are built and parsed in
:mod:`theia_frames.protocol.codec` (plain dialect, ``ok``, errors, flush, total) and
:mod:`theia_frames.protocol.arrow` (the extension's Arrow messages).
"""

from .ledger import SendLedger
from .messages import end_error, sort_messages
from .plain import decode_plain
from .live import LiveSession
from .resume import Backoff, ResumeState
from .streams import Decoder, FindState, LiveState, StreamState
from .wsframes import FrameReader, client_frame

__all__ = [
    "StreamState",
    "FindState",
    "LiveState",
    "Decoder",
    "ResumeState",
    "LiveSession",
    "Backoff",
    "SendLedger",
    "FrameReader",
    "client_frame",
    "sort_messages",
    "end_error",
    "decode_plain",
]
