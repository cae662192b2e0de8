"""Proof: a live stream with ``reconnect=True`` survives collector restarts, nothing missing, nothing twice.

    python scripts/proof_reconnect.py                              # 20,000 events, 10 restarts
    python scripts/proof_reconnect.py --events 2000 --restarts 3   # a quick run

An embedded collector (``theia_frames.serve``) runs on a database file and a
fixed loopback port. Three parties:

1. a subscriber, subscribed before anything is sent: with ``--consumer
   stream`` (the default) ``Client.receive(filter, reconnect=True)`` read
   with ``iter_batches()`` on its own thread; with ``--consumer liveframe`` a
   :class:`~theia_frames.live.frame.LiveFrame` (``reconnect=True`` is its default),
   whose rows are read at the end;
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
(or the frame) must hold each of them exactly once and nothing else: 0
missing, 0 duplicated, 0 extra; and the collector must hold every event
sent. The exit status is 1 when anything is off.
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
from theia_frames import Client, Event, EventFilter, Filter, serve
from theia_frames.server.collector import Collector
from theia_frames.exceptions import TheiaError, TheiaTimeoutError, TransportError

__all__ = ["ReconnectResult", "run", "main"]

TAG = "proof-reconnect"


@dataclass
class ReconnectResult:
    """The figures of one run."""

    consumer: str = "stream"
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
            f"{'live stream' if self.consumer == 'stream' else 'LiveFrame'}: "
            f"{self.received:,} events received, {self.distinct:,} distinct; "
            f"missing {self.missing}, duplicated {self.duplicated}, extra {self.extra}",
            f"reconnects: {self.reconnects}; time away: {self.gap_total:.2f} s in total, "
            f"longest {self.gap_longest:.2f} s; recovered by resume finds: {self.recovered:,}; "
            f"errors recorded: {self.stream_errors}",
            f"run time: {self.seconds:.1f} s",
            "result: " + ("OK" if self.ok else "FAILED: " + "; ".join(self.problems)),
        ]
        return "\n".join(lines)


class _StreamConsumer:
    """``Client.receive(..., reconnect=True)`` read with ``iter_batches()`` on a thread."""

    def __init__(self, url: str, flt: EventFilter, options: dict[str, Any]) -> None:
        self.client = Client(url)
        self.stream = self.client.receive(flt, reconnect=True, **options)
        self.received: list[str] = []
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._read, name="proof-reader", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for batch in self.stream.iter_batches(heartbeat=0.25):
                self.received.extend(batch.column("id").to_pylist())
        except BaseException as exc:  # reported by run()
            self.failure = exc

    def ids(self) -> list[str]:
        return list(self.received)

    def status(self) -> tuple[int, float, float, int, int]:
        """reconnects, last gap, total gap, recovered, errors"""
        s = self.stream
        gap = s.gap
        return s.reconnects, gap.last, gap.total, s.recovered, len(s.errors)

    def close(self) -> None:
        self.stream.close()
        self.thread.join(5)
        self.client.close()


class _FrameConsumer:
    """A :class:`~theia_frames.live.frame.LiveFrame`, reconnecting by default."""

    def __init__(self, url: str, flt: EventFilter, options: dict[str, Any]) -> None:
        from theia_frames.live.frame import LiveFrame

        self.client = Client(url)
        self.frame = LiveFrame(self.client, flt, receive_options=options).start()

    @property
    def failure(self) -> BaseException | None:
        if self.frame.state == "failed":
            errors = self.frame.errors
            return errors[-1] if errors else RuntimeError("the LiveFrame failed")
        return None

    def ids(self) -> list[str]:
        return self.frame.table.column("id").to_pylist()

    def status(self) -> tuple[int, float, float, int, int]:
        s = self.frame.status()
        return s.reconnects, s.gap_last, s.gap_total, s.recovered, s.errors

    def close(self) -> None:
        self.frame.stop()
        self.client.close()


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
    consumer: str = "stream",
    workdir: str | None = None,
    log: Callable[[str], Any] = lambda message: None,
) -> ReconnectResult:
    """Run the proof; returns its figures (``result.ok`` tells whether it held)."""
    if consumer not in ("stream", "liveframe"):
        raise ValueError(f"consumer must be 'stream' or 'liveframe', got {consumer!r}")
    result = ReconnectResult(consumer=consumer, events=events, rate=rate, restarts=restarts, down=down)
    began = time.monotonic()
    deadline = began + 120 + 3 * events / rate + restarts * (down + 5)
    tmp = tempfile.TemporaryDirectory(prefix="proof-reconnect-") if workdir is None else None
    db = str(Path(workdir or tmp.name) / "events.db")  # type: ignore[union-attr]
    collector = serve(db=db, port=0)
    port = collector.port
    url = collector.url
    t0 = time.time()
    wanted: set[str] = set()
    received: list[str] = []
    longest = 0.0
    options = {"backoff": 0.02, "max_backoff": 0.5, "resume_margin": 5.0}
    kind = _StreamConsumer if consumer == "stream" else _FrameConsumer
    reader = kind(url, Filter(t0 - 1).match_tag(TAG), options)

    def watch() -> int:
        """Note the longest gap; returns the reconnects so far (raises if the reader failed)."""
        nonlocal longest
        if reader.failure is not None:
            raise RuntimeError(f"the {consumer} failed: {reader.failure!r}")
        reconnects, last, _, _, _ = reader.status()
        longest = max(longest, last)
        return reconnects

    sender = _Sender(url, events, rate, t0, flush_every, deadline)
    try:
        sender.start()
        sending = events / rate
        for k in range(restarts):
            # evenly spread over the sending time, and only once the stream is back
            # from the previous restart: each restart is one the stream must survive
            at = began + sending * (k + 1) / (restarts + 1)
            while time.monotonic() < deadline and (watch() < k or time.monotonic() < at):
                time.sleep(0.01)
            if sender.is_alive():
                result.restarts_while_sending += 1
            collector.stop()
            time.sleep(down)
            collector = _start(db, port, deadline)
            log(f"restart {k + 1}/{restarts} done; {len(reader.ids()):,} events received so far")
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
        while time.monotonic() < deadline and reader.failure is None:
            watch()
            if wanted <= set(reader.ids()):
                break
            time.sleep(0.05)
        time.sleep(0.2)  # anything repeated late would show now
        received = reader.ids()
        watch()
    except RuntimeError as exc:
        result.problems.append(str(exc))
    finally:
        reader.close()
        collector.stop()
        if tmp is not None:
            tmp.cleanup()
    if reader.failure is not None:
        result.problems.append(f"the {consumer} failed: {reader.failure!r}")
    counts = Counter(received)
    result.received = len(received)
    result.distinct = len(counts)
    result.duplicated = sum(c - 1 for c in counts.values())
    result.missing = len(wanted - counts.keys())
    result.extra = len(counts.keys() - wanted)
    reconnects, last, total, recovered, errors = reader.status()
    result.reconnects = reconnects
    result.gap_total = total
    result.gap_longest = max(longest, last)
    result.recovered = recovered
    result.stream_errors = errors
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
    parser.add_argument(
        "--consumer",
        choices=("stream", "liveframe"),
        default="stream",
        help="what subscribes: a LiveStream read with iter_batches() (default) or a LiveFrame",
    )
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
            consumer=args.consumer,
            log=lambda m: print(m, file=sys.stderr, flush=True),
        )
    except TheiaError as exc:
        print(f"the proof could not run: {exc}", file=sys.stderr)
        return 2
    print(result.format())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
