"""Fuzz the event codec and the Arrow batch reader with generated and mutated inputs.

    python scripts/fuzz_codec.py                  # one million inputs (the recorded figures)
    python scripts/fuzz_codec.py --n 20000        # a quick run
    python scripts/fuzz_codec.py --seed 7 --workers 1

Inputs are valid encodings of random events (the upstream dialect, the Go
dialect, header lines in any order and key case), streams of several events,
Arrow batch messages, and the same after mutations: byte flips, insertions,
deletions, truncations, splices with another input, edits of the size fields
of a preamble, edits of header lines, and (for Arrow) overwritten 32-bit
fields. Every input goes through :func:`theia_frames.protocol.codec.decode`,
``decode_stream`` (strict and lenient), ``EventColumns.append_raw`` and, for
Arrow messages, :func:`theia_frames.protocol.arrow.ipc_to_batches`. The contract:

- every call returns a valid result or raises ``DecodeError``, never anything else;
- a valid encoding decodes to the event that was encoded;
- a lenient stream decode yields every intact event (its bytes and the line
  break before it untouched), except one hidden inside the declared size of a
  damaged event before it; what it yields is what the documented reading
  (parse the sizes, take exactly that many bytes, on damage skip to the next
  line that starts with ``event:``) yields, and a strict decode yields the
  same or raises at the first damage;
- an Arrow message is read as batches that pass Arrow's full validation
  (offsets, UTF-8) with the event schema and no missing values, or refused.

Inputs are generated in chunks from ``--seed``; each chunk has its own random
generator, so a failure is reproduced with ``--seed S --chunk K``. Chunks run
in ``--workers`` processes; a worker that dies (a crash in native code) is
reported with its chunk. The exit status is 1 when any contract was broken.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from theia_frames.protocol import arrow as tf_batch
from theia_frames.protocol import codec
from theia_frames.protocol.codec import EventColumns, StreamReport, split_tags
from theia_frames.event import Event
from theia_frames.exceptions import DecodeError

__all__ = [
    "CHUNK",
    "Failure",
    "Stats",
    "encode_go",
    "expected_event",
    "reference_walk",
    "bad_offsets_message",
    "not_utf8_message",
    "run",
    "run_chunk",
    "main",
]

#: Inputs per chunk (the unit of seeding and of work handed to a process).
CHUNK = 5_000
# Keep this many failing inputs per kind of failure.
_KEEP = 3

# Characters that make text interesting to a parser of lines, sizes and UTF-8.
_SPECIAL = list(":,; \t/\\=.-_\x00\x7f\x0b\x0c\x1c\x85\u2028éß漢字😀\ufeff\ufffd")
_PLAIN = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_CONTENT_TRICKS = [
    "\n",
    "\r\n",
    "\nevent: 12 3 9\n",
    "event: 1 1 0\n",
    "\nevent:",
    "\nid:x\ntimestamp: 1\n",
    "\n\n\n",
    "tags:a,b\n",
]
_INSERTS = [
    b"\n",
    b"\n\n",
    b"\r\n",
    b"event:",
    b"\nevent: ",
    b"\nevent: 5 5 0\n",
    b":",
    b",",
    b" ",
    b"0",
    b"9",
    b"\x00",
    b"\xff",
    b"\x80",
    b"\xc3",
    b"\xe2\x82",
    b"\xf0\x9f\x98",
    b"\xed\xa0\x80",  # an encoded surrogate: not valid UTF-8
    b"id:dup\n",
    b"tags:t\n",
    b"timestamp: 1.5\n",
    b"source:x\n",
    b"color:red\n",
    b"no colon\n",
]
_BYTE_VALUES = [0x0A, 0x0D, 0x3A, 0x2C, 0x20, 0x30, 0x39, 0xFF, 0x80, 0xC3, 0x65, 0x00, 0x09]
_TIMESTAMP_VALUES = [b"nan", b"inf", b"-inf", b"1e400", b"0x10", b"", b" ", b"1_0", b"1.5.5", b"\xd9\xa3", b"1" * 400]
_INT32_VALUES = [0, 1, -1, 2, 8, 0x7FFFFFFF, -0x80000000, 0x10000, 0xFFFF, 255, 4096]


# --------------------------------------------------------------------------- events


def _pool() -> str:
    # Text is cut from one long random string: per-character choices would cost
    # more than all the decoding checked here.
    rng = random.Random(20_240_229)
    return "".join(rng.choice(_SPECIAL) if rng.random() < 0.15 else rng.choice(_PLAIN) for _ in range(1 << 20))


_POOL = _pool()


def _text(rng: random.Random, n: int) -> str:
    start = rng.randrange(len(_POOL) - n)
    return _POOL[start : start + n]


def _line_text(rng: random.Random, n: int) -> str:
    """Text without line breaks (allowed in an id or a source)."""
    return _text(rng, n).replace("\n", " ").replace("\r", " ")


def random_event(rng: random.Random, index: int) -> Event:
    """A random event the format can carry; ``index`` makes its id unique in an input."""
    r = rng.random()
    if r < 0.5:
        id_ = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    elif r < 0.9:
        id_ = _line_text(rng, rng.randrange(1, 30))
    else:
        id_ = ""
    id_ = f"{index}-{id_}"
    r = rng.random()
    if r < 0.6:
        ts = rng.uniform(1e9, 2e9)
    elif r < 0.75:
        ts = float(rng.randrange(0, 2_000_000_000))
    elif r < 0.85:
        ts = rng.uniform(0, 1)
    elif r < 0.95:
        # any accepted event time (timeparse.EARLIEST_EVENT_TIME to LATEST_EVENT_TIME), before 1970 too
        ts = rng.uniform(-9_214_560_000.0, 9_214_646_399.0)
    else:
        ts = rng.choice([0.0, 1e-7, -9_214_560_000.0, 9_214_646_399.9999, 123456789.0000001])
    source = _line_text(rng, rng.randrange(0, 30)) if rng.random() < 0.8 else "/var/log/a:b"
    tags = [_line_text(rng, rng.randrange(0, 12)).replace(",", ";") for _ in range(rng.choice([0, 0, 1, 2, 3, 5]))]
    r = rng.random()
    if r < 0.1:
        content = ""
    elif r < 0.6:
        content = _text(rng, rng.randrange(1, 60))
    elif r < 0.9:
        parts = [_text(rng, rng.randrange(0, 20)) for _ in range(rng.randrange(1, 4))]
        content = rng.choice(_CONTENT_TRICKS).join(parts)
    elif r < 0.97:
        inner = random_event(rng, index) if rng.random() < 0.5 else Event(id="fake", timestamp=1.0)
        content = codec.encode(inner).decode() + _text(rng, rng.randrange(0, 10))
    else:
        content = _text(rng, rng.randrange(2_000, 20_000))
    return Event(id=id_, timestamp=ts, source=source, tags=tags, content=content)


def encode_go(event: Event, *, shuffle: random.Random | None = None) -> bytes:
    """The Go client's dialect: no space after colons, 6 decimals, no tags line when empty.

    With ``shuffle``, header lines come in a random order with keys in random case.
    """
    lines = [("id", event.id), ("timestamp", f"{event.timestamp:.6f}"), ("source", event.source)]
    if event.tags:
        lines.append(("tags", ",".join(event.tags)))
    return _assemble(lines, event.content, b"event:", shuffle)


def _encode_upstream_variant(event: Event, shuffle: random.Random) -> bytes:
    lines = [
        ("id", event.id),
        ("timestamp", f" {event.timestamp:.7f}"),
        ("source", event.source),
        ("tags", ",".join(event.tags)),
    ]
    return _assemble(lines, event.content, b"event: ", shuffle) + b"\n"


def _assemble(lines: list[tuple[str, str]], content: str, preamble: bytes, shuffle: random.Random | None) -> bytes:
    if shuffle is not None:
        shuffle.shuffle(lines)
        lines = [("".join(c.upper() if shuffle.random() < 0.3 else c for c in k), v) for k, v in lines]
    header = "".join(f"{k}:{v}\n" for k, v in lines).encode()
    body = content.encode()
    return preamble + b"%d %d %d\n" % (len(header) + len(body), len(header), len(body)) + header + body


def expected_event(event: Event, dialect: str) -> Event:
    """What decoding ``event`` encoded in ``dialect`` must give (the timestamp's text has 7 or 6 decimals)."""
    places = 7 if dialect == "upstream" else 6
    return Event(
        id=event.id,
        timestamp=float(f"{event.timestamp:.{places}f}"),
        source=event.source,
        tags=split_tags(",".join(event.tags)),
        content=event.content,
    )


@dataclass
class Piece:
    """One event inside an input: where its bytes are and what it decodes to."""

    start: int  # offset of "event:"
    nl: int  # offset of the newline that ends the preamble
    hend: int  # offset after the header
    cend: int  # offset after the content
    event: Event


def encode_random(rng: random.Random, index: int) -> tuple[bytes, str, Event]:
    """A random event in a random dialect: (bytes, dialect, expected decoded event)."""
    event = random_event(rng, index)
    r = rng.random()
    if r < 0.45:
        return codec.encode(event), "upstream", expected_event(event, "upstream")
    if r < 0.8:
        return encode_go(event), "go", expected_event(event, "go")
    if r < 0.9:
        return _encode_upstream_variant(event, rng), "upstream", expected_event(event, "upstream")
    return encode_go(event, shuffle=rng), "go", expected_event(event, "go")


def build_stream(rng: random.Random, count: int, *, single: bool = False) -> tuple[bytes, list[Piece]]:
    """``count`` random events as one byte stream, and where each one is."""
    out = bytearray()
    pieces: list[Piece] = []
    if not single and rng.random() < 0.1:
        out += rng.choice([b"\n", b"\r\n", b"\n\n"])
    for i in range(count):
        data, dialect, expected = encode_random(rng, i)
        start = len(out)
        nl = data.index(b"\n")
        sizes = data[6:nl].split()
        hsize, csize = int(sizes[1]), int(sizes[2])
        piece = Piece(start, start + nl, start + nl + 1 + hsize, start + nl + 1 + hsize + csize, expected)
        out += data
        if not single:
            if dialect == "go" or rng.random() < 0.7:
                out += rng.choice([b"\n", b"\n\n", b"\r\n", b"\n\r\n"])
        pieces.append(piece)
    return bytes(out), pieces


# --------------------------------------------------------------------------- mutations

Edit = tuple[int, int, bytes]  # (offset in the original, bytes deleted there, bytes inserted)


def apply_edits(data: bytes, edits: list[Edit]) -> bytes:
    out: list[bytes] = []
    last = 0
    for pos, deleted, inserted in sorted(edits, key=lambda e: e[0]):
        out.append(data[last:pos])
        out.append(inserted)
        last = pos + deleted
    out.append(data[last:])
    return b"".join(out)


def _overlaps(edits: list[Edit], new: Edit) -> bool:
    q, e, _ = new
    for p, d, _ in edits:
        # edits keep a gap of at least one byte, so their order is never ambiguous
        if not (q + e < p or p + d < q):
            return True
    return False


def _number_spans(data: bytes, piece: Piece) -> list[tuple[int, int]]:
    """Offsets of the three size fields of a preamble."""
    spans = []
    pos = piece.start + 6
    while pos < piece.nl and len(spans) < 3:
        while pos < piece.nl and data[pos] == 0x20:
            pos += 1
        end = pos
        while end < piece.nl and data[end] != 0x20:
            end += 1
        if end > pos:
            spans.append((pos, end))
        pos = end
    return spans


def _new_size(rng: random.Random, old: int) -> bytes:
    r = rng.random()
    if r < 0.3:
        return b"%d" % max(old + rng.choice([-1, 1, -2, 2, 7, -7]), 0)
    if r < 0.45:
        return b"%d" % rng.randrange(0, 10_000)
    if r < 0.55:
        return b"0"
    if r < 0.62:
        return b"9" * rng.choice([20, 300, 4_301, 6_000])
    if r < 0.7:
        return b"0" * rng.randrange(1, 5) + b"%d" % old
    return rng.choice([b"-1", b"+5", b"1_0", b"\xd9\xa3", b"", b"  ", b"\t", b"1 2", b"x", b"1e3", b"\xef\xbc\x91"])


def _size_edit(rng: random.Random, data: bytes, piece: Piece, other: bytes) -> Edit | None:
    spans = _number_spans(data, piece)
    if len(spans) != 3:
        return None
    if rng.random() < 0.35:
        # change the header and content sizes, keeping the total consistent
        hsize = int(data[spans[1][0] : spans[1][1]])
        csize = int(data[spans[2][0] : spans[2][1]])
        h = max(hsize + rng.choice([-3, -1, 1, 2, 5, 40]), 0) if rng.random() < 0.5 else hsize
        c = max(csize + rng.choice([-5, -1, 1, 2, 3, 30, 300, 5_000]), 0)
        text = b" %d %d %d" % (h + c, h, c)
        return (piece.start + 6, piece.nl - piece.start - 6, text)
    lo, hi = rng.choice(spans)
    return (lo, hi - lo, _new_size(rng, int(data[lo:hi])))


def _header_edit(rng: random.Random, data: bytes, piece: Piece, other: bytes) -> Edit | None:
    lines = []
    pos = piece.nl + 1
    while pos < piece.hend:
        end = data.find(b"\n", pos, piece.hend)
        if end < 0:
            break
        lines.append((pos, end + 1))
        pos = end + 1
    if not lines:
        return None
    lo, hi = rng.choice(lines)
    line = data[lo:hi]
    r = rng.random()
    if r < 0.2:
        return (hi, 0, line)  # duplicate key
    if r < 0.4:
        return (lo, hi - lo, b"")  # missing key
    colon = line.find(b":")
    if colon < 0:
        return None
    if r < 0.6:
        return (lo, colon, rng.choice([b"ID", b"Timestamp", b"tag", b"event", b"", b" id ", b"i d", b"\xff"]))
    if r < 0.85 and line.lower().startswith(b"timestamp"):
        return (lo + colon + 1, hi - 1 - (lo + colon + 1), rng.choice(_TIMESTAMP_VALUES))
    return (lo + colon + 1, 0, rng.choice(_INSERTS))


def _byte_edit(rng: random.Random, data: bytes, lo: int, hi: int, other: bytes) -> Edit | None:
    if hi <= lo:
        return None
    pos = rng.randrange(lo, hi)
    r = rng.random()
    if r < 0.3:
        value = data[pos] ^ (1 << rng.randrange(8))
        return (pos, 1, bytes([value]))
    if r < 0.5:
        return (pos, 1, bytes([rng.choice(_BYTE_VALUES)]))
    if r < 0.6:
        return (pos, 1, bytes([rng.randrange(256)]))
    if r < 0.8:
        token = rng.choice(_INSERTS) if rng.random() < 0.7 else rng.randbytes(rng.randrange(1, 9))
        return (pos, 0, token)
    if r < 0.9:
        return (pos, min(rng.randrange(1, 17), len(data) - pos), b"")
    if other:
        q = rng.randrange(len(other))
        return (pos, min(rng.randrange(1, 40), len(data) - pos), other[q : q + rng.randrange(1, 40)])
    return None


def mutate(
    rng: random.Random, data: bytes, pieces: list[Piece], other: bytes
) -> tuple[bytes, list[Edit], Counter[str]]:
    """Apply one to three mutations; returns the new bytes, the edits and their kinds."""
    edits: list[Edit] = []
    kinds: Counter[str] = Counter()
    ended = False
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3])):
        piece = rng.choice(pieces)
        r = rng.random()
        edit: Edit | None
        if r < 0.25:
            kind, edit = "size", _size_edit(rng, data, piece, other)
        elif r < 0.4:
            kind, edit = "header", _header_edit(rng, data, piece, other)
        elif r < 0.5 and not ended and len(data) > 1:
            kind, edit = "truncate", (rng.randrange(1, len(data)), 0, b"")
            edit = (edit[0], len(data) - edit[0], b"")
        elif r < 0.55 and not ended and other:
            pos = rng.randrange(len(data))
            kind, edit = "splice", (pos, len(data) - pos, other[rng.randrange(len(other)) :])
        elif r < 0.8:
            kind, edit = "bytes", _byte_edit(rng, data, piece.start, piece.cend, other)
        else:
            kind, edit = "bytes", _byte_edit(rng, data, 0, len(data), other)
        if edit is None or _overlaps(edits, edit):
            continue
        if edit[0] + edit[1] >= len(data) and edit[1]:
            ended = True
        edits.append(edit)
        kinds[kind] += 1
    if not edits:
        pos = rng.randrange(len(data) + 1)
        edits.append((pos, 0, b"\xff"))
        kinds["bytes"] += 1
    return apply_edits(data, edits), edits, kinds


