"""The state of a ``/find`` and of a ``/live`` subscription, without I/O.

A transport opens the connection, sends :meth:`StreamState.filter_message`,
and then only moves messages: :meth:`StreamState.receive` takes what arrived
and returns the data messages (raising on an error message),
:meth:`StreamState.decoder` turns data messages into checked record batches,
:meth:`StreamState.end` says what a close means, and
:meth:`FindState.silence` what silence means. The sync client and the
asyncio client are two such transports.

>>> from theia_frames.protocol.codec import encode
>>> from theia_frames.event import Event
>>> from theia_frames.filter import EventFilter
>>> find = FindState("ws://h/find", EventFilter(1), strict=False, batch_size=100)
>>> find.filter_message(negotiated=False)
'{"start": 1.0}'
>>> data = find.receive(["ok", encode(Event("a", 5.0, "/s", [], "x"))])
>>> decoder = find.decoder(1)
>>> [b.num_rows for b in decoder.feed(data) + decoder.finish()]
[1]
>>> find.end(1000, "", None); find.complete, find.ended_by
(True, 'close')
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pyarrow as pa

from .arrow import ARROW_MARKER, ipc_to_batches, outside_event_times
from ..exceptions import DecodeError, TheiaError, TheiaTimeoutError
from ..filter import EventFilter
from .messages import end_error, sort_messages
from .plain import decode_plain
from ..timeparse import event_time_problem

__all__ = ["StreamState", "FindState", "LiveState", "Decoder", "MAX_KEPT_ERRORS"]

#: at most this many per-message errors are kept in ``errors`` (all are counted in ``skipped``)
MAX_KEPT_ERRORS = 1000
#: the default bound on what one Arrow message may decode to (the client's max_message_size)
DEFAULT_MAX_DECODED = 256 * 1024 * 1024


class StreamState:
    """What a find and a live subscription share: message meaning, decoding,
    the local filter re-check and the error bookkeeping.

    Attributes: ``url``, ``filter``, ``strict``, ``batch_size``, ``count``
    (events handed to the caller; the transport counts them), ``total`` (the
    number of events our collector announced, else None), ``skipped`` and
    ``errors`` (undecodable messages, lenient mode), ``complete`` (ended normally).
    """

    endpoint = ""
    #: appended to the error of an abnormal end
    incomplete = ""

    def __init__(
        self,
        url: str,
        filter: EventFilter,
        *,
        strict: bool,
        batch_size: int,
        max_decoded: int = DEFAULT_MAX_DECODED,
    ) -> None:
        self.url = url
        self.filter = filter
        self.strict = strict
        self.batch_size = batch_size
        self.max_decoded = max_decoded
        self.count = 0
        self.total: int | None = None
        self.skipped = 0
        self.errors: list[TheiaError] = []
        self.complete = False

    def filter_message(self, negotiated: bool) -> str:  # pragma: no cover - abstract
        """The text to send once connected (the filter, in the form the peer matches)."""
        raise NotImplementedError

    def unanswered(self, timeout: float | None) -> TheiaTimeoutError:
        """The error to raise when the filter sent got no answer within ``timeout`` seconds."""
        return TheiaTimeoutError(f"{self.url} did not answer the filter within {timeout} s")

    def receive(self, msgs: Sequence[bytes | str]) -> list[bytes]:
        """The data messages among ``msgs``; ``ok`` and the total are taken in, an error raises."""
        data, total = sort_messages(msgs, self.url)
        if total is not None:
            self.total = total
        return data

    def end(self, code: int | None, reason: str, failure: BaseException | None) -> None:
        """The connection ended with close ``code``: return if that was an orderly end, raise otherwise."""
        error = end_error(self.url, code, reason, failure, f"after {self.count} event(s){self.incomplete}")
        if error is not None:
            raise error
        self.complete = True

    def bad(self, exc: DecodeError) -> None:
        """A message that is not an event: raise (strict) or count and keep it."""
        if self.strict:
            raise exc
        self.skipped += 1
        if len(self.errors) < MAX_KEPT_ERRORS:
            self.errors.append(exc)

    def decoder(self, accumulate: int) -> Decoder:
        """A :class:`Decoder` for this stream: plain messages decoded ``accumulate`` at a time."""
        return Decoder(self, accumulate)

    def reversing(self, negotiated: bool) -> bool:
        """Whether the results are reversed here, after they arrived (see :meth:`FindState.reversing`)."""
        return False

    def note(self, error: TheiaError) -> None:
        """Keep an error that did not end the stream (a dropped subscription that was resumed)."""
        if len(self.errors) < MAX_KEPT_ERRORS:
            self.errors.append(error)


class Decoder:
    """Data messages in, checked record batches out, in the server's order.

    Plain messages are gathered and decoded ``accumulate`` at a time (whole
    groups; the rest waits for more or for :meth:`finish`); Arrow batches pass
    through. Plain messages are re-checked against every criterion of the
    filter (a plain peer's matching is wider than ours, docs/protocol.md);
    Arrow batches, which only our collector sends after applying the same
    filter, against the time range (which also drops events before a
    fractional start on ``/live``, where the start is sent as whole seconds).
    """

    def __init__(self, stream: StreamState, accumulate: int) -> None:
        self.stream = stream
        self.accumulate = accumulate
        self._plain: list[bytes] = []

    def _holdable(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """``batch`` without the events whose time is no event time (outside the accepted
        range, docs/protocol.md "Event times"): a peer that stored one (the upstream
        collector takes any time) cannot make a frame fail to hold the rest. Each is
        reported as a message that is not an event (:meth:`StreamState.bad`)."""
        outside = outside_event_times(batch.column(1))
        if outside is None:
            return batch
        ids, stamps = batch.column(0), batch.column(1)
        for row in outside.nonzero()[0].tolist():
            stamp = stamps[row].as_py()
            self.stream.bad(DecodeError(f"event {ids[row].as_py()!r}: {event_time_problem(stamp)}", repr(stamp)))
        return batch.filter(pa.array(~outside))

    def _decode_plain(self, messages: list[bytes], out: list[pa.RecordBatch]) -> None:
        batch = self.stream.filter.match_batch(self._holdable(decode_plain(messages, self.stream.bad)))
        if batch.num_rows:
            out.append(batch)

    def _decode_arrow(self, message: bytes, out: list[pa.RecordBatch]) -> None:
        try:
            # the same bound decoded as on the wire: a small compressed message cannot become a large one
            batches = ipc_to_batches(message, max_decoded=self.stream.max_decoded)
        except DecodeError as exc:
            self.stream.bad(exc)
            return
        match_time = self.stream.filter.match_time
        for b in batches:
            b = match_time(self._holdable(b))
            if b.num_rows:
                out.append(b)

    def feed(self, msgs: Sequence[bytes]) -> list[pa.RecordBatch]:
        """The batches ready once ``msgs`` (data messages) are added."""
        out: list[pa.RecordBatch] = []
        plain = self._plain
        for m in msgs:
            if m[:4] == ARROW_MARKER:
                if plain:
                    self._decode_plain(plain, out)
                    plain = []
                self._decode_arrow(m, out)
            else:
                plain.append(m)
        accumulate = self.accumulate
        if len(plain) >= accumulate:
            if accumulate > 1:
                # whole batches of `accumulate` messages; the rest waits for more
                cut = len(plain) - len(plain) % accumulate
                for i in range(0, cut, accumulate):
                    self._decode_plain(plain[i : i + accumulate], out)
                plain = plain[cut:]
            else:
                self._decode_plain(plain, out)
                plain = []
        self._plain = plain
        return out

    def finish(self) -> list[pa.RecordBatch]:
        """The batches of the plain messages still waiting (at the end of the stream)."""
        out: list[pa.RecordBatch] = []
        if self._plain:
            self._decode_plain(self._plain, out)
            self._plain = []
        return out


class FindState(StreamState):
    """The state of one ``/find``: its end is a normal close (our collector), or
    ``idle_timeout`` seconds of silence on a peer that never closes (upstream).

    ``ended_by`` is ``"close"`` or ``"idle"`` once complete.
    """

    endpoint = "find"
    incomplete = " before the end of the results (the result would be incomplete)"

    def __init__(
        self,
        url: str,
        filter: EventFilter,
        *,
        strict: bool,
        batch_size: int,
        idle_timeout: float | None = None,
        timeout: float | None = None,
        max_decoded: int = DEFAULT_MAX_DECODED,
    ) -> None:
        super().__init__(url, filter, strict=strict, batch_size=batch_size, max_decoded=max_decoded)
        self.idle_timeout = idle_timeout
        self.timeout = timeout
        self.ended_by: str | None = None

    def filter_message(self, negotiated: bool) -> str:
        return json.dumps(self.filter.for_find(plain=not negotiated))

    def end(self, code: int | None, reason: str, failure: BaseException | None) -> None:
        super().end(code, reason, failure)
        self.ended_by = "close"

    def wait(self, negotiated: bool) -> float | None:
        """Seconds of silence to wait for: a server that accepted the extension
        is ours and always closes a find, so there silence is a timeout."""
        return self.timeout if negotiated else self.idle_timeout

    def silence(self, negotiated: bool) -> None:
        """Nothing arrived for :meth:`wait` seconds: complete on a plain peer, raise on ours."""
        if negotiated:
            wait = self.wait(negotiated)
            raise TheiaTimeoutError(f"{self.url} sent nothing for {wait} s before closing the /find (timeout={wait})")
        self.complete = True
        self.ended_by = "idle"

    def reversing(self, negotiated: bool) -> bool:
        """Whether results are reversed here: a plain peer is asked in ascending
        order (upstream cannot answer desc)."""
        return self.filter.order == "desc" and not negotiated


class LiveState(StreamState):
    """The state of one ``/live`` subscription (one connection of it)."""

    endpoint = "live"

    def filter_message(self, negotiated: bool) -> str:
        return json.dumps(self.filter.for_live(plain=not negotiated))
