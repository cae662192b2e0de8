"""Acknowledged sends, without I/O: what was sent, confirmed, refused or is in doubt.

A client keeps one :class:`SendLedger` for its ``/event`` connections. It
counts the events sent on the open connection (:meth:`~SendLedger.sent`),
builds the flush request (:meth:`~SendLedger.flush_request`), takes in every
message received there (:meth:`~SendLedger.absorb`: a flush reply, a failed
flush, a refused event) and, when the connection is lost
(:meth:`~SendLedger.dropped`), moves what it did not confirm into doubt, to
be reported once. A confirmation is never false in either direction.

>>> ledger = SendLedger("ws://h/event")
>>> ledger.sent(3)
>>> token, text = ledger.flush_request()
>>> text
'{"flush": 1}'
>>> ledger.absorb('{"flushed": 1, "stored": 3, "rejected": 0}')
(1, True)
>>> ledger.stored, ledger.unconfirmed
(3, 0)
>>> ledger.sent(2); ledger.dropped()
>>> ledger.doubt_error()
ConnectionClosed('the connection to ws://h/event was lost before 2 event(s) sent since the last flush were confirmed: they may or may not have been stored; send them again (the collector stores an event once per (timestamp, id))')
"""

from __future__ import annotations

import itertools

from .messages import error_text, failed_flush, flush_request, parse_flush_reply
from ..exceptions import ConnectionClosed, ServerError
from .streams import MAX_KEPT_ERRORS

__all__ = ["SendLedger", "RESEND_ADVICE", "Sent"]

RESEND_ADVICE = "send them again (the collector stores an event once per (timestamp, id))"


class Sent(int):
    """What ``send_many`` returns: how many events it sent (an ``int``, as it always was);
    after ``wait=True`` also what the collector's confirmation said of the events sent since
    the flush before: ``stored``, the new events stored, and ``duplicates``, the exact repeats
    of stored events it acknowledged as already stored (kept once). A copy of a stored event
    with other content is refused: ``wait=True`` raises
    :class:`~theia_frames.exceptions.ServerError` naming it. Both are None without ``wait``.

    >>> sent = Sent(3, stored=2, duplicates=1)
    >>> sent == 3, sent.stored, sent.duplicates, sent, f"{sent} sent"
    (True, 2, 1, Sent(3, stored=2, duplicates=1), '3 sent')
    """

    stored: int | None
    duplicates: int | None

    def __new__(cls, sent: int, stored: int | None = None, duplicates: int | None = None) -> Sent:
        self = super().__new__(cls, sent)
        self.stored = stored
        self.duplicates = duplicates
        return self

    def __repr__(self) -> str:
        return f"Sent({int(self)}, stored={self.stored}, duplicates={self.duplicates})"

    def __str__(self) -> str:
        return str(int(self))

    @classmethod
    def confirmed(cls, sent: int, ledger: SendLedger, before: tuple[int, int]) -> Sent:
        """``sent`` with what ``ledger`` confirmed since it read ``before`` (:meth:`SendLedger.counts`)."""
        return cls(sent, ledger.stored - before[0], ledger.duplicates - before[1])