def intact_pieces(pieces: list[Piece], edits: list[Edit]) -> list[tuple[int, Event]]:
    """The events no edit touched, with their offsets in the mutated input.

    An event is touched by an edit of its bytes or of the line break before
    it, or by bytes inserted right before its ``event:``.
    """
    out = []
    for piece in pieces:
        guard = piece.start - 1  # the line break before it (or nothing, for the first)
        touched = False
        shift = 0
        for pos, deleted, inserted in edits:
            if deleted:
                if pos < piece.cend and pos + deleted > max(guard, 0):
                    touched = True
                    break
            elif guard < pos < piece.cend:
                touched = True
                break
            if pos < piece.start:
                shift += len(inserted) - deleted
        if not touched:
            out.append((piece.start + shift, piece.event))
    return out


# --------------------------------------------------------------------------- the reference reading


def _skip_separators(buf: bytes, pos: int) -> int:
    while pos < len(buf) and buf[pos] in (10, 13):
        pos += 1
    return pos


def _event_at(buf: bytes, pos: int) -> tuple[Event, int] | None:
    if not buf.startswith(b"event:", pos):
        return None
    nl = buf.find(b"\n", pos)
    if nl < 0:
        return None
    parts = buf[pos + 6 : nl].split()
    # sizes of more than 30 digits cannot fit any input; the codec must refuse them too
    if len(parts) != 3 or not all(p.isdigit() and len(p) <= 30 for p in parts):
        return None
    total, hsize, csize = (int(p) for p in parts)
    cend = nl + 1 + hsize + csize
    if total != hsize + csize or cend > len(buf):
        return None
    try:
        return codec.decode(buf[pos:cend]), cend
    except DecodeError:
        return None


