"""Fuzz every endpoint of the collector with hostile clients, valid events in between.

    python scripts/fuzz_collector.py                   # 20,000 rounds (the recorded figures)
    python scripts/fuzz_collector.py --rounds 500      # a quick run

The collector runs in its own process (``theia-frames serve``) on a fresh
database file with a small ``--max-message-size``. Each round is one hostile
act, chosen at random, and most rounds also send valid events, on the same
connection as the garbage where the garbage leaves it open:

- ``/event``: damaged events (the mutations of ``fuzz_codec.py``), binary
  garbage, text garbage, damaged Arrow batches, batches with rows the plain
  format cannot carry, messages beyond the size limit (whole or in
  fragments), text frames that are not UTF-8, frames that break the WebSocket
  protocol (unmasked, reserved bits or opcodes, oversized or fragmented
  control frames, absurd lengths), a connection reset in the middle of a frame;
- ``/find`` and ``/live``: filters that are not JSON, of the wrong types, with
  bad patterns, absurdly nested or with absurd numbers, binary garbage,
  garbage after a valid subscription;
- any path: TCP connections that never speak, handshakes cut short,
  handshakes followed by silence, HTTP that is not a WebSocket upgrade,
  random bytes.

Checked: the collector process never dies and answers a ``/find`` after
every 50 rounds; every valid event (those sent before any frame that closes
their connection) is stored, exactly, and found with a find at the end; a
well-behaved live subscriber receives every one of them; after a normal stop
``PRAGMA integrity_check`` on the database file says ``ok`` and a collector
restarted on it finds as many events as before; the collector's log holds no
traceback (an exception no handler expected).

This module is also the kit of the reliability proofs: :class:`RawSocket` (a
WebSocket client that sends any frame, valid or not) and
:class:`CollectorProcess` (a collector in its own process).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import re
import select
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

__all__ = [
    "RawSocket",
    "CollectorProcess",
    "Closed",
    "free_port",
    "wait_until",
    "integrity_check",
    "Fuzzer",
    "FuzzReport",
    "run",
    "main",
]

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
SUBPROTOCOL = "theia-frames.v2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, step: float = 0.02) -> None:
    """Poll ``predicate`` until true; a deadline only to report a hang, never a measurement."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout} s")
        time.sleep(step)


def integrity_check(path: str | os.PathLike[str]) -> str:
    """SQLite's own verdict on a database file: ``"ok"`` or the problems it found."""
    db = sqlite3.connect(os.fspath(path))
    try:
        rows = db.execute("PRAGMA integrity_check").fetchall()
    finally:
        db.close()
    return "; ".join(str(r[0]) for r in rows)


# --------------------------------------------------------------------------- raw WebSocket