class SendLedger:
    """Events confirmed stored on connections already closed; on the open one:
    the last count confirmed, the events sent, how many of those a flush
    answer covers, and the events sent before each flush still unanswered.
    Events sent on lost connections that no flush confirmed are in doubt.

    ``errors`` keeps the error messages received (the first 1,000, as
    :class:`~theia_frames.exceptions.ServerError`), ``rejected`` counts those
    about refused events.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.errors: list[ServerError] = []
        self.rejected = 0
        self._unreported: list[str] = []
        self._confirmed = 0
        self._conn_stored = 0
        self._conn_duplicates = 0
        self._duplicates = 0
        self._conn_sent = 0
        self._conn_acked = 0
        self._marks: dict[int, int] = {}
        self.in_doubt = 0
        #: the largest flush token answered (confirmed or failed) on the open connection
        self.answered = 0
        self._tokens = itertools.count(1)

    @property
    def stored(self) -> int:
        """Events confirmed stored, as of the last flush answer."""
        return self._confirmed + self._conn_stored

    def counts(self) -> tuple[int, int]:
        """``(stored, duplicates)`` as of the last flush answer."""
        return self.stored, self.duplicates

    @property
    def duplicates(self) -> int:
        """Events acknowledged as already stored (exact repeats of stored events: kept
        once, not counted in :attr:`stored`), as of the last flush answer."""
        return self._duplicates + self._conn_duplicates

    @property
    def unconfirmed(self) -> int:
        """Events sent on the open connection that no flush answer covers yet."""
        return self._conn_sent - self._conn_acked

    def sent(self, n: int) -> None:
        """``n`` events went out on a connection that can confirm them."""
        self._conn_sent += n

    def dropped(self, *, reported: bool = False) -> None:
        """The open connection is gone: what it did not confirm is in doubt,
        unless the caller was told already (``reported``)."""
        if not reported:
            self.in_doubt += self.unconfirmed
        self._confirmed += self._conn_stored
        self._duplicates += self._conn_duplicates
        self._conn_stored = self._conn_sent = self._conn_acked = self._conn_duplicates = 0
        self._marks.clear()
        self.answered = 0

    def flush_request(self) -> tuple[int, str]:
        """A new flush token and the text to send; its answer covers every event sent so far."""
        token = next(self._tokens)
        self._marks[token] = self._conn_sent
        return token, flush_request(token)

    def absorb(self, message: bytes | str) -> tuple[int, bool] | None:
        """Take in one message received on ``/event``: an error is kept, a flush
        answer counted. Returns ``(token, confirmed)`` for the answer to a flush."""
        text = error_text(message)
        if text is not None:
            if len(self.errors) < MAX_KEPT_ERRORS:
                self.errors.append(ServerError(text, url=self.url))
            self._unreported.append(text)
            failed = failed_flush(text)
            if failed is not None:
                # the collector could not commit: this flush is answered, and confirms nothing
                self.answered = max(self.answered, failed)
                return failed, False
            self.rejected += 1
            return None
        reply = parse_flush_reply(message)
        if reply is None:
            return None
        token, stored, duplicates = reply
        self.answered = max(self.answered, token)
        if stored is not None:
            self._conn_stored = max(self._conn_stored, stored)
        self._conn_duplicates = max(self._conn_duplicates, duplicates)
        # an answer covers everything sent before its flush, and so before every earlier one
        covered = [t for t in self._marks if t <= token]
        for t in covered:
            self._conn_acked = max(self._conn_acked, self._marks.pop(t))
        return token, True

    def refusals(self) -> ServerError | None:
        """The error messages not yet reported, as one error to raise (once)."""
        texts, self._unreported = self._unreported, []
        if not texts:
            return None
        failed = [t for t in texts if failed_flush(t) is not None]
        if failed:
            return ServerError(f"the collector could not store the events sent since the last flush: {failed[-1]}", url=self.url)
        if len(texts) == 1:
            return ServerError(f"an event sent earlier was rejected: {texts[0]}", url=self.url)
        return ServerError(f"{len(texts)} messages sent earlier were rejected; the first: {texts[0]}", url=self.url)

    def doubt_error(self) -> ConnectionClosed | None:
        """The events lost in doubt on earlier connections, as an error to raise (once)."""
        if not self.in_doubt:
            return None
        lost, self.in_doubt = self.in_doubt, 0
        return ConnectionClosed(
            f"the connection to {self.url} was lost before {lost} event(s) sent since the last "
            f"flush were confirmed: they may or may not have been stored; {RESEND_ADVICE}",
            url=self.url,
        )

    def lost_error(self, code: int | None, reason: str) -> ConnectionClosed:
        """The connection ended (close ``code``) before a flush was answered."""
        why = f"code {code}" + (f", {reason}" if reason else "")
        return ConnectionClosed(
            f"the connection to {self.url} ended ({why}) before the flush was confirmed: "
            f"{self.unconfirmed} event(s) sent since the last flush may or may not have been stored; {RESEND_ADVICE}",
            url=self.url,
            code=code,
        )

    def send_failed(self, exc: ConnectionClosed, sent: int, negotiated: bool) -> ConnectionClosed:
        """The error for a send that failed after ``sent`` events of the call went out;
        the caller then drops the connection as reported."""
        earlier = self.unconfirmed - (sent if negotiated else 0)
        note = f"; {earlier} event(s) sent before this call were not confirmed either" if negotiated and earlier > 0 else ""
        return ConnectionClosed(
            f"{exc} (after {sent} event(s) of this call were sent; "
            f"the events of the failed chunk may or may not have arrived{note})",
            url=exc.url,
            code=exc.code,
        )