def reference_walk(buf: bytes) -> tuple[list[tuple[int, int, Event]], bool]:
    """The documented lenient reading: ``[(start, end, event)]`` and whether anything was damaged.

    Parse the preamble, take exactly the declared sizes, skip the line breaks
    between events; at damage, skip to the next line that starts with ``event:``.
    """
    found: list[tuple[int, int, Event]] = []
    damaged = False
    pos = _skip_separators(buf, 0)
    while pos < len(buf):
        hit = _event_at(buf, pos)
        if hit is None:
            damaged = True
            nxt = buf.find(b"\nevent:", pos + 1)
            pos = len(buf) if nxt < 0 else nxt + 1
            continue
        event, cend = hit
        found.append((pos, cend, event))
        pos = _skip_separators(buf, cend)
    return found, damaged


# --------------------------------------------------------------------------- checks


class ContractBroken(Exception):
    """A call did something the contract does not allow."""


def _call(what: str, fn: Callable[[], Any]) -> tuple[str, Any]:
    """("ok", result) or ("DecodeError", exc); anything else breaks the contract."""
    try:
        return "ok", fn()
    except DecodeError as exc:
        if not isinstance(exc.reason, str) or not isinstance(exc.offset, int) or not isinstance(exc.excerpt, str):
            raise ContractBroken(f"{what}: a DecodeError without reason/offset/excerpt: {exc!r}") from exc
        return "DecodeError", exc
    except Exception as exc:
        raise ContractBroken(f"{what} raised {type(exc).__name__}: {exc}") from exc


