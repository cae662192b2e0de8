"""Proof: a live stream with ``reconnect=True`` survives collector restarts, nothing missing, nothing twice.

    python scripts/proof_reconnect.py                              # 20,000 events, 10 restarts
    python scripts/proof_reconnect.py --events 2000 --restarts 3   # a quick run

An embedded collector (``theia_frames.serve``) runs on a database file and a
fixed loopback port. Three parties:

1. a subscriber: ``Client.receive(filter, reconnect=True)``, read with
   ``iter_batches()`` on its own thread, subscribed before anything is sent;
2. a sender on its own thread writes ``--events`` events at a steady
   ``--rate`` (timestamps spaced by 1/rate). It survives the restarts by
   itself: it calls ``flush()`` every ``--flush-every`` seconds, and when a
   send or a flush fails it sends again every event not confirmed yet (the
   collector stores an event once per ``(timestamp, id)``, so a repeat does
   no harm), until the collector has confirmed them all;
3. the main thread stops the collector ``--restarts`` times, evenly over the
   sending time (and each time only once the stream is back from the
   previous restart), and starts it again after ``--down`` seconds on the
   same file and port.

At the end a ``/find`` reads every event the collector stored; the stream
must hold each of them exactly once and nothing else: 0 missing, 0
duplicated, 0 extra; and the collector must hold every event sent. The exit
status is 1 when anything is off.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import theia_frames
from theia_frames import Client, Event, Filter, serve
from theia_frames.collector import Collector
from theia_frames.exceptions import TheiaError, TheiaTimeoutError, TransportError

__all__ = ["ReconnectResult", "run", "main"]

TAG = "proof-reconnect"


@dataclass
class ReconnectResult:
    """The figures of one run."""

    events: int = 0
    rate: float = 0.0
    restarts: int = 0
    restarts_while_sending: int = 0
    down: float = 0.0
    send_seconds: float = 0.0
    confirmed: int = 0
    send_retries: int = 0
    resent: int = 0
    stored: int = 0
    received: int = 0
    distinct: int = 0
    missing: int = 0
    duplicated: int = 0
    extra: int = 0
    reconnects: int = 0
    gap_total: float = 0.0
    gap_longest: float = 0.0
    recovered: int = 0
    stream_errors: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        lines = [
            f"events sent: {self.events:,} at {self.rate:,.0f}/s in {self.send_seconds:.1f} s; "
            f"collector restarts: {self.restarts}, {self.restarts_while_sending} of them while the sender "
            f"was sending (down {self.down:.2f} s each)",
            f"sender: flush() confirmed {self.confirmed:,}; {self.send_retries} failed send/flush calls, "
            f"{self.resent:,} events sent again",
            f"collector stored: {self.stored:,}",
            f"live stream: {self.received:,} events received, {self.distinct:,} distinct; "
            f"missing {self.missing}, duplicated {self.duplicated}, extra {self.extra}",
            f"reconnects: {self.reconnects}; time away: {self.gap_total:.2f} s in total, "
            f"longest {self.gap_longest:.2f} s; recovered by resume finds: {self.recovered:,}; "
            f"drops recorded in .errors: {self.stream_errors}",
            f"run time: {self.seconds:.1f} s",
            "result: " + ("OK" if self.ok else "FAILED: " + "; ".join(self.problems)),
        ]
        return "\n".join(lines)


def _start(db: str, port: int, deadline: float) -> Collector:
    """Start a collector on ``db`` and ``port``, waiting while the port is still held."""
    while True:
        try:
            return serve(db=db, port=port)
        except TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class _Sender(threading.Thread):
    """Sends events at a steady rate; whatever fails is sent again until confirmed."""

    def __init__(self, url: str, events: int, rate: float, t0: float, flush_every: float, deadline: float) -> None:
        super().__init__(name="proof-sender", daemon=True)
        self.url = url
        self.events = events
        self.rate = rate
        self.t0 = t0
        self.flush_every = flush_every
        self.deadline = deadline
        self.confirmed = 0
        self.retries = 0
        self.resent = 0
        self.seconds = 0.0
        self.failure: BaseException | None = None

    def event(self, i: int) -> Event:
        return Event(
            id=f"r{i:07d}",
            timestamp=self.t0 + i / self.rate,
            source=f"/dev/sensors/temp-{i % 4 + 1}",
            tags=["sensor", TAG],
            content=f"{20 + (i % 100) / 10:.1f}C",
        )

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by run()
            self.failure = exc

    def _run(self) -> None:
        client = Client(self.url, timeout=5.0)
        queue: list[Event] = []  # due, not sent (or to be sent again)
        unconfirmed: list[Event] = []  # sent since the last confirmed flush
        made = 0
        began = time.monotonic()
        last_flush = began
        try:
            while True:
                now = time.monotonic()
                if now > self.deadline:
                    raise TimeoutError(f"the sender could not get {self.events:,} events confirmed in time")
                due = min(self.events, int((now - began) * self.rate) + 1)
                while made < due:
                    queue.append(self.event(made))
                    made += 1
                try:
                    if queue:
                        client.send_many(queue)
                        unconfirmed.extend(queue)
                        queue = []
                    if unconfirmed and (made >= self.events or now - last_flush >= self.flush_every):
                        client.flush(timeout=5.0)
                        self.confirmed += len(unconfirmed)
                        unconfirmed = []
                        last_flush = now
                except (TransportError, TheiaTimeoutError):
                    # the collector went away: everything not confirmed goes again
                    self.retries += 1
                    self.resent += len(unconfirmed)
                    queue = unconfirmed + queue
                    unconfirmed = []
                    time.sleep(0.02)
                    continue
                if made >= self.events and not queue and not unconfirmed:
                    break
                time.sleep(min(0.01, 1.0 / self.rate))
        finally:
            self.seconds = time.monotonic() - began
            client.close()


def run(
    *,
    events: int = 20_000,
    restarts: int = 10,
    rate: float = 1_000.0,
    down: float = 0.3,
    flush_every: float = 0.1,
    workdir: str | None = None,
    log: Callable[[str], Any] = lambda message: None,
) -> ReconnectResult:
    """Run the proof; returns its figures (``result.ok`` tells whether it held)."""
    result = ReconnectResult(events=events, rate=rate, restarts=restarts, down=down)
    began = time.monotonic()
    deadline = began + 120 + 3 * events / rate + restarts * (down + 5)
    tmp = tempfile.TemporaryDirectory(prefix="proof-reconnect-") if workdir is None else None
    db = str(Path(workdir or tmp.name) / "events.db")  # type: ignore[union-attr]
    collector = serve(db=db, port=0)
    port = collector.port
    url = collector.url
    t0 = time.time()
    received: list[str] = []
    reader_failure: list[BaseException] = []
    wanted: set[str] = set()
    longest = [0.0]
    client = Client(url)
    stream = client.receive(
        Filter(t0 - 1).match_tag(TAG), reconnect=True, backoff=0.02, max_backoff=0.5, resume_margin=5.0
    )

    def read() -> None:
        try:
            for batch in stream.iter_batches(heartbeat=0.25):
                received.extend(batch.column("id").to_pylist())
                longest[0] = max(longest[0], stream.gap.last)
        except BaseException as exc:  # reported below
            reader_failure.append(exc)

    reader = threading.Thread(target=read, name="proof-reader", daemon=True)
    reader.start()
    sender = _Sender(url, events, rate, t0, flush_every, deadline)
    try:
        sender.start()
        sending = events / rate
        for k in range(restarts):
            # evenly spread over the sending time, and only once the stream is back
            # from the previous restart: each restart is one the stream must survive
            at = began + sending * (k + 1) / (restarts + 1)
            while time.monotonic() < deadline and (time.monotonic() < at or stream.reconnects < k):
                if reader_failure:
                    raise RuntimeError(f"the live stream failed: {reader_failure[0]!r}")
                time.sleep(0.01)
            if sender.is_alive():
                result.restarts_while_sending += 1
            collector.stop()
            time.sleep(down)
            collector = _start(db, port, deadline)
            log(f"restart {k + 1}/{restarts} done; {len(received):,} events received so far")
        sender.join(max(deadline - time.monotonic(), 0))
        if sender.is_alive() or sender.failure is not None:
            result.problems.append(f"the sender did not finish: {sender.failure or 'still running'}")
        result.send_seconds = sender.seconds
        result.confirmed = sender.confirmed
        result.send_retries = sender.retries
        result.resent = sender.resent
        with Client(url) as reader_client:
            stored = [
                i for b in reader_client.find(Filter(t0 - 1).match_tag(TAG)).iter_batches() for i in b.column("id").to_pylist()
            ]
        result.stored = len(stored)
        wanted = set(stored)
        # the stream may still be catching up with the last events
        while time.monotonic() < deadline and not reader_failure:
            if wanted <= set(received):
                break
            time.sleep(0.05)
        time.sleep(0.2)  # anything repeated late would show now
    finally:
        stream.close()
        reader.join(5)
        client.close()
        collector.stop()
        if tmp is not None:
            tmp.cleanup()
    if reader_failure:
        result.problems.append(f"the live stream failed: {reader_failure[0]!r}")
    counts = Counter(received)
    result.received = len(received)
    result.distinct = len(counts)
    result.duplicated = sum(c - 1 for c in counts.values())
    result.missing = len(wanted - counts.keys())
    result.extra = len(counts.keys() - wanted)
    result.reconnects = stream.reconnects
    result.gap_total = stream.gap.total
    result.gap_longest = max(longest[0], stream.gap.last)
    result.recovered = stream.recovered
    result.stream_errors = len(stream.errors)
    result.seconds = time.monotonic() - began
    if result.stored != events:
        result.problems.append(f"the collector stored {result.stored:,} of {events:,} events")
    if result.confirmed != events:
        result.problems.append(f"flush() confirmed {result.confirmed:,} of {events:,} events")
    if result.missing or result.duplicated or result.extra:
        result.problems.append(
            f"the stream is not exactly what was stored: {result.missing} missing, "
            f"{result.duplicated} duplicated, {result.extra} extra"
        )
    if result.reconnects != restarts:
        result.problems.append(f"the stream reconnected {result.reconnects} times for {restarts} restarts")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="events to send (default 20,000)")
    parser.add_argument("--restarts", type=int, default=10, help="collector restarts (default 10)")
    parser.add_argument("--rate", type=float, default=1_000.0, help="events per second (default 1,000)")
    parser.add_argument("--down", type=float, default=0.3, help="seconds the collector stays down (default 0.3)")
    parser.add_argument("--flush-every", type=float, default=0.1, help="seconds between flushes (default 0.1)")
    args = parser.parse_args(argv)
    command = "python scripts/proof_reconnect.py" + "".join(f" {shlex.quote(a)}" for a in (argv or sys.argv[1:]))
    print(f"$ {command}")
    print(
        f"theia_frames {theia_frames.__version__ if hasattr(theia_frames, '__version__') else ''}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"
    )
    try:
        result = run(
            events=args.events,
            restarts=args.restarts,
            rate=args.rate,
            down=args.down,
            flush_every=args.flush_every,
            log=lambda m: print(m, file=sys.stderr, flush=True),
        )
    except TheiaError as exc:
        print(f"the proof could not run: {exc}", file=sys.stderr)
        return 2
    print(result.format())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
