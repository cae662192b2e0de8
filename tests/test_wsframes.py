"""Client frames (protocol.wsframes) against RFC 6455 written out byte by byte."""

from __future__ import annotations

import os
import random
import socket
import struct
import threading
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raw_peer import read_client_frame, server_frame
from theia_frames.client.transport import SEND_GROUP, Connection
from theia_frames.exceptions import UsageError
from theia_frames.protocol.wsframes import NUMPY_MASK, OP_BINARY, OP_TEXT, FrameReader, client_frame, client_frames, mask

# every length class of the header (7, 16 and 64 bits) and both sides of the numpy threshold,
# with tails of every length after the last whole word
SIZES = [0, 1, 3, 7, 8, 9, 125, 126, 127, NUMPY_MASK - 1, NUMPY_MASK, NUMPY_MASK + 1, NUMPY_MASK + 7,
         65535, 65536, 65537, 200_003]


def reference_frame(opcode: int, payload: bytes, key: bytes) -> bytes:
    """RFC 6455 section 5.2, final and masked, the payload XOR-ed one byte at a time (5.3)."""
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + struct.pack("!H", n)
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + struct.pack("!Q", n)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


@pytest.mark.parametrize("size", SIZES)
def test_a_frame_of_every_length_is_byte_exact(size):
    payload, key = os.urandom(size), os.urandom(4)
    expected = reference_frame(OP_BINARY, payload, key)
    assert bytes(client_frames(OP_BINARY, [payload], key)) == expected
    assert client_frame(OP_BINARY, payload, key) == expected
    assert mask(payload, key) == expected[len(expected) - size :]


def test_frames_of_mixed_sizes_are_written_one_after_another():
    rng = random.Random(5)
    payloads = [rng.randbytes(n) for n in SIZES + SIZES[::-1]]
    keys = rng.randbytes(4 * len(payloads))
    out = client_frames(OP_BINARY, payloads, keys)
    assert isinstance(out, bytearray)
    assert bytes(out) == b"".join(reference_frame(OP_BINARY, p, keys[4 * i : 4 * i + 4]) for i, p in enumerate(payloads))


def test_payloads_may_be_any_bytes_like_object():
    payload, key = os.urandom(NUMPY_MASK + 5), b"\x01\x02\x03\x04"
    expected = reference_frame(OP_TEXT, payload, key) * 3
    got = client_frames(OP_TEXT, [bytearray(payload), memoryview(payload), payload], key * 3)
    assert bytes(got) == expected


@settings(max_examples=40, deadline=None)
@given(
    payloads=st.lists(st.one_of(st.binary(max_size=300), st.integers(NUMPY_MASK - 9, NUMPY_MASK + 9)), max_size=5),
    seed=st.integers(0, 2**32),
)
def test_any_group_of_frames_is_byte_exact(payloads, seed):
    rng = random.Random(seed)
    payloads = [rng.randbytes(p) if isinstance(p, int) else p for p in payloads]
    keys = rng.randbytes(4 * len(payloads))
    expected = b"".join(reference_frame(OP_BINARY, p, keys[4 * i : 4 * i + 4]) for i, p in enumerate(payloads))
    assert bytes(client_frames(OP_BINARY, payloads, keys)) == expected


def test_keys_that_do_not_match_the_payloads_are_refused():
    with pytest.raises(UsageError, match="four key bytes per payload: 4 for 2 payloads"):
        client_frames(OP_BINARY, [b"a", b"b"], b"abcd")


def test_send_binaries_writes_every_group_whole_and_in_order():
    # small payloads grouped past SEND_GROUP, one payload larger than a group, a last short group
    sizes = [40_000] * (SEND_GROUP // 40_000 + 2) + [SEND_GROUP + 3, 10, 0, 70_000]
    payloads = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    a, b = socket.socketpair()
    conn = Connection(types.SimpleNamespace(sock=a), "ws://test/event", True, 10.0)
    received: list[tuple[int, bytes]] = []
    reader = threading.Thread(target=lambda: received.extend(read_client_frame(b) for _ in payloads))
    reader.start()
    try:
        conn.send_binaries(payloads)
        reader.join(10)
    finally:
        conn.close()
        b.close()
    assert received == [(OP_BINARY, p) for p in payloads]


@given(st.binary(max_size=300), st.binary(min_size=4, max_size=4))
def test_mask_is_an_involution(data, key):
    assert mask(mask(data, key), key) == data


@settings(max_examples=60, deadline=None)
@given(
    messages=st.lists(
        st.one_of(st.binary(max_size=70_000).map(lambda b: (2, b)), st.text(max_size=200).map(lambda t: (1, t))),
        max_size=6,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=300_000), max_size=8),
    fragment=st.booleans(),
)
def test_frames_are_reassembled_however_the_bytes_arrive(messages, cuts, fragment):
    wire = b""
    for opcode, data in messages:
        payload = data if opcode == 2 else data.encode()
        if fragment and len(payload) > 1:
            half = len(payload) // 2
            wire += server_frame(opcode, payload[:half], fin=False) + server_frame(0, payload[half:])
        else:
            wire += server_frame(opcode, payload)
    reader = FrameReader("ws://test/find", max_message=1 << 30, max_fragments=10)
    out = []
    points = sorted({c % (len(wire) + 1) for c in cuts}) + [len(wire)]
    last = 0
    for p in points:
        reader.feed(wire[last:p])
        last = p
        reader.messages(out)
    assert out == [data for _, data in messages]
    assert not reader.buf