def _check_event(what: str, event: Any) -> None:
    if not isinstance(event, Event):
        raise ContractBroken(f"{what} returned {type(event).__name__}, not an Event")
    if not (
        isinstance(event.id, str)
        and isinstance(event.source, str)
        and isinstance(event.content, str)
        and isinstance(event.timestamp, float)
        and isinstance(event.tags, list)
        and all(isinstance(t, str) for t in event.tags)
    ):
        raise ContractBroken(f"{what} returned an event with fields of the wrong types: {event!r}"[:300])
    if event.timestamp != event.timestamp or event.timestamp in (float("inf"), float("-inf")):
        raise ContractBroken(f"{what} returned a timestamp that is not finite: {event.timestamp!r}")


@dataclass
class Outcome:
    valid: int = 0
    refused: int = 0
    intact: int = 0
    intact_yielded: int = 0
    hidden: int = 0


def check_bytes(data: bytes, pieces: list[Piece], edits: list[Edit] | None, single: bool) -> Outcome:
    """Run every decoder on one input and check the contract (``edits`` None: a valid input)."""
    out = Outcome()
    walk, damaged = reference_walk(data)
    walked = [e for _, _, e in walk]
    for _, _, event in walk:
        _check_event("reading a stream", event)

    report = StreamReport()
    status, lenient = _call(
        "decode_stream(strict=False)", lambda: codec.decode_stream(data, strict=False, report=report)
    )
    if status != "ok":
        raise ContractBroken(f"decode_stream(strict=False) raised {lenient!r}")
    if lenient != walked:
        raise ContractBroken(
            f"decode_stream(strict=False) yielded {len(lenient)} events, the documented reading {len(walked)}"
        )
    if report.events != len(lenient) or bool(report.skipped) != damaged:
        raise ContractBroken(f"the StreamReport disagrees: {report.events} events, {len(report.skipped)} skips")

    status, strict = _call("decode_stream(strict=True)", lambda: codec.decode_stream(data))
    if damaged != (status == "DecodeError") or (status == "ok" and strict != walked):
        raise ContractBroken(f"decode_stream(strict=True) gave {status}, the reading found damage: {damaged}")

    cols = EventColumns()
    status, _ = _call("EventColumns.append_raw", lambda: cols.append_raw(data))
    lengths = {len(cols.id), len(cols.timestamp), len(cols.source), len(cols.tags), len(cols.content)}
    if len(lengths) != 1:
        raise ContractBroken(f"EventColumns.append_raw left columns of different lengths: {sorted(lengths)}")
    rows = list(cols.events())
    if status == "ok" and (damaged or rows != walked):
        raise ContractBroken(
            "EventColumns.append_raw accepted what a strict stream decode refuses, or read it otherwise"
        )
    if status != "ok" and rows != walked[: len(rows)]:
        raise ContractBroken("EventColumns.append_raw kept rows that are not the events before the damage")

    if single:
        status, one = _call("decode", lambda: codec.decode(data))
        if status == "ok":
            _check_event("decode", one)
            if walked != [one]:
                raise ContractBroken("decode accepted an input that does not read as exactly that one event")
        out.valid += status == "ok"
        out.refused += status != "ok"
    else:
        out.valid += not damaged
        out.refused += damaged

    if edits is None:
        expected = [p.event for p in pieces]
        if walked != expected or (single and one != expected[0]):
            raise ContractBroken("a valid encoding did not decode to the events encoded")
        return out

    spans = [(s, e) for s, e, _ in walk]
    for offset, event in intact_pieces(pieces, edits):
        out.intact += 1
        if event in lenient:
            out.intact_yielded += 1
        elif any(s < offset < e for s, e in spans):
            out.hidden += 1  # inside the declared size of a damaged event: nothing can tell
        else:
            raise ContractBroken(f"the intact event at offset {offset} was not yielded by a lenient decode")
    return out