class Closed(Exception):
    """The peer closed the connection: ``code`` (None when the socket just ended) and ``reason``."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"closed with code {code} {reason!r}")
        self.code = code
        self.reason = reason


class HandshakeRefused(Exception):
    def __init__(self, status: int, head: str) -> None:
        super().__init__(f"handshake refused with HTTP {status}")
        self.status = status
        self.head = head


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, rsv: int = 0,
          length: int | None = None, key: bytes | None = None) -> bytes:
    """One WebSocket frame, as a client sends it (masked), or broken on purpose."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv & 7) << 4 | opcode & 0x0F])
    m = 0x80 if mask else 0
    if n < 126:
        head += bytes([m | n])
    elif n < 1 << 16:
        head += bytes([m | 126]) + struct.pack("!H", n)
    else:
        head += bytes([m | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = key if key is not None else os.urandom(4)
    return head + key + _mask(payload, key)


def _mask(payload: bytes, key: bytes) -> bytes:
    if not payload:
        return b""
    n = len(payload)
    k = int.from_bytes((key * (n // 4 + 1))[:n], "little")
    return (int.from_bytes(payload, "little") ^ k).to_bytes(n, "little")


class RawSocket:
    """A WebSocket client that sends whatever it is told, frame by frame, valid or not."""

    def __init__(self, port: int, path: str = "/event", *, offer: bool = False, timeout: float = 10.0,
                 handshake: bool = True, headers: list[str] | None = None, rcvbuf: int | None = None) -> None:
        self.port = port
        self.path = path
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        if rcvbuf is not None:
            # before connecting, so the window the peer may fill stays this small
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        try:
            self.sock.connect(("127.0.0.1", port))
        except OSError:
            self.sock.close()
            raise
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self.subprotocol: str | None = None
        self.close_code: int | None = None
        self.closed = False
        if handshake:
            self.handshake(offer=offer, headers=headers)

    def request(self, *, offer: bool = False, headers: list[str] | None = None) -> bytes:
        return self.request_for(self.port, self.path, headers, offer=offer)

    @staticmethod
    def request_for(port: int, path: str, headers: list[str] | None = None, *, offer: bool = False) -> bytes:
        """The bytes of an upgrade request."""
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if offer:
            lines.append(f"Sec-WebSocket-Protocol: {SUBPROTOCOL}")
        lines.extend(headers or [])
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def handshake(self, *, offer: bool = False, headers: list[str] | None = None) -> None:
        self.sock.sendall(self.request(offer=offer, headers=headers))
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise Closed(None, "closed during the handshake")
            self.buffer += chunk
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        text = head.decode("latin-1")
        status = int(text.split(" ", 2)[1])
        if status != 101:
            raise HandshakeRefused(status, text)
        for line in text.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "sec-websocket-protocol":
                self.subprotocol = value.strip()

    # sending
    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, message: bytes | str) -> None:
        if isinstance(message, str):
            self.sock.sendall(frame(OP_TEXT, message.encode()))
        else:
            self.sock.sendall(frame(OP_BINARY, message))

    def send_text_bytes(self, payload: bytes) -> None:
        """A text frame with any payload (UTF-8 or not)."""
        self.sock.sendall(frame(OP_TEXT, payload))

    def close(self, code: int = 1000) -> None:
        try:
            self.sock.sendall(frame(OP_CLOSE, struct.pack("!H", code)))
        except OSError:
            pass
        self.drop()

    def drop(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
        self.closed = True

    def reset(self) -> None:
        """Abort the connection with a TCP reset (SO_LINGER 0), as a crashed peer does."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.drop()

    # receiving
    def _fill(self, n: int, deadline: float | None) -> None:
        while len(self.buffer) < n:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no message in time")
                ready, _, _ = select.select([self.sock], [], [], left)
                if not ready:
                    raise TimeoutError("no message in time")
            try:
                chunk = self.sock.recv(1 << 20)
            except (ConnectionResetError, BrokenPipeError):
                chunk = b""
            if not chunk:
                self.closed = True
                raise Closed(None, "the socket ended")
            self.buffer += chunk

    def _frame(self, deadline: float | None) -> tuple[bool, int, bytes]:
        self._fill(2, deadline)
        b0, b1 = self.buffer[0], self.buffer[1]
        n, pos = b1 & 0x7F, 2
        if n == 126:
            self._fill(4, deadline)
            n, pos = struct.unpack("!H", self.buffer[2:4])[0], 4
        elif n == 127:
            self._fill(10, deadline)
            n, pos = struct.unpack("!Q", self.buffer[2:10])[0], 10
        self._fill(pos + n, deadline)
        payload, self.buffer = self.buffer[pos : pos + n], self.buffer[pos + n :]
        return bool(b0 & 0x80), b0 & 0x0F, payload

    def recv(self, timeout: float | None = 10.0) -> bytes | str:
        """The next data message (text as str); raises :class:`Closed` at the close."""
        deadline = None if timeout is None else time.monotonic() + timeout
        parts: list[bytes] = []
        opcode = None
        while True:
            fin, op, payload = self._frame(deadline)
            if op == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                self.close_code = code
                try:
                    self.sock.sendall(frame(OP_CLOSE, payload[:2]))
                except OSError:
                    pass
                self.drop()
                raise Closed(code, payload[2:].decode("utf-8", "replace"))
            if op == OP_PING:
                self.sock.sendall(frame(OP_PONG, payload))
                continue
            if op == OP_PONG:
                continue
            if op != OP_CONT:
                opcode = op
            parts.append(payload)
            if fin:
                data = b"".join(parts)
                return data.decode() if opcode == OP_TEXT else data

    def recv_until_close(self, timeout: float = 10.0) -> tuple[list[bytes | str], int | None]:
        """Every message until the close, and the close code."""
        out: list[bytes | str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                out.append(self.recv(max(deadline - time.monotonic(), 0.001)))
            except Closed as closed:
                return out, closed.code

    def __enter__(self) -> RawSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.drop()


# --------------------------------------------------------------------------- a collector in its own process


class CollectorProcess:
    """``theia-frames serve`` in its own process, on a database file; a context manager.

    ``.url``, ``.port``, ``.pid``, ``.alive``, ``.rss()``; :meth:`stop` (SIGTERM,
    a normal stop), :meth:`kill` (SIGKILL). ``log`` collects its output.
    """

    def __init__(self, db: str | os.PathLike[str], *, port: int = 0, log: str | os.PathLike[str] | None = None,
                 options: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        self.db = os.fspath(db)
        self.log_path = os.fspath(log) if log is not None else self.db + ".log"
        self.options = options or []
        self.requested_port = port
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.port = 0

    def start(self, timeout: float = 60.0) -> CollectorProcess:
        log = open(self.log_path, "ab")
        cmd = [sys.executable, "-m", "theia_frames", "serve", "--db", self.db, "--port", str(self.requested_port),
               *self.options]
        env = dict(os.environ, **(self.env or {}))
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env=env)
        log.close()
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode() if ready else ""
        match = re.search(r"listening on (wss?://\S+?:(\d+))", line)
        if match is None:
            self.kill()
            raise RuntimeError(f"the collector did not start: {line!r}; log: {self.log_text()[-2000:]}")
        self.url, self.port = match.group(1), int(match.group(2))
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def rss(self) -> int:
        import psutil

        return psutil.Process(self.pid).memory_info().rss

    def stop(self, timeout: float = 60.0) -> int:
        """A normal stop (SIGTERM); returns the exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_pipes()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to store or close anything."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self._close_pipes()

    def _close_pipes(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def log_text(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> CollectorProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        # after a failure the process may be stuck: no reason to wait for a clean stop
        if self.alive and exc_type is None:
            self.stop()
        else:
            self.kill()


# --------------------------------------------------------------------------- the fuzzer

T0 = 1_700_000_000.0
VALID_TAG = "fuzz-valid"
HEALTH_EVERY = 50
# Idle connections (never speaking, or silent after the handshake) kept open at once.
MAX_IDLE = 24


def _fuzz_codec() -> Any:
    import fuzz_codec

    return fuzz_codec


def _deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


BAD_FILTERS: list[str] = [
    "",
    "{",
    "not json",
    "ok",
    "[]",
    "null",
    "42",
    '"text"',
    '{"start": "yesterday"}',
    '{"start": true}',
    '{"start": -1, "end": -2}',
    '{"start": [1]}',
    '{"start": {"$gt": 1}}',
    '{"start": 10, "end": 5}',
    '{"start": NaN}',
    '{"start": Infinity}',
    '{"end": -Infinity}',
    '{"start": 1e999}',
    '{"start": 1' + "0" * 400 + "}",
    '{"end": -1' + "0" * 400 + "}",
    '{"tags": "sensor"}',
    '{"tags": [1, 2]}',
    '{"tags": [null]}',
    '{"tags": {"a": 1}}',
    '{"tags": [["x"]]}',
    '{"content": 5}',
    '{"content": ["a"]}',
    '{"content": null, "tags": true}',
    '{"content": "("}',
    '{"content": "[z-a]"}',
    '{"content": "(?<=a)b"}',
    '{"content": "(a)\\\\1"}',
    '{"content": "(?P<n>a)(?P=n)"}',
    '{"tags": ["*"]}',
    '{"id": "a{2,1}"}',
    '{"source": "\\\\"}',
    '{"order": "sideways"}',
    '{"order": 1}',
    '{"id": 7}',
    '{"source": false}',
    '{"unknown": 1}',
    '{"start": 1, "limit": 10}',
    '{"start": 1, "start": "x"}',
    _deep_json(50_000),
    '{"a":' * 20_000 + "1" + "}" * 20_000,
    '{"content": "' + "(" * 3_000 + '"}',
]


def _valid_filter(rng: random.Random) -> dict[str, Any]:
    f: dict[str, Any] = {"start": rng.choice([1, T0, T0 + rng.uniform(0, 100)])}
    if rng.random() < 0.3:
        f["end"] = f["start"] + rng.uniform(0, 1000)
    if rng.random() < 0.3:
        f["tags"] = [rng.choice([VALID_TAG, "x", ".*", "s.+"])]
    if rng.random() < 0.3:
        f["content"] = rng.choice(["a", "^$", "\\d+", "(a+)+$", "é", "[\\s\\S]"])
    if rng.random() < 0.2:
        f["order"] = rng.choice(["asc", "desc"])
    return f


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    r = rng.random()
    if depth > 3 or r < 0.3:
        return rng.choice([None, True, False, 0, -1, 1.5, 1e308, "", "x", "é", 2**70, [], {}])
    if r < 0.6:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["start", "end", "tags", "content", "order", "id", "source", "flush", "error", "x"]
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randrange(4))}


def _invalid_utf8(rng: random.Random) -> bytes:
    good = "héllo wörld ".encode()
    bad = rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\xe2\x82"])
    cut = rng.randrange(len(good) + 1)
    return good[:cut] + bad + good[cut:]


@dataclass
class FuzzReport:
    rounds: int = 0
    acts: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    valid_sent: int = 0
    valid_found: int = 0
    valid_live: int = 0
    live_checked: bool = False
    error_answers: int = 0
    close_codes: Counter[str] = field(default_factory=Counter)
    filter_answers: Counter[str] = field(default_factory=Counter)
    http_answers: Counter[str] = field(default_factory=Counter)
    health_checks: int = 0
    stored_total: int = 0
    stored_after_restart: int = 0
    integrity: str = ""
    exit_status: int | None = None
    tracebacks: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        lines = [
            f"rounds: {self.rounds:,} in {self.seconds:.1f} s",
            "acts: " + ", ".join(f"{k} {v:,}" for k, v in sorted(self.acts.items())),
            "of which: " + ", ".join(f"{k} {v:,}" for k, v in sorted(self.kinds.items())),
            f"valid events interleaved: {self.valid_sent:,}; found stored (exactly): {self.valid_found:,}; "
            f"received by a live subscriber: {self.valid_live:,}",
            f"error messages received on /event: {self.error_answers:,}",
            "closes seen by hostile connections: "
            + ", ".join(f"{k} x{v:,}" for k, v in sorted(self.close_codes.items())),
            "answers to bad filters: " + ", ".join(f"{k} x{v:,}" for k, v in sorted(self.filter_answers.items())),
            "answers to non-WebSocket requests: "
            + ", ".join(f"{k} x{v:,}" for k, v in sorted(self.http_answers.items())),
            f"health checks passed: {self.health_checks:,}; events in the store at the end: {self.stored_total:,}",
            f"exit status after SIGTERM: {self.exit_status}; PRAGMA integrity_check: {self.integrity}; "
            f"events found after a restart on the same file: {self.stored_after_restart:,}",
            "tracebacks in the collector's log: "
            + (", ".join(f"{k} x{v}" for k, v in self.tracebacks.most_common()) or "none"),
            f"problems: {len(self.problems)}",
        ]
        lines.extend(f"  - {p}" for p in self.problems)
        return "\n".join(lines)


class Fuzzer:
    """Hostile rounds against a collector at ``port``, with valid events in between.

    ``include_damaged_arrow`` sends damaged Arrow batches on ``/event`` (these
    crash a collector whose batch reader does not fully validate them).
    """

    def __init__(self, port: int, *, seed: int = 1, max_message_size: int, alive: Callable[[], bool],
                 include_damaged_arrow: bool = True) -> None:
        self.port = port
        self.url = f"ws://127.0.0.1:{port}"
        self.rng = random.Random(seed)
        self.limit = max_message_size
        self.alive = alive
        self.include_damaged_arrow = include_damaged_arrow
        self.report = FuzzReport()
        self.expected: dict[str, Any] = {}
        self.counter = 0
        self.garbage: dict[bool, RawSocket | None] = {False: None, True: None}
        self.idle: list[RawSocket | socket.socket] = []
        self.live_events: dict[str, Any] = {}
        self._live_stop = threading.Event()
        self._live_thread: threading.Thread | None = None
        self._live_error: BaseException | None = None
        self._client: Any = None
        acts: list[tuple[Callable[[], None], float]] = [
            (self.act_damaged_event, 14),
            (self.act_binary_garbage, 8),
            (self.act_text_garbage, 6),
            (self.act_damaged_arrow, 8 if include_damaged_arrow else 0),
            (self.act_unstorable_rows, 3),
            (self.act_arrow_on_plain, 2),
            (self.act_oversized, 5),
            (self.act_invalid_utf8_text, 4),
            (self.act_protocol_violation, 6),
            (self.act_reset_mid_frame, 5),
            (self.act_half_open, 5),
            (self.act_http_garbage, 4),
            (self.act_bad_filter, 12),
            (self.act_live_then_garbage, 4),
            (self.act_find, 3),
            (self.act_client_send, 3),
        ]
        self.acts = [a for a, w in acts if w > 0]
        self.weights = [w for _, w in acts if w > 0]

    # ------------------------------------------------------------------ valid events
    def new_valid(self) -> Any:
        from theia_frames.event import Event

        fc = _fuzz_codec()
        n = self.counter
        self.counter += 1
        base = fc.random_event(self.rng, n)
        return Event(
            id=f"valid-{n}",
            timestamp=float(f"{T0 + n / 1000:.3f}"),
            source=base.source,
            tags=[VALID_TAG, *base.tags[:2]],
            content=base.content[:1500],
        )

    def send_valid(self, conn: RawSocket, k: int) -> None:
        """``k`` valid events on ``conn``, one message each or (negotiated) as one Arrow batch."""
        from theia_frames.protocol.arrow import batch_to_ipc, events_to_batch
        from theia_frames.protocol.codec import encode

        if k <= 0:
            return
        events = [self.new_valid() for _ in range(k)]
        if conn.subprotocol == SUBPROTOCOL and self.rng.random() < 0.3:
            conn.send(batch_to_ipc(events_to_batch(events)))
        else:
            for e in events:
                data = encode(e)
                conn.send(data.decode() if self.rng.random() < 0.2 else data)
        for e in events:
            self.expected[e.id] = e
        self.report.valid_sent += k

    # ------------------------------------------------------------------ connections
    def garbage_conn(self, negotiated: bool) -> RawSocket:
        conn = self.garbage[negotiated]
        if conn is None or conn.closed:
            conn = RawSocket(self.port, "/event", offer=negotiated)
            self.garbage[negotiated] = conn
        return conn

    def drain(self) -> None:
        """Read what the long-lived /event connections were sent (error messages)."""
        for negotiated, conn in list(self.garbage.items()):
            if conn is None:
                continue
            while True:
                try:
                    ready, _, _ = select.select([conn.sock], [], [], 0)
                    if not ready and len(conn.buffer) < 2:
                        break
                    message = conn.recv(timeout=5)
                except Closed as closed:
                    self.problem(f"the collector closed a /event connection after garbage it should answer: {closed}")
                    self.garbage[negotiated] = None
                    break
                except TimeoutError:
                    break
                if isinstance(message, str) and message.startswith('{"error"'):
                    self.report.error_answers += 1

    def problem(self, text: str) -> None:
        if len(self.report.problems) < 50:
            self.report.problems.append(text)

    def expect_close(self, conn: RawSocket, what: str, timeout: float = 20.0) -> int | None:
        """Read until the collector closes ``conn``; count the code. A hang is a problem."""
        try:
            _, code = conn.recv_until_close(timeout)
        except TimeoutError:
            self.problem(f"the collector did not close the connection after {what}")
            code = -1
        finally:
            conn.drop()
        self.report.close_codes[f"{what}: {code}"] += 1
        return code

    # ------------------------------------------------------------------ acts on /event
    def act_damaged_event(self) -> None:
        fc = _fuzz_codec()
        data, pieces = fc.build_stream(self.rng, self.rng.choice([1, 1, 2]), single=False)
        mutated, _, _ = fc.mutate(self.rng, data, pieces, b"")
        mutated = mutated[: self.limit // 2]
        conn = self.garbage_conn(self.rng.random() < 0.5)
        self.send_valid(conn, self.rng.randrange(0, 2))
        try:
            text = mutated.decode()
        except UnicodeDecodeError:
            text = None
        conn.send(text if text is not None and self.rng.random() < 0.3 else mutated)
        self.send_valid(conn, self.rng.randrange(1, 3))

    def act_binary_garbage(self) -> None:
        conn = self.garbage_conn(self.rng.random() < 0.5)
        n = self.rng.choice([0, 1, 3, 17, 200, 2_000])
        payload = self.rng.randbytes(n)
        if self.rng.random() < 0.3:
            payload = b"\xff\xff\xff\xff" + payload
        elif self.rng.random() < 0.3:
            payload = b"event:" + payload
        conn.send(payload)
        self.send_valid(conn, self.rng.randrange(1, 3))

    def act_text_garbage(self) -> None:
        conn = self.garbage_conn(self.rng.random() < 0.6)
        choice = self.rng.random()
        if choice < 0.3:
            text = json.dumps(_random_json(self.rng))
        elif choice < 0.5:
            text = self.rng.choice(['{"flush": 1}', '{"flush": "x"}', '{"flush": [1]}', '{"flush"', '{"flush": 1e999}',
                                    '{"flush":' + "9" * 5000 + "}", '{"flushed": 1}'])
        elif choice < 0.7:
            text = self.rng.choice(["ok", '{"error": "x"}', "event: 1 1 0", "event:", "", " ", "\n", "null"])
        else:
            text = "".join(self.rng.choice("aé漢😀\u2028\x00{}[]:,\"") for _ in range(self.rng.randrange(1, 50)))
        conn.send(text)
        self.send_valid(conn, self.rng.randrange(1, 3))

    def act_damaged_arrow(self) -> None:
        fc = _fuzz_codec()
        data, _ = fc._arrow_message(self.rng)
        other, _ = fc._arrow_message(self.rng)
        conn = self.garbage_conn(True)
        conn.send(fc._mutate_arrow(self.rng, data, other)[: self.limit // 2])
        self.send_valid(conn, self.rng.randrange(1, 3))

    def act_unstorable_rows(self) -> None:
        """A batch mixing valid rows with rows the plain format cannot carry: the valid ones are stored."""
        import pyarrow as pa

        from theia_frames.protocol.arrow import batch_to_ipc, event_schema

        conn = self.garbage_conn(True)
        good = [self.new_valid() for _ in range(self.rng.randrange(1, 5))]
        rows = [
            {"id": e.id, "timestamp": e.timestamp, "source": e.source, "tags": list(e.tags), "content": e.content}
            for e in good
        ]
        for k in range(self.rng.randrange(1, 4)):
            bad = {"id": f"bad-{self.counter}-{k}", "timestamp": T0, "source": "s", "tags": [VALID_TAG], "content": "c"}
            field_name = self.rng.choice(["id", "source", "tags", "timestamp"])
            if field_name == "timestamp":
                bad["timestamp"] = self.rng.choice([float("nan"), float("inf"), float("-inf")])
            elif field_name == "tags":
                bad["tags"] = [VALID_TAG + self.rng.choice(["\n", "\r", "\r\n", ","]) + "x"]
            else:
                bad[field_name] = bad[field_name] + self.rng.choice(["\n", "\r", "\r\n"]) + "x"
            rows.insert(self.rng.randrange(len(rows) + 1), bad)
        conn.send(batch_to_ipc(pa.RecordBatch.from_pylist(rows, schema=event_schema())))
        for e in good:
            self.expected[e.id] = e
        self.report.valid_sent += len(good)

    def act_arrow_on_plain(self) -> None:
        from theia_frames.protocol.arrow import batch_to_ipc, events_to_batch

        conn = self.garbage_conn(False)
        conn.send(batch_to_ipc(events_to_batch([self.new_valid() for _ in range(3)])))  # not events here: refused
        self.send_valid(conn, 1)

    def act_oversized(self) -> None:
        conn = RawSocket(self.port, "/event", offer=self.rng.random() < 0.5)
        self.send_valid(conn, self.rng.randrange(0, 4))
        kind = self.rng.choice(["binary", "text", "fragments", "header", "arrow"])
        big = self.limit + self.rng.choice([1, 100, self.limit])
        if kind == "binary":
            conn.send(b"x" * big)
        elif kind == "text":
            conn.send("é" * (big // 2 + 1))
        elif kind == "fragments":
            piece = self.limit // 4
            conn.send_raw(frame(OP_BINARY, b"y" * piece, fin=False))
            for _ in range(5):
                conn.send_raw(frame(OP_CONT, b"y" * piece, fin=False))
            conn.send_raw(frame(OP_CONT, b"y", fin=True))
        elif kind == "header":
            conn.send_raw(frame(OP_BINARY, b"", length=1 << 62) + b"abc")
        else:
            from theia_frames.protocol.arrow import batch_to_ipc, events_to_batch
            from theia_frames.event import Event

            many = [Event(id=f"big{i}", content="z" * 1000) for i in range(big // 1000 + 1)]
            conn.send(batch_to_ipc(events_to_batch(many)))
        self.expect_close(conn, f"oversized {kind}")

    def act_invalid_utf8_text(self) -> None:
        path = self.rng.choice(["/event", "/event", "/find", "/live"])
        conn = RawSocket(self.port, path, offer=self.rng.random() < 0.5)
        if conn.path == "/event":
            self.send_valid(conn, self.rng.randrange(0, 4))
        payload = _invalid_utf8(self.rng)
        if self.rng.random() < 0.3 and len(payload) > 2:
            cut = self.rng.randrange(1, len(payload))
            conn.send_raw(frame(OP_TEXT, payload[:cut], fin=False) + frame(OP_CONT, payload[cut:]))
        else:
            conn.send_text_bytes(payload)
        self.expect_close(conn, "text not UTF-8")

    def act_protocol_violation(self) -> None:
        conn = RawSocket(self.port, "/event", offer=self.rng.random() < 0.5)
        self.send_valid(conn, self.rng.randrange(0, 4))
        kind, data = self.rng.choice([
            ("unmasked", frame(OP_BINARY, b"abc", mask=False)),
            ("reserved bits", frame(OP_BINARY, b"abc", rsv=self.rng.randrange(1, 8))),
            ("reserved opcode", frame(self.rng.choice([3, 4, 7, 11, 15]), b"abc")),
            ("ping over 125 bytes", frame(OP_PING, b"p" * 126)),
            ("fragmented ping", frame(OP_PING, b"p", fin=False)),
            ("continuation first", frame(OP_CONT, b"abc")),
            ("data inside a fragmented message", frame(OP_BINARY, b"a", fin=False) + frame(OP_TEXT, b"b")),
            ("close with one byte", frame(OP_CLOSE, b"\x03")),
            ("close code 999", frame(OP_CLOSE, struct.pack("!H", 999))),
            ("close code 1005", frame(OP_CLOSE, struct.pack("!H", 1005))),
            ("close reason not UTF-8", frame(OP_CLOSE, struct.pack("!H", 1000) + b"\xff")),
            ("normal close", frame(OP_CLOSE, struct.pack("!H", 1000))),
        ])
        conn.send_raw(data)
        self.expect_close(conn, kind)

    def act_reset_mid_frame(self) -> None:
        kind = self.rng.choice(["mid-frame", "mid-header", "after handshake", "mid-handshake", "mid-fragments"])
        if kind == "mid-handshake":
            conn = RawSocket(self.port, "/event", handshake=False)
            req = conn.request()
            conn.send_raw(req[: self.rng.randrange(1, len(req))])
            conn.reset()
            self.report.kinds[f"reset {kind}"] += 1
            return
        path = self.rng.choice(["/event", "/event", "/live", "/find"])
        conn = RawSocket(self.port, path, offer=self.rng.random() < 0.5)
        if conn.path == "/event":
            self.send_valid(conn, self.rng.randrange(0, 4))
        if kind != "after handshake":
            from theia_frames.protocol.codec import encode

            whole = frame(OP_BINARY, encode(self.new_valid()) * 3)  # never completed: not expected
            if kind == "mid-frame":
                conn.send_raw(whole[: self.rng.randrange(8, len(whole))])
            elif kind == "mid-header":
                conn.send_raw(whole[: self.rng.randrange(1, 6)])
            else:
                conn.send_raw(frame(OP_BINARY, b"event: 5 5 0\n", fin=False) + frame(OP_CONT, b"id:x\n", fin=False))
        conn.reset()
        self.report.kinds[f"reset {kind}"] += 1

    def act_half_open(self) -> None:
        kind = self.rng.choice(["tcp only", "part of a request", "silent after handshake"])
        try:
            if kind == "tcp only":
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                self.idle.append(sock)
            elif kind == "part of a request":
                conn = RawSocket(self.port, "/event", handshake=False)
                req = conn.request()
                conn.send_raw(req[: self.rng.randrange(1, len(req) - 1)])
                self.idle.append(conn)
            else:
                path = self.rng.choice(["/event", "/find", "/live"])
                conn = RawSocket(self.port, path, offer=self.rng.random() < 0.5)
                self.idle.append(conn)
        except (OSError, Closed, HandshakeRefused) as exc:
            self.problem(f"a {kind} connection could not be opened: {exc}")
        self.report.kinds[f"half-open {kind}"] += 1
        while len(self.idle) > MAX_IDLE:
            old = self.idle.pop(0)
            if isinstance(old, RawSocket):
                old.reset() if self.rng.random() < 0.5 else old.drop()
            else:
                old.close()

    def act_http_garbage(self) -> None:
        kind = self.rng.choice(["random bytes", "plain GET", "unknown path", "bad version", "huge header", "no key"])
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        try:
            if kind == "random bytes":
                sock.sendall(self.rng.randbytes(self.rng.randrange(1, 3000)) + b"\r\n\r\n")
            elif kind == "plain GET":
                sock.sendall(b"GET /event HTTP/1.1\r\nHost: x\r\n\r\n")
            elif kind == "unknown path":
                path = self.rng.choice(["/", "/events", "/find/../event", "/%ff", "/" + "a" * 3000])
                sock.sendall(RawSocket.request_for(self.port, path))
            elif kind == "bad version":
                sock.sendall(RawSocket.request_for(self.port, "/event").replace(b"Version: 13", b"Version: 99"))
            elif kind == "huge header":
                sock.sendall(RawSocket.request_for(self.port, "/event", [f"X-Junk: {'j' * 9000}"]))
            else:
                request = RawSocket.request_for(self.port, "/find")
                sock.sendall(request.replace(b"Sec-WebSocket-Key", b"Sec-WebSocket-Kee"))
            answer = b""
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                ready, _, _ = select.select([sock], [], [], deadline - time.monotonic())
                if not ready:
                    break
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                answer += chunk
            else:
                self.problem(f"no answer and no close after {kind}")
            status = answer.split(b"\r\n", 1)[0].decode("latin-1")[:40] or "closed without an answer"
            self.report.http_answers[f"{kind}: {status}"] += 1
        finally:
            sock.close()
        self.report.kinds[f"http {kind}"] += 1

    # ------------------------------------------------------------------ acts on /find and /live
    def _filter_answer(self, conn: RawSocket, what: str) -> None:
        try:
            messages, code = conn.recv_until_close(20)
        except TimeoutError:
            self.problem(f"no answer to {what} on {conn.path}")
            conn.drop()
            return
        errors = [m for m in messages if isinstance(m, str) and m.startswith('{"error"')]
        if messages and messages[0] == "ok":
            key = "accepted (ok)"
        elif errors:
            key = f"error message, close {code}"
        else:
            key = f"no error message, close {code}"
        self.report.filter_answers[key] += 1

    def act_bad_filter(self) -> None:
        path = self.rng.choice(["/find", "/live"])
        conn = RawSocket(self.port, path, offer=self.rng.random() < 0.5)
        r = self.rng.random()
        if r < 0.55:
            text = self.rng.choice(BAD_FILTERS)
            conn.send(text.encode() if self.rng.random() < 0.2 else text)
        elif r < 0.8:
            conn.send(json.dumps(_random_json(self.rng)))
        elif r < 0.9:
            conn.send(self.rng.randbytes(self.rng.randrange(0, 300)))
        else:
            conn.send('{"content": "' + "a" * (self.limit + 10) + '"}')
        if path == "/live":
            # A filter that happens to be valid subscribes: leave after its ok.
            try:
                first = conn.recv(20)
            except Closed as closed:
                self.report.filter_answers[f"no error message, close {closed.code}"] += 1
                return
            except TimeoutError:
                self.problem("no answer to a filter on /live")
                conn.drop()
                return
            if first == "ok":
                self.report.filter_answers["accepted (ok)"] += 1
                conn.close()
                return
            messages, code = conn.recv_until_close(20)
            key = "error message" if isinstance(first, str) and first.startswith('{"error"') else "no error message"
            self.report.filter_answers[f"{key}, close {code}"] += 1
            return
        self._filter_answer(conn, "a bad filter")

    def act_live_then_garbage(self) -> None:
        conn = RawSocket(self.port, "/live", offer=self.rng.random() < 0.5)
        conn.send(json.dumps(_valid_filter(self.rng)))
        try:
            if conn.recv(20) != "ok":
                self.problem("a valid filter on /live was not answered ok")
                conn.drop()
                return
        except (Closed, TimeoutError) as exc:
            self.problem(f"a valid filter on /live got no ok: {exc}")
            conn.drop()
            return
        if self.rng.random() < 0.3:
            conn.send(json.dumps(_valid_filter(self.rng)))  # a replacement filter: answered ok
            try:
                while True:
                    m = conn.recv(20)
                    if m == "ok":
                        break
            except (Closed, TimeoutError) as exc:
                self.problem(f"a replacement filter on /live got no ok: {exc}")
                conn.drop()
                return
        conn.send(self.rng.choice(BAD_FILTERS[:20]) if self.rng.random() < 0.8 else self.rng.randbytes(50))
        try:
            _, code = conn.recv_until_close(20)
        except TimeoutError:
            self.problem("a subscriber that sent garbage was not closed")
            conn.drop()
            return
        self.report.close_codes[f"garbage after a /live subscription: {code}"] += 1

    def act_find(self) -> None:
        self.health(json.dumps(_valid_filter(self.rng)), count=False)

    def act_client_send(self) -> None:
        from theia_frames.client import Client

        if self._client is None:
            self._client = Client(self.url, batch=self.rng.random() < 0.5)
        events = [self.new_valid() for _ in range(self.rng.choice([1, 3, 40]))]
        self._client.send_many(events)
        for e in events:
            self.expected[e.id] = e
        self.report.valid_sent += len(events)

    # ------------------------------------------------------------------ checks
    def health(self, flt: str = '{"start": 1, "end": 2}', *, count: bool = True) -> None:
        """The collector is alive and answers a /find: ok, then a normal close."""
        if not self.alive():
            raise RuntimeError("the collector process died")
        conn = RawSocket(self.port, "/find", offer=self.rng.random() < 0.5)
        conn.send(flt)
        try:
            messages, code = conn.recv_until_close(60)
        except TimeoutError:
            raise RuntimeError("the collector did not answer a /find within 60 s") from None
        if not messages or messages[0] != "ok" or code != 1000:
            self.problem(f"a /find was answered {messages[:1]!r} and closed {code}")
        elif count:
            self.report.health_checks += 1

    def start_live(self) -> None:
        from theia_frames.client import Client
        from theia_frames.filter import EventFilter

        ready = threading.Event()

        def listen() -> None:
            try:
                with Client(self.url) as client, client.receive(EventFilter(tags=(VALID_TAG,))) as stream:
                    ready.set()
                    for batch in stream.iter_batches(heartbeat=0.2):
                        for row in batch.to_pylist():
                            self.live_events[row["id"]] = row
                        if self._live_stop.is_set():
                            return
            except BaseException as exc:  # reported by finish()
                self._live_error = exc
                ready.set()

        self._live_thread = threading.Thread(target=listen, name="fuzz-live", daemon=True)
        self._live_thread.start()
        ready.wait(30)

    def run(self, rounds: int) -> FuzzReport:
        t0 = time.perf_counter()
        self.start_live()
        for i in range(rounds):
            act = self.rng.choices(self.acts, self.weights)[0]
            name = act.__name__[4:]
            try:
                act()
            except Exception as exc:  # every surprise is a finding; the round ends, the run goes on
                self.problem(f"round {i} ({name}): {type(exc).__name__}: {exc}"[:500])
                if self._client is not None and name == "client_send":
                    self._client.close()
                    self._client = None
            self.report.acts[name] += 1
            self.report.rounds += 1
            self.drain()
            if (i + 1) % HEALTH_EVERY == 0:
                self.health()
        self.health()
        self.finish()
        self.report.seconds = time.perf_counter() - t0
        return self.report

    def finish(self) -> None:
        from theia_frames.client import Client
        from theia_frames.filter import EventFilter

        for conn in self.garbage.values():
            if conn is not None:
                conn.close()
        for old in self.idle:
            old.reset() if isinstance(old, RawSocket) else old.close()
        if self._client is not None:
            self._client.close()
        flt = EventFilter(tags=(VALID_TAG,))
        found: dict[str, Any] = {}

        def all_stored() -> bool:
            found.clear()
            with Client(self.url) as client:
                for e in client.find(flt):
                    found[e.id] = e
            return len(found) >= len(self.expected)

        try:
            wait_until(all_stored, 120, "the valid events to be stored", step=0.2)
        except TimeoutError:
            pass
        missing = [i for i in self.expected if i not in found]
        wrong = [i for i, e in self.expected.items() if i in found and found[i] != e]
        extra = [i for i in found if i not in self.expected]
        self.report.valid_found = sum(1 for i, e in self.expected.items() if found.get(i) == e)
        if missing:
            self.problem(f"{len(missing)} valid event(s) not stored, e.g. {missing[:5]}")
        if wrong:
            self.problem(f"{len(wrong)} valid event(s) stored with other fields, e.g. {wrong[:3]}: "
                         f"{found[wrong[0]]!r} != {self.expected[wrong[0]]!r}"[:600])
        if extra:
            self.problem(f"{len(extra)} event(s) with the valid tag that were never sent as valid, e.g. {extra[:5]}")
        try:
            wait_until(lambda: len(self.live_events) >= len(self.expected) or self._live_error is not None, 60,
                       "the live subscriber to receive every valid event", step=0.1)
        except TimeoutError:
            pass
        self._live_stop.set()
        if self._live_thread is not None:
            self._live_thread.join(30)
        if self._live_error is not None:
            self.problem(f"the live subscriber failed: {type(self._live_error).__name__}: {self._live_error}")
        self.report.live_checked = True
        self.report.valid_live = sum(1 for i in self.expected if i in self.live_events)
        if self.report.valid_live != len(self.expected):
            self.problem(f"the live subscriber received {self.report.valid_live} of {len(self.expected)} valid events")
        with Client(self.url) as client:
            self.report.stored_total = sum(1 for _ in client.find(EventFilter()))


def _traceback_kinds(log: str) -> Counter[str]:
    """The last line of every traceback in a log: the exception nobody handled."""
    kinds: Counter[str] = Counter()
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last)"):
            j = i + 1
            while j < len(lines) and (lines[j].startswith(" ") or lines[j].startswith("Traceback")):
                j += 1
            if j < len(lines):
                kinds[lines[j][:120]] += 1
    return kinds


def run(rounds: int, *, seed: int = 1, max_message_size: int = 64 * 1024, workdir: str | None = None,
        include_damaged_arrow: bool = True) -> FuzzReport:
    """Start a collector process on a fresh database, fuzz it, stop it and check its store."""
    tmp = tempfile.TemporaryDirectory(prefix="theia-fuzz-") if workdir is None else None
    where = Path(workdir or tmp.name)  # type: ignore[union-attr]
    where.mkdir(parents=True, exist_ok=True)
    db = where / "fuzz.db"
    collector = CollectorProcess(db, options=["--max-message-size", str(max_message_size), "--log-level", "warning"])
    try:
        with collector:
            fuzzer = Fuzzer(collector.port, seed=seed, max_message_size=max_message_size, alive=lambda: collector.alive,
                            include_damaged_arrow=include_damaged_arrow)
            try:
                report = fuzzer.run(rounds)
            except RuntimeError as exc:
                report = fuzzer.report
                report.problems.append(f"{exc} (exit status {collector.returncode})")
            report.exit_status = collector.stop()
        if report.exit_status != 0:
            report.problems.append(f"the collector exited with status {report.exit_status}")
        report.integrity = integrity_check(db)
        if report.integrity != "ok":
            report.problems.append(f"PRAGMA integrity_check: {report.integrity}")
        # The store opens again and holds what it held.
        with CollectorProcess(db, log=where / "restart.log", options=["--log-level", "warning"]) as again:
            from theia_frames.client import Client
            from theia_frames.filter import EventFilter

            with Client(again.url) as client:
                report.stored_after_restart = sum(1 for _ in client.find(EventFilter()))
        if report.stored_after_restart != report.stored_total:
            report.problems.append(f"after a restart the store holds {report.stored_after_restart:,} events, "
                                   f"not {report.stored_total:,}")
        report.tracebacks = _traceback_kinds(collector.log_text())
        if report.tracebacks:
            report.problems.append(f"{sum(report.tracebacks.values())} traceback(s) in the collector's log")
        return report
    finally:
        if tmp is not None:
            tmp.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20_000, help="hostile rounds (default 20,000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-message-size", type=int, default=64 * 1024,
                        help="the collector's limit (default 64 KiB)")
    parser.add_argument("--no-damaged-arrow", action="store_true",
                        help="leave out damaged Arrow batches (they crash a collector that does not validate them)")
    parser.add_argument("--workdir", default=None, help="keep the database and the log here")
    args = parser.parse_args(argv)
    report = run(args.rounds, seed=args.seed, max_message_size=args.max_message_size, workdir=args.workdir,
                 include_damaged_arrow=not args.no_damaged_arrow)
    print(report.format())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
