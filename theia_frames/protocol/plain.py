"""Plain event messages (either dialect) into Arrow record batches, many at a time.

:func:`decode_plain` is the one decoder of received plain messages: messages
of the usual layout are decoded together with Arrow kernels, any other goes
through :mod:`theia_frames.protocol.codec` (the grammar of one message) one by one, and
either way a message that is not an event is reported, not guessed at.

>>> from theia_frames.protocol.codec import encode
>>> from theia_frames.event import Event
>>> batch = decode_plain([encode(Event("a1", 1.5, "/s", ["t"], "21.5C"))], print)
>>> batch.num_rows, batch.column(0)[0].as_py()
(1, 'a1')
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .arrow import columns_to_batch, empty_batch, event_schema, tag_lists
from .codec import EventColumns
from ..exceptions import DecodeError

__all__ = ["decode_plain", "slow_decode", "bulk_decode", "BULK_MIN"]


# Fewer plain messages than this are decoded one by one: the bulk decoder's
# fixed cost (a few dozen Arrow kernel calls) only pays off from here on.
BULK_MIN = 64
_SIZES = r"^event: ?(?P<total>[0-9]{1,15}) (?P<header>[0-9]{1,15}) (?P<content>[0-9]{1,15})$"
_DECIMAL = r"^ ?[0-9]{1,17}(\.[0-9]{1,17})?$"


def decode_plain(messages: list[bytes], bad: Any) -> pa.RecordBatch:
    """Plain event messages (either dialect) as one record batch, in order.

    Messages that cannot be decoded are passed to ``bad`` (a DecodeError each)
    and left out. Many messages are decoded at once with Arrow kernels when
    they have the usual layout (upstream dialect, or Go dialect with tags);
    any other message goes through :mod:`theia_frames.protocol.codec` one by one.
    """
    if len(messages) >= BULK_MIN:
        try:
            batch, ok = bulk_decode(messages)
        except (UnicodeError, ValueError, pa.ArrowException):
            pass  # e.g. a message that is not UTF-8: decode each, to report it precisely
        else:
            if pc.all(ok).as_py():
                return batch
            good = batch.filter(ok)
            good_positions = pc.indices_nonzero(ok).to_pylist()
            rest = pc.indices_nonzero(pc.invert(ok)).to_pylist()
            slow, slow_positions = slow_decode([messages[i] for i in rest], bad)
            positions = good_positions + [rest[i] for i in slow_positions]
            order = sorted(range(len(positions)), key=positions.__getitem__)
            table = pa.Table.from_batches([good, slow]).take(order)
            return table.combine_chunks().to_batches()[0] if table.num_rows else empty_batch()
    return slow_decode(messages, bad)[0]


def slow_decode(messages: list[bytes], bad: Any) -> tuple[pa.RecordBatch, list[int]]:
    """Decode one message at a time; returns the batch and each row's message index."""
    cols = EventColumns()
    positions: list[int] = []
    for i, m in enumerate(messages):
        before = len(cols)
        try:
            cols.append_raw(m)
        except DecodeError as exc:
            # a message holding several events may have added some before failing
            for column in (cols.id, cols.timestamp, cols.source, cols.tags, cols.content):
                del column[before:]
            bad(exc)
            continue
        positions.extend([i] * (len(cols) - before))
    return columns_to_batch(cols), positions


def bulk_decode(messages: list[bytes]) -> tuple[pa.RecordBatch, pa.Array]:
    """Decode messages of the usual layout with Arrow kernels.

    Returns a batch with a row per message and a mask of the rows that were
    decoded and verified (sizes, keys, timestamp); other rows hold junk.
    Raises if the messages are not all UTF-8.
    """
    text = pa.array(messages, pa.binary()).cast(pa.string())
    parts = pc.split_pattern(text, "\n", max_splits=5)
    six = pc.equal(pc.list_value_length(parts), 6)
    if not pc.all(six).as_py():
        parts = pc.if_else(six, parts, pa.scalar(["", "", "", "", "", ""], pa.list_(pa.string())))
    pre, id_line, ts_line, source_line, tags_line, rest = (pc.list_element(parts, i) for i in range(6))
    sizes = pc.extract_regex(pre, _SIZES)
    ok = pc.and_(
        pc.and_(six, pc.is_valid(sizes)),
        pc.and_(
            pc.and_(pc.starts_with(id_line, "id:"), pc.starts_with(ts_line, "timestamp:")),
            pc.and_(pc.starts_with(source_line, "source:"), pc.starts_with(tags_line, "tags:")),
        ),
    )
    ts_text = pc.utf8_slice_codeunits(ts_line, 10)
    ok = pc.and_(ok, pc.match_substring_regex(ts_text, _DECIMAL))
    ts = pc.cast(pc.utf8_ltrim(pc.if_else(ok, ts_text, "0"), " "), pa.float64())
    # rows whose preamble did not match hold "" in the fields: read them as 0
    matched = pc.is_valid(sizes)
    total, hsize, csize = (
        pc.cast(pc.if_else(matched, sizes.field(name), "0"), pa.int64()) for name in ("total", "header", "content")
    )
    header_bytes = pc.add(
        pc.add(pc.binary_length(id_line), pc.binary_length(ts_line)),
        pc.add(pc.binary_length(source_line), pc.binary_length(tags_line)),
    )
    rest_bytes = pc.binary_length(rest)
    trailing_newline = pc.and_(pc.equal(rest_bytes, pc.add(csize, 1)), pc.ends_with(rest, "\n"))
    ok = pc.and_(
        ok,
        pc.and_(
            pc.and_(pc.equal(pc.add(header_bytes, 4), hsize), pc.equal(total, pc.add(hsize, csize))),
            pc.or_(trailing_newline, pc.equal(rest_bytes, csize)),
        ),
    )
    content = pc.if_else(trailing_newline, pc.utf8_slice_codeunits(rest, 0, -1), rest)
    batch = pa.RecordBatch.from_arrays(
        [
            pc.utf8_slice_codeunits(id_line, 3),
            ts,
            pc.dictionary_encode(pc.utf8_slice_codeunits(source_line, 7)),
            tag_lists(pc.utf8_slice_codeunits(tags_line, 5)),
            content,
        ],
        schema=event_schema(),
    )
    return batch, ok