def check_text(text: str) -> Outcome:
    """``decode`` and ``decode_stream`` also take text."""
    out = Outcome()
    status, result = _call("decode(str)", lambda: codec.decode(text))
    if status == "ok":
        _check_event("decode(str)", result)
    out.valid += status == "ok"
    out.refused += status != "ok"
    _call("decode_stream(str, strict=False)", lambda: codec.decode_stream(text, strict=False))
    return out


# --------------------------------------------------------------------------- Arrow


def _arrow_message(rng: random.Random) -> tuple[bytes, list[dict[str, Any]] | None]:
    """A batch message and its rows (None: a valid Arrow stream that is not a valid batch)."""
    schema = tf_batch.event_schema()
    r = rng.random()
    if r < 0.85:
        batches = []
        rows: list[dict[str, Any]] = []
        for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
            events = [random_event(rng, i) for i in range(rng.choice([0, 1, 2, 5, 20]))]
            b = tf_batch.events_to_batch(events)
            batches.append(b)
            rows.extend(b.to_pylist())
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, schema) as writer:
            for b in batches:
                writer.write(b)
        return sink.getvalue().to_pybytes(), rows
    # valid Arrow that the event reader must refuse: other types, other names, missing values
    n = rng.randrange(1, 4)
    cols: list[pa.Array] = [
        pa.array([f"i{k}" for k in range(n)]),
        pa.array([1.0 * k for k in range(n)]),
        pa.array(["s"] * n).dictionary_encode(),
        pa.array([["t"]] * n, pa.list_(pa.string())),
        pa.array(["c"] * n),
    ]
    names = list(schema.names)
    which = rng.randrange(4)
    if which == 0:
        cols[1] = pa.array(list(range(n)), pa.int64())
    elif which == 1:
        names[4] = "body"
    elif which == 2:
        k = rng.randrange(5)
        cols[k] = pa.array([None] + cols[k].to_pylist()[1:], cols[k].type)
    else:
        cols.append(pa.array([0] * n))
        names.append("extra")
    return tf_batch.batch_to_ipc(pa.RecordBatch.from_arrays(cols, names=names)), None


