"""Proof: a slow /live subscriber cannot hurt the others, nor the collector's memory.

    python scripts/proof_slow_subscriber.py                     # 50 subscribers, 10,000 events/s for 30 s
    python scripts/proof_slow_subscriber.py --seconds 5         # a quick run

The collector runs in its own process (``theia-frames serve``) on a fresh
database file, with its default live queue bound unless ``--live-queue`` is
given. Then:

- one subscriber is *stalled*: it connects to ``/live``, subscribes, reads the
  ``ok`` and never reads again (its socket's receive buffer is kept small, so
  what the kernels can hold for it is small too);
- the other subscribers read with :meth:`theia_frames.Client.receive` (batched
  transfer; ``--plain-readers`` of them without it), each counting every event
  id it receives;
- a sender publishes ``--rate`` events per second for ``--seconds`` seconds
  (``--rate 0``: as fast as it can, ``--events`` events) and confirms with
  ``Client.flush()`` that all are stored;
- the collector's RSS (psutil) is sampled every second.

It passes when every reading subscriber received every event exactly once,
the stalled one was dropped (the collector's log says so, and its connection
ended), the store holds every event, and the RSS never exceeded the bound.
When the sender is done the stalled subscriber finally reads: what it finds
(the events that were already on their way, then the collector's error
message and close code 1013, or an abrupt end) is reported.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from fuzz_collector import Closed, CollectorProcess, RawSocket, wait_until  # noqa: E402

__all__ = ["SlowResult", "run", "main"]

_MB = 1024 * 1024


@dataclass
class SlowResult:
    subscribers: int = 0
    stalled: int = 1
    events: int = 0
    send_seconds: float = 0.0
    stored: int = 0
    flush_confirmed: int | None = None
    readers_complete: int = 0
    readers: int = 0
    reader_problems: list[str] = field(default_factory=list)
    drops_logged: int = 0
    dropped_after_s: float | None = None
    stalled_found: list[tuple[int, str | None, str]] = field(default_factory=list)  # events, error, how it ended
    rss_baseline: int = 0
    rss_samples: list[int] = field(default_factory=list)
    rss_bound: int = 0
    live_queue: str = "default"
    problems: list[str] = field(default_factory=list)

    @property
    def rss_max(self) -> int:
        return max(self.rss_samples, default=0)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        rate = self.events / self.send_seconds if self.send_seconds else 0.0
        samples = ", ".join(f"{s / _MB:.0f}" for s in self.rss_samples)
        return "\n".join([
            f"subscribers: {self.subscribers} ({self.stalled} stalled, {self.readers} reading); "
            f"live queue bound: {self.live_queue}",
            f"events sent: {self.events:,} in {self.send_seconds:.1f} s ({rate:,.0f}/s); stored: {self.stored:,}; "
            f"flush() confirmed: {self.flush_confirmed}",
            f"reading subscribers that received every event exactly once: {self.readers_complete} of {self.readers}",
            f"stalled subscribers dropped: {self.drops_logged} of {self.stalled} "
            f"(the first logged {'-' if self.dropped_after_s is None else self.dropped_after_s} s "
            "after sending began)",
            *(f"stalled subscriber {i}, reading again, found: {n:,} events, then "
              f"{'the error ' + repr(err) if err else 'no error message'}, {end}"
              for i, (n, err, end) in enumerate(self.stalled_found, 1)),
            f"collector RSS: baseline {self.rss_baseline / _MB:.0f} MB, max {self.rss_max / _MB:.0f} MB, "
            f"bound {self.rss_bound / _MB:.0f} MB",
            f"RSS every second (MB): {samples}",
            f"problems: {len(self.problems)}",
            *(f"  - {p}" for p in self.problems),
        ])


class _Reader(threading.Thread):
    """A subscriber that counts how often it received each event id (``p<n>``)."""

    def __init__(self, url: str, total: int, *, batched: bool, done: threading.Event) -> None:
        super().__init__(daemon=True)
        import numpy as np

        self.url = url
        self.total = total
        self.batched = batched
        self.done = done
        self.counts = np.zeros(total, dtype=np.uint16)
        self.received = 0
        self.ready = threading.Event()
        self.give_up = False  # set when the proof stops waiting
        self.error: BaseException | None = None

    def run(self) -> None:
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        from theia_frames import Client, EventFilter

        try:
            with Client(self.url, batch=self.batched) as client, client.receive(EventFilter()) as stream:
                self.ready.set()
                for batch in stream.iter_batches(heartbeat=0.25):
                    if batch.num_rows:
                        ids = pc.cast(pc.utf8_slice_codeunits(batch.column(0), 1), pa.int64()).to_numpy()
                        np.add.at(self.counts, ids, 1)
                        self.received += len(ids)
                    if self.received >= self.total or self.give_up:
                        return
        except BaseException as exc:  # reported by the proof
            self.error = exc
            self.ready.set()

    def verdict(self) -> str | None:
        if self.error is not None:
            return f"{type(self.error).__name__}: {self.error}"
        missing = int((self.counts == 0).sum())
        doubled = int((self.counts > 1).sum())
        if missing or doubled:
            return f"{missing} missing, {doubled} received more than once"
        return None


def _event_batches(total: int, chunk: int, base: float, step: float, content_size: int) -> Any:
    import pyarrow as pa

    from theia_frames.protocol.arrow import event_schema

    pad = "x" * content_size
    for lo in range(0, total, chunk):
        hi = min(lo + chunk, total)
        n = range(lo, hi)
        yield pa.RecordBatch.from_arrays(
            [
                pa.array([f"p{k}" for k in n]),
                pa.array([base + k * step for k in n], pa.float64()),
                pa.array([f"/dev/sensors/temp-{k % 4}" for k in n]).dictionary_encode(),
                pa.array([["sensor", "temp", "proof"]] * (hi - lo), pa.list_(pa.string())),
                pa.array([f"{20 + k % 10}.5C {pad}" for k in n]),
            ],
            schema=event_schema(),
        )


def run(*, subscribers: int = 50, stalled: int = 1, rate: int = 10_000, seconds: float = 30.0,
        events: int | None = None, live_queue: int | None = None, plain_readers: int = 0, content_size: int = 64,
        rss_bound_mb: int = 400,
        stall_rcvbuf: int = 4096, send_chunk: int = 200, confirm_each: bool = False, wake: str = "end",
        workdir: str | None = None, log: Any = None) -> SlowResult:
    """Run the proof; ``rate=0`` sends ``events`` as fast as possible, ``send_chunk`` per message.

    ``confirm_each`` waits for every message to be stored before the next (so
    each is a commit of its own, whatever the speed of the machine).
    ``wake``: when a stalled subscriber reads again, ``"end"`` (after the
    sending) or ``"drop"`` (as soon as the collector logs that it dropped it).
    """
    from theia_frames import Client

    say = log or (lambda *_: None)
    total = events if rate <= 0 else int(rate * seconds)
    assert total is not None and total > 0
    result = SlowResult(subscribers=subscribers, stalled=stalled, events=total, readers=subscribers - stalled,
                        rss_bound=rss_bound_mb * _MB)
    tmp = tempfile.TemporaryDirectory(prefix="theia-slow-") if workdir is None else None
    where = Path(workdir or tmp.name)  # type: ignore[union-attr]
    where.mkdir(parents=True, exist_ok=True)
    options = ["--log-level", "warning"]
    if live_queue is not None:
        options += ["--live-queue", str(live_queue)]
        result.live_queue = f"{live_queue:,} events"
    else:
        from theia_frames.server.collector import DEFAULT_LIVE_QUEUE

        result.live_queue = f"{DEFAULT_LIVE_QUEUE:,} events (the default)"
    collector = CollectorProcess(where / "slow.db", options=options)
    done = threading.Event()
    try:
        with collector:
            stalls = []
            for i in range(stalled):
                # the first stalled subscriber is plain, the others negotiate batched transfer
                conn = RawSocket(collector.port, "/live", rcvbuf=stall_rcvbuf, offer=i % 2 == 1)
                conn.send("{}")
                if conn.recv(30) != "ok":
                    raise RuntimeError("a stalled subscriber's filter was not accepted")
                stalls.append(conn)
            readers = [
                _Reader(collector.url, total, batched=i >= plain_readers, done=done)
                for i in range(subscribers - stalled)
            ]
            for r in readers:
                r.start()
            for r in readers:
                r.ready.wait(60)
            say(f"{len(readers)} readers and {stalled} stalled subscriber(s) connected; sending {total:,} events")
            result.rss_baseline = collector.rss()
            sampling = threading.Event()
            began = [time.monotonic()]

            def sample() -> None:
                while not sampling.wait(1.0):
                    try:
                        result.rss_samples.append(collector.rss())
                    except Exception:  # the process ended: the checks below say why
                        return
                    if result.dropped_after_s is None and "dropping live subscriber" in collector.log_text():
                        result.dropped_after_s = round(time.monotonic() - began[0], 1)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            late: dict[int, tuple[int, str | None, str]] = {}
            wakers = []
            if wake == "drop":
                for conn in stalls:
                    waker = threading.Thread(target=_wake_on_drop, args=(collector, conn, late), daemon=True)
                    waker.start()
                    wakers.append(waker)
            base = time.time()
            tick = 0.05
            chunk = max(int(rate * tick), 1) if rate > 0 else send_chunk
            step = 1.0 / rate if rate > 0 else 1e-4
            with Client(collector.url) as sender:
                began[0] = time.monotonic()
                next_at = began[0]
                for b in _event_batches(total, chunk, base, step, content_size):
                    if rate > 0:
                        delay = next_at - time.monotonic()
                        if delay > 0:
                            time.sleep(delay)
                        next_at += tick
                    sender.send_many(b, wait=confirm_each)
                flush = getattr(sender, "flush", None)
                if flush is not None:
                    result.flush_confirmed = flush(timeout=120)
                result.send_seconds = time.monotonic() - began[0]
            say(f"sent in {result.send_seconds:.1f} s; waiting for the readers")
            done.set()
            try:
                wait_until(lambda: all(r.received >= total or r.error is not None for r in readers), 120,
                           "every reader to receive every event", step=0.1)
            except TimeoutError:
                pass
            for r in readers:
                r.give_up = True
                r.join(10)
            sampling.set()
            sampler.join(5)
            if result.dropped_after_s is None and "dropping live subscriber" in collector.log_text():
                result.dropped_after_s = round(time.monotonic() - began[0], 1)
            result.drops_logged = collector.log_text().count("dropping live subscriber")
            verdicts = [r.verdict() for r in readers]
            result.readers_complete = sum(v is None for v in verdicts)
            result.reader_problems = [f"reader {i} ({'batched' if r.batched else 'plain'}): {v}"
                                      for i, (r, v) in enumerate(zip(readers, verdicts)) if v is not None]
            # The stalled subscribers read at last (or did when they were dropped).
            for waker in wakers:
                waker.join(60)
            for conn in stalls:
                result.stalled_found.append(late.get(id(conn)) or _read_late(conn))
            with Client(collector.url) as client:
                from theia_frames import EventFilter

                result.stored = sum(b.num_rows for b in client.find(EventFilter()).iter_batches())
            alive = collector.alive
        if not alive:
            result.problems.append("the collector process died")
    finally:
        done.set()
        if tmp is not None:
            tmp.cleanup()
    result.problems.extend(result.reader_problems)
    if result.readers_complete != result.readers:
        result.problems.append(f"only {result.readers_complete} of {result.readers} readers received every event once")
    if result.drops_logged < stalled:
        result.problems.append(f"{stalled - result.drops_logged} stalled subscriber(s) not dropped")
    if any(end.startswith("STILL OPEN") for _, _, end in result.stalled_found):
        result.problems.append("a stalled subscriber's connection was never ended")
    if any(n >= total for n, _, _ in result.stalled_found):
        result.problems.append("a stalled subscriber received every event: the bound was never hit")
    if result.stored != total:
        result.problems.append(f"the store holds {result.stored:,} events, not {total:,}")
    if result.flush_confirmed is not None and result.flush_confirmed != total:
        result.problems.append(f"flush() confirmed {result.flush_confirmed:,} events, not {total:,}")
    if result.rss_max > result.rss_bound:
        result.problems.append(f"the collector's RSS reached {result.rss_max / _MB:.0f} MB, over the bound")
    return result


def _wake_on_drop(collector: CollectorProcess, conn: RawSocket, into: dict[int, Any]) -> None:
    """Read ``conn`` as soon as the collector logs that it dropped it (its port names it)."""
    mark = f"dropping live subscriber 127.0.0.1:{conn.sock.getsockname()[1]}"
    try:
        wait_until(lambda: mark in collector.log_text(), 300, "the drop", step=0.02)
    except TimeoutError:
        return
    into[id(conn)] = _read_late(conn)


def _read_late(conn: RawSocket) -> tuple[int, str | None, str]:
    """What a stalled subscriber finds when it reads at last: events, the error, how it ended."""
    from theia_frames.protocol.arrow import ipc_to_batches

    events, error = 0, None
    try:
        while True:
            message = conn.recv(15)
            if isinstance(message, bytes) and message.startswith(b"event:"):
                events += 1
            elif isinstance(message, bytes):
                events += sum(b.num_rows for b in ipc_to_batches(message))
            elif message.startswith('{"error"'):
                error = json.loads(message)["error"]
    except Closed as closed:
        end = f"close code {closed.code}" if closed.code is not None else "ended without a close frame"
    except TimeoutError:
        end = "STILL OPEN (no message and no close for 15 s)"
    finally:
        conn.drop()
    return events, error, end


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=50, help="subscribers, stalled ones included (default 50)")
    parser.add_argument("--stalled", type=int, default=1, help="subscribers that never read (default 1)")
    parser.add_argument("--rate", type=int, default=10_000, help="events per second (default 10,000; 0: flat out)")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds of sending (default 30)")
    parser.add_argument("--events", type=int, default=None, help="events to send with --rate 0")
    parser.add_argument("--send-chunk", type=int, default=200, help="events per message with --rate 0 (default 200)")
    parser.add_argument("--live-queue", type=int, default=None, help="the collector's bound (default: its default)")
    parser.add_argument("--plain-readers", type=int, default=0, help="readers without batched transfer")
    parser.add_argument("--wake", choices=["end", "drop"], default="end",
                        help="when a stalled subscriber reads again: after the sending (default) or once dropped")
    parser.add_argument("--content-size", type=int, default=64, help="bytes of padding per event (default 64)")
    parser.add_argument("--rss-bound-mb", type=int, default=400, help="the RSS bound checked (default 400 MB)")
    args = parser.parse_args(argv)
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}")
    result = run(subscribers=args.subscribers, stalled=args.stalled, rate=args.rate, seconds=args.seconds,
                 events=args.events, live_queue=args.live_queue, plain_readers=args.plain_readers,
                 content_size=args.content_size,
                 rss_bound_mb=args.rss_bound_mb, send_chunk=args.send_chunk, wake=args.wake,
                 log=lambda m: print(m, file=sys.stderr, flush=True))
    print(result.format())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
