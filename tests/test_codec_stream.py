"""StreamDecoder: a stream of concatenated events decoded a piece at a time, in bounded memory."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from theia_frames.protocol.codec import StreamDecoder, StreamReport, decode_stream, encode
from theia_frames.event import Event
from theia_frames.exceptions import DecodeError


def _events(n, content="21.5C\nevent: 1 2 3 looks like a preamble"):
    return [Event(id=f"e{i}", timestamp=1.0 + i, source="/dev/s", tags=["a"] if i % 2 else [], content=content)
            for i in range(n)]


def _store(evs):
    return b"".join(encode(e) + b"\n" for e in evs)


def _decode_in_pieces(data: bytes, cuts: list[int], **kw):
    damage = []
    decoder = StreamDecoder(on_damage=lambda *d: damage.append(d), **kw)
    ids = []
    held = 0
    last = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        decoder.feed(data[last:cut])
        held = max(held, decoder.buffered)
        ids += decoder.take().id
        last = cut
    decoder.finish()
    ids += decoder.take().id
    return ids, damage, held


_damage = st.sampled_from([
    b"GARBAGE\x00\xff in the middle\n",
    b"event: 99 3 96\nid:\n",
    b"event: 1 2 4\n",
    b"event:\n\nevent:\n",
    b"\xff\xfe\n",
    b"event: 30 30 0\nid:x\ntimestamp: nope\nsource:\n",
])


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 8), st.lists(st.tuples(st.integers(0, 8), _damage), max_size=3), st.data())
def test_pieces_give_what_the_whole_stream_gives(n, damages, data):
    evs = _events(n)
    parts = [encode(e) + b"\n" for e in evs]
    for at, junk in sorted(damages, reverse=True):
        parts.insert(min(at, len(parts)), junk)
    raw = b"".join(parts)
    whole = _decode_in_pieces(raw, [])
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=12))
    ids, damage, _ = _decode_in_pieces(raw, cuts)
    assert (ids, damage) == whole[:2]
    # and every intact event is there (each damage ends its line, so the next event starts one)
    assert set(e.id for e in evs) <= set(ids)
    # the regions cover exactly the bytes between the events
    report = StreamReport()
    assert [e.id for e in decode_stream(raw, strict=False, report=report)] == ids
    assert report.skipped == [(off, why) for off, why, _ in damage]


def test_adjacent_damage_is_one_region_and_the_next_event_ends_it():
    junk = b"event:\n\n" * 1000 + b"event: 1 2 4\n" * 1000 + b"event: 99 3 96\n" * 1000
    good = _store(_events(2))
    ids, damage, _ = _decode_in_pieces(junk + good, list(range(0, len(junk), 777)))
    assert ids == ["e0", "e1"]
    assert damage == [(0, damage[0][1], len(junk))]


def test_the_decoder_holds_a_piece_and_a_line_not_a_stream_of_zeros():
    zeros = bytes(1 << 20)
    decoder = StreamDecoder(on_damage=lambda *d: None)
    for _ in range(64):
        decoder.feed(zeros)
        assert decoder.buffered <= 4096
    decoder.feed(b"\n" + _store(_events(1)))
    decoder.finish()
    assert decoder.take().id == ["e0"]


def test_an_event_declaring_more_than_max_event_is_damage_and_not_buffered():
    damage = []
    decoder = StreamDecoder(max_event=10_000, on_damage=lambda *d: damage.append(d))
    decoder.feed(b"event: 3000000000 10 2999999990\n")
    for _ in range(40):
        decoder.feed(bytes(65536))
        assert decoder.buffered <= 65536 + 4096
    decoder.feed(b"\n" + _store(_events(1)))
    decoder.finish()
    assert decoder.take().id == ["e0"]
    ((offset, reason, size),) = damage
    assert offset == 0 and "3000000000 bytes, more than the bound of 10000" in reason


def test_an_event_within_max_event_is_waited_for_across_pieces():
    big = _events(1, content="x" * 50_000)
    raw = _store(big)
    ids, damage, held = _decode_in_pieces(raw, list(range(0, len(raw), 1000)), max_event=60_000)
    assert ids == ["e0"] and not damage and held <= len(raw)
    ids, damage, _ = _decode_in_pieces(raw, list(range(0, len(raw), 1000)), max_event=40_000)
    assert ids == [] and "more than the bound of 40000" in damage[0][1]


def test_strict_raises_with_the_offset_in_the_stream():
    raw = _store(_events(3)) + b"GARBAGE\n"
    decoder = StreamDecoder(strict=True, name="file-1")
    decoder.feed(raw[:50])
    with pytest.raises(DecodeError, match="file-1: no preamble") as info:
        decoder.feed(raw[50:])
        decoder.finish()
    assert info.value.offset == len(_store(_events(3)))
    assert "GARBAGE" in info.value.excerpt