def _mutate_arrow(rng: random.Random, data: bytes, other: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 3])):
        if not buf:
            break
        r = rng.random()
        if r < 0.35:
            buf[rng.randrange(len(buf))] = rng.choice([rng.randrange(256), 0, 0xFF, 0x80, 0x7F])
        elif r < 0.6 and len(buf) >= 8:
            pos = rng.randrange(0, len(buf) - 4) & ~3
            value = rng.choice(_INT32_VALUES + [len(buf), len(buf) + 8, rng.randrange(-64, 65)])
            buf[pos : pos + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")
        elif r < 0.7:
            del buf[rng.randrange(len(buf)) :]
        elif r < 0.8:
            pos = rng.randrange(len(buf))
            del buf[pos : pos + rng.randrange(1, 16)]
        elif r < 0.9:
            pos = rng.randrange(len(buf) + 1)
            buf[pos:pos] = rng.randbytes(rng.randrange(1, 16))
        else:
            pos = rng.randrange(len(buf) + 1)
            buf[pos:] = other[rng.randrange(len(other) + 1) :]
    return bytes(buf)


def check_arrow(data: bytes, rows: list[dict[str, Any]] | None, mutated: bool) -> Outcome:
    """``ipc_to_batches``: batches that pass Arrow's full validation, or DecodeError."""
    out = Outcome()
    status, batches = _call("ipc_to_batches", lambda: tf_batch.ipc_to_batches(data))
    if status != "ok":
        if not mutated and rows is not None:
            raise ContractBroken(f"ipc_to_batches refused a valid batch message: {batches}")
        out.refused += 1
        return out
    if not mutated and rows is None:
        raise ContractBroken("ipc_to_batches accepted an Arrow stream that is not a batch of events")
    schema = tf_batch.event_schema()
    for b in batches:
        if not isinstance(b, pa.RecordBatch) or not b.schema.equals(schema):
            raise ContractBroken("ipc_to_batches returned something that is not a batch with the event schema")
        try:
            b.validate(full=True)
        except (pa.ArrowInvalid, pa.ArrowException) as exc:
            # Reading such a batch (to_pylist, compute kernels) can crash the process.
            raise ContractBroken(f"ipc_to_batches accepted a batch that fails Arrow's full validation: {exc}") from exc
        if any(column.null_count for column in b.columns):
            raise ContractBroken("ipc_to_batches accepted a batch with missing values")
    got = [row for b in batches for row in b.to_pylist()]
    if not mutated and got != rows:
        raise ContractBroken("a valid batch message did not read back as the rows written")
    out.valid += 1
    return out


def bad_offsets_message() -> bytes:
    """A batch message whose content offsets run past their data (crafted; reading its values crashes)."""
    import struct

    events = [Event(id=f"i{i}", timestamp=1.0 + i, content=c) for i, c in enumerate(["A" * 11, "B" * 13, "C" * 17])]
    message = bytearray(tf_batch.batch_to_ipc(tf_batch.events_to_batch(events)))
    at = message.find(struct.pack("<4i", 0, 11, 24, 41))
    assert at > 0
    message[at + 4 : at + 8] = struct.pack("<i", 0x7F000000)
    return bytes(message)


def not_utf8_message() -> bytes:
    """A batch message whose content column holds bytes that are not UTF-8 (crafted)."""
    events = [Event(id="u1", timestamp=1.0, content="\u00e9t\u00e9"), Event(id="u2", timestamp=2.0, content="ok")]
    message = bytearray(tf_batch.batch_to_ipc(tf_batch.events_to_batch(events)))
    at = message.find("\u00e9t\u00e9".encode())
    assert at > 0
    message[at] = 0xFF
    return bytes(message)


# --------------------------------------------------------------------------- running


@dataclass
class Failure:
    """One broken contract: where to find the input, what happened."""

    kind: str
    chunk: int
    index: int
    message: str
    data: bytes
    trace: str

    @property
    def signature(self) -> str:
        # the message up to its first colon names the call and the exception (or the broken rule)
        return f"{self.kind}: {self.message.split(':')[0]}"


@dataclass
class Stats:
    inputs: Counter[str] = field(default_factory=Counter)
    valid: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    mutations: Counter[str] = field(default_factory=Counter)
    intact: int = 0
    intact_yielded: int = 0
    hidden: int = 0
    failed: int = 0
    failures: dict[str, list[Failure]] = field(default_factory=dict)
    failure_counts: Counter[str] = field(default_factory=Counter)
    crashed_chunks: list[int] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.inputs.values())

    def merge(self, other: Stats) -> None:
        self.inputs.update(other.inputs)
        self.valid.update(other.valid)
        self.refused.update(other.refused)
        self.mutations.update(other.mutations)
        self.intact += other.intact
        self.intact_yielded += other.intact_yielded
        self.hidden += other.hidden
        self.failed += other.failed
        self.failure_counts.update(other.failure_counts)
        for sig, items in other.failures.items():
            kept = self.failures.setdefault(sig, [])
            kept.extend(items[: _KEEP - len(kept)])
        self.crashed_chunks.extend(other.crashed_chunks)

    def add(self, kind: str, outcome: Outcome) -> None:
        self.inputs[kind] += 1
        self.valid[kind] += outcome.valid
        self.refused[kind] += outcome.refused
        self.intact += outcome.intact
        self.intact_yielded += outcome.intact_yielded
        self.hidden += outcome.hidden

    def fail(self, failure: Failure) -> None:
        self.failed += 1
        self.failure_counts[failure.signature] += 1
        kept = self.failures.setdefault(failure.signature, [])
        if len(kept) < _KEEP:
            kept.append(failure)


