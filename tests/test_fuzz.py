"""Hostile input, scaled down: the codec fuzzer and the collector fuzzer of ``scripts/``.

The full-size runs (a million codec inputs, 20,000 hostile rounds against a
collector) are ``scripts/fuzz_codec.py`` and ``scripts/fuzz_collector.py``;
their figures are in RELIABILITY.md. Here the same generators and checks run
on fewer inputs, with fixed seeds.

Each defect the fuzzers found has a test of its own below that reproduces it
in a few bytes, so it stays fixed.
"""

from __future__ import annotations

import json

import pytest

from theia_frames import Event
from theia_frames.protocol import arrow as batch
from theia_frames.protocol import codec
from theia_frames.server.collector import serve
from theia_frames.exceptions import DecodeError, InvalidFilterError
from theia_frames.filter import EventFilter
from scripts_loader import load_script



fuzz_codec = load_script("fuzz_codec")
fuzz_collector = load_script("fuzz_collector")


# --------------------------------------------------------------------------- small reproductions

HUGE_SIZE = b"event: " + b"9" * 5_000 + b" 1 1\nid:x\ntimestamp: 1\n"
NEXT_EVENT = codec.encode(Event(id="next", timestamp=2.0, content="intact"))
BAD_OFFSETS = fuzz_codec.bad_offsets_message()
NOT_UTF8 = fuzz_codec.not_utf8_message()


def test_a_size_field_of_thousands_of_digits_is_a_decode_error():
    with pytest.raises(DecodeError):
        codec.decode(HUGE_SIZE)
    with pytest.raises(DecodeError):
        codec.EventColumns().append_raw(HUGE_SIZE)
    report = codec.StreamReport()
    stream = HUGE_SIZE + b"\n" + NEXT_EVENT
    assert codec.decode_stream(stream, strict=False, report=report) == [codec.decode(NEXT_EVENT)]
    assert len(report.skipped) == 1


def test_text_that_cannot_be_utf8_is_a_decode_error():
    with pytest.raises(DecodeError):
        codec.decode("event: 1 1 0\n\udcff")
    assert codec.decode_stream("\udcff\n" + NEXT_EVENT.decode(), strict=False) == [codec.decode(NEXT_EVENT)]


@pytest.mark.parametrize("message", [BAD_OFFSETS, NOT_UTF8], ids=["offsets past the data", "not UTF-8"])
def test_ipc_to_batches_refuses_batches_that_fail_full_validation(message):
    # Reading the values of such a batch can crash the process: it must never get that far.
    with pytest.raises(DecodeError):
        batch.ipc_to_batches(message)


ABSURD_FILTERS = ['{"start": 1' + "0" * 400 + "}", "[" * 100_000 + "]" * 100_000]


@pytest.mark.parametrize("text", ABSURD_FILTERS, ids=["number too large for a float", "nested too deep"])
def test_absurd_filters_are_invalid_filters(text):
    with pytest.raises(InvalidFilterError):
        EventFilter.from_json(text, engine="re2")


@pytest.mark.parametrize("path", ["/find", "/live"])
def test_the_collector_names_the_problem_with_absurd_filters(path):
    with serve(db=":memory:", port=0) as collector:
        for text in ABSURD_FILTERS:
            with fuzz_collector.RawSocket(collector.port, path) as conn:
                conn.send(text)
                messages, code = conn.recv_until_close(30)
            assert code == 1008
            assert "error" in json.loads(messages[0])


# --------------------------------------------------------------------------- the codec fuzzer

def test_the_codec_fuzzer():
    stats = fuzz_codec.run(12_000, seed=20_240_601, workers=1)
    assert stats.total == 12_000
    assert dict(stats.failure_counts) == {}, fuzz_codec.format_report(stats, seed=20_240_601)
    assert not stats.crashed_chunks
    # every kind of input and of mutation was exercised, and valid inputs were all valid
    assert all(stats.inputs[kind] > 0 for kind in fuzz_codec._KINDS)
    assert set(stats.mutations) == {"bytes", "header", "size", "splice", "truncate"}
    for kind in ("event", "stream"):
        assert stats.valid[kind] == stats.inputs[kind]
    # intact events of damaged streams: every one yielded, or hidden inside a damaged event's declared size
    assert stats.intact > 8_000
    assert stats.intact_yielded + stats.hidden == stats.intact
    assert stats.hidden < stats.intact // 20


def test_the_reference_reading_recovers_after_damage():
    good = [Event(id=f"e{i}", timestamp=float(i), content=f"c{i}\nevent: 1 2 3") for i in range(3)]
    stream = codec.encode_many(good)
    damaged = stream.replace(b"id:e1", b"id:e1\nbogus")
    found, was_damaged = fuzz_codec.reference_walk(damaged)
    assert was_damaged
    assert [e for _, _, e in found] == [good[0], good[2]]
    assert codec.decode_stream(damaged, strict=False) == [good[0], good[2]]


def test_intact_pieces_follow_the_edits():
    data, pieces = fuzz_codec.build_stream(__import__("random").Random(3), 3)
    second = pieces[1]
    # a byte changed inside the second event touches it alone; an insertion before it shifts the third
    edits = [(second.start + 8, 1, b"X"), (pieces[0].start + 3, 0, b"abc")]
    intact = fuzz_codec.intact_pieces(pieces, edits)
    assert [event for _, event in intact] == [pieces[2].event]
    assert intact[0][0] == pieces[2].start + 3


# --------------------------------------------------------------------------- the collector fuzzer

def test_the_collector_fuzzer(tmp_path):
    report = fuzz_collector.run(1_000, seed=20_240_601, max_message_size=64 * 1024, workdir=str(tmp_path))
    assert report.problems == [], report.format()
    assert report.valid_sent > 800
    assert report.valid_found == report.valid_sent
    assert report.valid_live == report.valid_sent
    assert report.health_checks >= 20
    assert report.exit_status == 0
    assert report.integrity == "ok"
    assert report.error_answers > 0
    # the limit was enforced and hostile frames were refused with the codes the protocol names
    assert any(k.startswith("oversized") and k.endswith(": 1009") for k in report.close_codes)
    assert any(k.startswith("text not UTF-8") and k.endswith(": 1007") for k in report.close_codes)
    assert any(k.startswith("unmasked") and k.endswith(": 1002") for k in report.close_codes)
