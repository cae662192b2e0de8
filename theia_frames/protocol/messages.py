"""What received messages and close codes mean, for both dialects and the extension.

The words themselves (``ok``, error objects, the flush request and its
replies, the announced total) are built and parsed in
:mod:`theia_frames.codec`; this module gives them their meaning for a reader:
data to decode, the end of a stream, or an error to raise.

>>> data, total = sort_messages(['ok', b'event: 3 3 0\\n...', '{"total": 2}'], "ws://h/find")
>>> len(data), total
(1, 2)
>>> end_error("ws://h/find", 1000, "", None, "after 2 event(s)") is None
True
>>> end_error("ws://h/live", 1013, "", None, "after 2 event(s)")
SubscriberTooSlow('ws://h/live dropped this subscriber (closed with code 1013): it did not keep up')
"""

from __future__ import annotations

from collections.abc import Sequence

from ..batch import ARROW_MARKER
from ..codec import error_text, is_ok, total_of
from ..exceptions import ConnectionClosed, ServerError, SubscriberTooSlow, TheiaError

__all__ = [
    "NORMAL_CLOSE",
    "TOO_SLOW_CODES",
    "DATA_CLOSE_CODES",
    "is_too_slow",
    "sort_messages",
    "end_error",
]

#: orderly ends of a stream (1005: a close frame without a status code)
NORMAL_CLOSE = (1000, 1005)
#: "try again later", as our collector closes a subscriber that fell behind
TOO_SLOW_CODES = (1013,)
#: the server closed because of what it was sent: events sent before may be lost
DATA_CLOSE_CODES = (1007, 1008, 1009, 1011)


def is_too_slow(text: str) -> bool:
    """Whether an error message or a close reason says the subscriber fell behind.

    >>> is_too_slow("subscriber too slow: 10000 events waiting")
    True
    """
    return text.lower().lstrip().startswith("subscriber too slow")


def sort_messages(msgs: Sequence[bytes | str], url: str) -> tuple[list[bytes], int | None]:
    """The data messages (plain events, Arrow batches) among ``msgs`` and the
    total announced, if any; ``ok`` is dropped wherever it appears, an error
    message raises :class:`~theia_frames.exceptions.ServerError` (or
    :class:`~theia_frames.exceptions.SubscriberTooSlow`)."""
    data: list[bytes] = []
    append = data.append
    total: int | None = None
    for m in msgs:
        if type(m) is bytes and (m[:6] == b"event:" or m[:4] == ARROW_MARKER):
            append(m)
            continue
        if is_ok(m):
            continue
        announced = total_of(m)
        if announced is not None:
            total = announced
            continue
        text = error_text(m)
        if text is not None:
            if is_too_slow(text):
                raise SubscriberTooSlow(f"{url} dropped this subscriber: {text}", url=url, code=1013)
            raise ServerError(text, url=url)
        append(m if isinstance(m, bytes) else m.encode())
    return data, total


def end_error(url: str, code: int | None, reason: str, failure: BaseException | None, after: str) -> TheiaError | None:
    """What the end of a stream with close ``code`` means: None for an orderly
    close, else the error to raise (``after`` completes its message)."""
    if code in NORMAL_CLOSE:
        return None
    why = f"closed with code {code}" + (f" ({reason})" if reason else "")
    if code == 1006:
        why = "dropped" + (f" ({failure})" if failure else " without a close frame")
    if code in TOO_SLOW_CODES or "slow" in reason.lower():
        return SubscriberTooSlow(f"{url} dropped this subscriber ({why}): it did not keep up", url=url, code=code)
    return ConnectionClosed(f"the connection to {url} {why} {after}", url=url, code=code)