# (kind, share of the inputs)
MIX = [
    ("event", 0.07),
    ("event-mutated", 0.40),
    ("stream", 0.05),
    ("stream-mutated", 0.28),
    ("text", 0.03),
    ("arrow", 0.03),
    ("arrow-mutated", 0.14),
]
_KINDS = [k for k, _ in MIX]
_WEIGHTS = [w for _, w in MIX]


def _one_input(rng: random.Random, kind: str, stats: Stats) -> tuple[bytes, Callable[[], Outcome]]:
    if kind.startswith("arrow"):
        data, rows = _arrow_message(rng)
        if kind == "arrow":
            return data, lambda: check_arrow(data, rows, False)
        other, _ = _arrow_message(rng)
        mutated = _mutate_arrow(rng, data, other)
        return mutated, lambda: check_arrow(mutated, rows, True)
    if kind == "text":
        data, pieces = build_stream(rng, 1, single=True)
        if rng.random() < 0.5:
            data, _, _ = mutate(rng, data, pieces, b"")
        text = data.decode("utf-8", "surrogateescape" if rng.random() < 0.2 else "replace")
        return data, lambda: check_text(text)
    single = kind.startswith("event")
    data, pieces = build_stream(rng, 1 if single else rng.randrange(2, 9), single=single)
    if not kind.endswith("mutated"):
        return data, lambda: check_bytes(data, pieces, None, single)
    other, _ = build_stream(rng, 1, single=True) if rng.random() < 0.7 else (b"", [])
    mutated, edits, kinds = mutate(rng, data, pieces, other)
    stats.mutations.update(kinds)
    return mutated, lambda: check_bytes(mutated, pieces, edits, single)


def run_chunk(seed: int, chunk: int, count: int = CHUNK) -> Stats:
    """Generate and check ``count`` inputs of chunk ``chunk`` of the run seeded ``seed``."""
    rng = random.Random(seed * 1_000_003 + chunk)
    stats = Stats()
    for index in range(count):
        kind = rng.choices(_KINDS, _WEIGHTS)[0]
        data, check = _one_input(rng, kind, stats)
        try:
            stats.add(kind, check())
        except ContractBroken as exc:
            stats.inputs[kind] += 1
            cause = exc.__cause__
            trace = "".join(traceback.format_exception(cause)) if cause is not None else ""
            stats.fail(Failure(kind, chunk, index, str(exc), data, trace))
    return stats


def _chunks(n: int) -> Iterator[tuple[int, int]]:
    chunk = 0
    while n > 0:
        yield chunk, min(CHUNK, n)
        n -= CHUNK
        chunk += 1


def run(n: int, *, seed: int = 1, workers: int = 1, progress: Callable[[Stats], None] | None = None) -> Stats:
    """Check ``n`` inputs in chunks, on ``workers`` processes (1: in this process)."""
    t0 = time.perf_counter()
    stats = Stats()
    if workers <= 1:
        for chunk, count in _chunks(n):
            stats.merge(run_chunk(seed, chunk, count))
            if progress is not None:
                progress(stats)
    else:
        pending = list(_chunks(n))
        try:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [(c, pool.submit(run_chunk, seed, c, k)) for c, k in pending]
                for c, future in futures:
                    stats.merge(future.result())
                    pending = [p for p in pending if p[0] != c]
                    if progress is not None:
                        progress(stats)
        except BrokenProcessPool:
            # A worker died in native code. The chunks left run one per process,
            # so that each crash is pinned to its chunk.
            for c, k in pending:
                try:
                    with ProcessPoolExecutor(max_workers=1) as single:
                        stats.merge(single.submit(run_chunk, seed, c, k).result())
                except BrokenProcessPool:
                    stats.crashed_chunks.append(c)
    stats.seconds = time.perf_counter() - t0
    return stats


def format_report(stats: Stats, *, seed: int) -> str:
    lines = [
        f"inputs: {stats.total:,} in {stats.seconds:.1f} s "
        f"({stats.total / max(stats.seconds, 1e-9):,.0f}/s), seed {seed}",
        f"{'kind':<16}{'inputs':>11}{'valid':>11}{'DecodeError':>13}",
    ]
    for kind in _KINDS:
        lines.append(f"{kind:<16}{stats.inputs[kind]:>11,}{stats.valid[kind]:>11,}{stats.refused[kind]:>13,}")
    lines.append("mutations applied: " + ", ".join(f"{k} {v:,}" for k, v in sorted(stats.mutations.items())))
    lines.append(
        f"intact events in mutated streams: {stats.intact:,}; yielded by the lenient decode: {stats.intact_yielded:,}; "
        f"hidden inside a damaged event's declared size: {stats.hidden:,}; missed: "
        f"{stats.intact - stats.intact_yielded - stats.hidden:,}"
    )
    lines.append(f"broken contracts: {stats.failed:,}; crashed chunks: {stats.crashed_chunks or 'none'}")
    for sig, count in stats.failure_counts.most_common():
        lines.append(f"  {count:>8,} x {sig}")
        for f in stats.failures.get(sig, [])[:1]:
            lines.append(f"           e.g. chunk {f.chunk} input {f.index}: {f.data[:120]!r}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="inputs to check (default 1,000,000)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the run (default 1)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: one per core)")
    parser.add_argument("--chunk", type=int, default=None, help="check only this chunk (to reproduce a failure)")
    parser.add_argument("--show", action="store_true", help="print every kept failing input with its traceback")
    args = parser.parse_args(argv)
    if args.chunk is not None:
        t0 = time.perf_counter()
        stats = run_chunk(args.seed, args.chunk)
        stats.seconds = time.perf_counter() - t0
    else:
        last = [time.perf_counter()]

        def progress(s: Stats) -> None:
            if time.perf_counter() - last[0] > 10:
                last[0] = time.perf_counter()
                print(f"  ... {s.total:,} inputs, {s.failed:,} broken", file=sys.stderr, flush=True)

        stats = run(args.n, seed=args.seed, workers=args.workers, progress=progress)
    print(format_report(stats, seed=args.seed))
    if args.show:
        for items in stats.failures.values():
            for f in items:
                print(f"\n--- {f.signature}\nchunk {f.chunk} input {f.index}\n{f.data!r}\n{f.trace}")
    return 1 if stats.failed or stats.crashed_chunks else 0


if __name__ == "__main__":
    sys.exit(main())
