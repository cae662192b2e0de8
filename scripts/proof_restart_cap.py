"""Proof: 100 reconnecting subscribers come back through collector restarts under the per-address limit.

    python scripts/proof_restart_cap.py                                   # 100 subscribers, 4 restarts, 2,000 events/s
    python scripts/proof_restart_cap.py --subscribers 20 --restarts 2     # a quick run

A collector (``theia-frames serve``, in a process of its own, as in use) runs
on a database file and a fixed loopback port with its default limit of
connections per address (128, ``--cap``). Every party connects from
127.0.0.1, so all of them share that limit:

1. ``--subscribers`` streams ``receive(Filter(...), reconnect=True)``, half
   read by threads of the sync client and half by one asyncio loop
   (``--consumer sync|async|mixed``). After a restart each needs a ``/live``
   and a resume ``/find`` at once: 100 subscribers need 200 connections where
   the address is allowed 128, so many resume attempts are refused (503) and
   must close what they opened, wait and try again;
2. a sender writes about ``--rate`` events/s (timestamps are the time of
   sending) in slices of 50 ms, flushes every 0.5 s, and after any failure
   sends again every event not confirmed yet on a new client;
3. the main thread stops the collector (SIGTERM) ``--restarts`` times, every
   ``--every`` seconds, and starts it again after ``--down`` seconds on the
   same file and port.

At the end a ``/find`` reads every event stored; each subscriber must hold each
of them once and nothing else. Figures: ``stuck`` (subscribers not connected
or missing events ``--settle`` seconds after the last send), missing,
duplicated and extra events summed over the subscribers, the handshakes the
collector refused (its log), the most connections it held, and ``leaked``:
the TCP connections of the port still open once every subscriber and client
was closed, on the collector's side and on the clients' (as the operating
system lists them). The exit status is 1 when any of them is not 0.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psutil
import pyarrow as pa
import pyarrow.compute as pc

import theia_frames
from theia_frames import AsyncClient, Client, Event, Filter
from theia_frames.exceptions import TheiaError

__all__ = ["RestartCapResult", "run", "main"]

TAG = "proof-restart-cap"


@dataclass
class RestartCapResult:
    """The figures of one run."""

    subscribers: int = 0
    consumer: str = "mixed"
    cap: int = 128
    restarts: int = 0
    sent: int = 0
    stored: int = 0
    stuck: int = 0
    failed: int = 0
    missing: int = 0
    duplicated: int = 0
    extra: int = 0
    reconnects: int = 0
    recovered: int = 0
    refused: int = 0
    most_connections: int = 0
    leaked: int = 0
    leaked_clients: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    stuck_details: list[str] = field(default_factory=list)
    restarted_at: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            not self.problems
            and self.stored == self.sent > 0
            and self.stuck == self.failed == self.missing == self.duplicated == self.extra == 0
            and self.leaked == self.leaked_clients == 0
        )

    def format(self) -> str:
        lines = [
            f"subscribers      {self.subscribers} ({self.consumer}), {self.cap} connections per address",
            f"restarts         {self.restarts} (at {', '.join(f'{t:.1f}' for t in self.restarted_at)} s)",
            f"events sent      {self.sent:,}, stored {self.stored:,}",
            f"stuck            {self.stuck} (failed: {self.failed})",
            f"missing          {self.missing:,}",
            f"duplicated       {self.duplicated:,}",
            f"extra            {self.extra:,}",
            f"reconnects       {self.reconnects:,} (recovered by resume finds: {self.recovered:,})",
            f"refused (503)    at least {self.refused:,} handshakes (the collector's log)",
            f"most connections {self.most_connections}",
            f"leaked           {self.leaked} connections open on the collector's side, "
            f"{self.leaked_clients} on the clients', after every close",
            f"run              {self.seconds:.1f} s",
        ]
        lines += [f"PROBLEM: {p}" for p in self.problems]
        lines += [f"stuck: {d}" for d in self.stuck_details[:10]]
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)


def _refusals(log: str) -> int:
    """The handshakes the collector refused at its connection limits, from its log
    (which says how many like it it left out; the last few seconds' may be missed)."""
    count = 0
    with open(log, encoding="utf-8", errors="replace") as f:
        for line in f:
            if "refused" in line and "connections open" in line:
                more = re.search(r"\(and (\d+) more like it", line)
                count += 1 + (int(more.group(1)) if more else 0)
    return count


class _Subscriber:
    """One reconnecting stream; what it received is kept as Arrow id arrays."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.ids: list[pa.Array] = []
        self.received = 0
        self.stream: Any = None
        self.failure: BaseException | None = None
        self.done = False

    def take(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows:
            self.ids.append(batch.column(0))
            self.received += batch.num_rows

    @property
    def connected(self) -> bool:
        return self.stream is not None and not self.done and bool(self.stream.connected)


def _sync_subscriber(url: str, sub: _Subscriber, ready: threading.Event) -> None:
    try:
        with Client(url) as client:
            sub.stream = client.receive(Filter(1).match_tag(TAG), reconnect=True)
            ready.set()
            for batch in sub.stream.iter_batches():
                sub.take(batch)
    except BaseException as exc:  # every end is a figure of the proof
        sub.failure = exc
    finally:
        sub.done = True
        ready.set()


class _AsyncSubscribers(threading.Thread):
    """Subscribers of one :class:`AsyncClient` each, on one asyncio loop."""

    def __init__(self, url: str, subs: list[_Subscriber]) -> None:
        super().__init__(daemon=True, name="async-subscribers")
        self.url = url
        self.subs = subs
        self.ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_requested: asyncio.Event | None = None

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stop_requested = asyncio.Event()
        opened = 0

        async def one(sub: _Subscriber) -> None:
            nonlocal opened
            try:
                async with AsyncClient(self.url) as client:
                    sub.stream = await client.receive(Filter(1).match_tag(TAG), reconnect=True)
                    opened += 1
                    if opened == len(self.subs):
                        self.ready.set()
                    async for batch in sub.stream.iter_batches():
                        sub.take(batch)
            except BaseException as exc:  # every end is a figure of the proof
                sub.failure = exc
            finally:
                sub.done = True

        tasks = [asyncio.create_task(one(sub)) for sub in self.subs]
        if not tasks:
            self.ready.set()
        await self.stop_requested.wait()
        for sub in self.subs:
            if sub.stream is not None:
                await sub.stream.aclose()
        await asyncio.wait(tasks, timeout=10)
        self.ready.set()

    def stop(self) -> None:
        if self.loop is not None and self.stop_requested is not None and self.is_alive():
            self.loop.call_soon_threadsafe(self.stop_requested.set)
        self.join(15)


class _Sender(threading.Thread):
    """About ``rate`` events/s for ``seconds``; resends what is unconfirmed after any failure."""

    def __init__(self, url: str, rate: float, seconds: float) -> None:
        super().__init__(daemon=True, name="sender")
        self.url = url
        self.rate = rate
        self.seconds = seconds
        self.sent = 0
        self.failures = 0
        self.unconfirmed: list[Event] = []
        self.finished = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        client: Client | None = None
        start = time.monotonic()
        last_flush = start
        made = 0
        try:
            while True:
                now = time.monotonic()
                due = min(int((now - start) * self.rate), int(self.seconds * self.rate))
                fresh = [
                    Event(id=f"s{i}", timestamp=time.time(), source="/proof/restart-cap", tags=[TAG], content=str(i))
                    for i in range(made, due)
                ]
                made = due
                self.unconfirmed.extend(fresh)
                ending = made >= int(self.seconds * self.rate)
                try:
                    if client is None:
                        client = Client(self.url)
                        if self.unconfirmed:
                            client.send_many(self.unconfirmed)
                    elif fresh:
                        client.send_many(fresh)
                    if ending or now - last_flush >= 0.5:
                        client.flush(10)
                        self.unconfirmed = []
                        last_flush = now
                        if ending:
                            break
                except TheiaError:
                    self.failures += 1
                    if client is not None:
                        client.close()
                    client = None
                    time.sleep(0.1)
                    continue
                time.sleep(0.05)
            self.sent = made
        except BaseException as exc:  # reported by the proof
            self.error = exc
        finally:
            if client is not None:
                client.close()
            self.finished.set()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Collector:
    """``theia-frames serve`` in a process of its own, started again on the same file and port."""

    def __init__(self, db: str, port: int, cap: int, log: str) -> None:
        self.db, self.port, self.cap, self.log = db, port, cap, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "theia_frames", "serve", "--db", self.db, "--port", str(self.port),
                     "--max-connections-per-address", str(self.cap), "--log-level", "warning"],
                    stdout=log,
                    stderr=log,
                )
            while self.proc.poll() is None and time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                    return
                except OSError:
                    time.sleep(0.05)
            if time.monotonic() >= deadline:
                self.stop()
                with open(self.log, encoding="utf-8", errors="replace") as f:
                    tail = f.read()[-2000:]
                raise RuntimeError(f"the collector did not start on port {self.port}; its log ends:\n{tail}")
            time.sleep(0.2)  # it exited: the port of the last run may not be free yet


    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def connections(self) -> int:
        """TCP connections the collector holds open (not its listening socket)."""
        if self.proc is None:
            return 0
        try:
            listed = psutil.Process(self.proc.pid).net_connections(kind="tcp")
        except psutil.Error:
            return 0
        return sum(1 for c in listed if c.laddr and c.laddr.port == self.port and c.status == psutil.CONN_ESTABLISHED)


def _stored(url: str) -> pa.Table:
    """Every event of the proof the collector stored; retried while the
    subscribers coming back fill the address's connections (503)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            with Client(url) as client:
                return client.find(Filter(1).match_tag(TAG)).to_arrow(progress=False)
        except TheiaError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _when(stamps: pa.Array, began: float) -> str:
    """Seconds into the run of the first and last of ``stamps``."""
    seconds = stamps.to_numpy(zero_copy_only=False).astype("datetime64[us]").astype("int64") / 1e6
    return f"{seconds.min() - began:.1f}-{seconds.max() - began:.1f} s into the run"


def _client_sockets(port: int) -> int:
    """Connections of this process (the clients) to ``port`` still open."""
    return sum(
        1
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status not in (psutil.CONN_TIME_WAIT, psutil.CONN_CLOSE)
    )


def run(
    subscribers: int = 100,
    restarts: int = 4,
    rate: float = 2_000.0,
    every: float = 8.0,
    down: float = 0.5,
    settle: float = 30.0,
    cap: int = 128,
    consumer: str = "mixed",
    workdir: str | None = None,
) -> RestartCapResult:
    """One run of the proof; returns its figures."""
    if consumer not in ("sync", "async", "mixed"):
        raise ValueError(f"consumer must be sync, async or mixed, got {consumer!r}")
    result = RestartCapResult(subscribers=subscribers, consumer=consumer, cap=cap)
    began = time.monotonic()
    began_wall = time.time()
    tmp = tempfile.TemporaryDirectory() if workdir is None else None
    folder = workdir or (tmp.name if tmp is not None else ".")
    db = os.path.join(folder, "restart-cap.db")
    port = _free_port()
    collector = _Collector(db, port, cap, os.path.join(folder, "collector.log"))
    collector.start()
    url = f"ws://127.0.0.1:{port}"
    subs = [_Subscriber(i) for i in range(subscribers)]
    n_async = {"sync": 0, "async": subscribers, "mixed": subscribers // 2}[consumer]
    async_group = _AsyncSubscribers(url, subs[:n_async])
    threads: list[threading.Thread] = []
    sender: _Sender | None = None
    try:
        async_group.start()
        for sub in subs[n_async:]:
            ready = threading.Event()
            thread = threading.Thread(target=_sync_subscriber, args=(url, sub, ready), daemon=True, name=f"sub-{sub.index}")
            thread.start()
            threads.append(thread)
            if not ready.wait(10):
                result.problems.append(f"subscriber {sub.index} did not subscribe")
        if not async_group.ready.wait(30):
            result.problems.append("the asyncio subscribers did not subscribe")
        sending = every * (restarts + 1)
        sender = _Sender(url, rate, sending)
        sender.start()
        for k in range(restarts):
            time.sleep(max(0.0, began + every * (k + 1) - time.monotonic()))
            result.restarted_at.append(time.time() - began_wall)
            collector.stop()
            time.sleep(down)
            collector.start()
            result.restarts += 1
            # the connections the collector holds while the subscribers come back
            back_by = time.monotonic() + every * 0.8
            while time.monotonic() < back_by:
                result.most_connections = max(result.most_connections, collector.connections())
                if all(s.connected for s in subs):
                    break
                time.sleep(0.1)
        sender.finished.wait(sending + 60)
        if sender.error is not None:
            result.problems.append(f"the sender failed: {sender.error!r}")
        result.sent = sender.sent
        table = _stored(url)
        stored = table.column("id").combine_chunks()
        stamps = table.column("timestamp").combine_chunks()
        result.stored = len(stored)
        # every subscriber has everything within the settle time, or it is stuck
        settle_by = time.monotonic() + settle
        while time.monotonic() < settle_by and not all(s.received >= result.stored and s.connected for s in subs):
            result.most_connections = max(result.most_connections, collector.connections())
            time.sleep(0.2)
        time.sleep(0.5)  # anything more that would come twice comes now
        expected = pc.unique(stored)
        for sub in subs:
            got = pa.concat_arrays(sub.ids) if sub.ids else pa.array([], pa.string())
            counts = pc.value_counts(got)
            values, n = counts.field("values"), counts.field("counts")
            result.duplicated += int(pc.sum(pc.subtract(n, 1)).as_py() or 0)
            result.extra += int(pc.sum(pc.invert(pc.is_in(values, value_set=expected))).as_py() or 0)
            lost = pc.invert(pc.is_in(stored, value_set=values))
            missing = int(pc.sum(lost).as_py() or 0)
            result.missing += missing
            if sub.failure is not None:
                result.failed += 1
                result.problems.append(f"subscriber {sub.index} failed: {sub.failure!r}"[:300])
            if missing or not sub.connected:
                result.stuck += 1
                stream = sub.stream
                result.stuck_details.append(
                    f"subscriber {sub.index} ({'async' if sub.index < n_async else 'sync'}): connected={sub.connected}, "
                    f"received {sub.received:,}, missing {missing:,}, reconnects {getattr(stream, 'reconnects', 0)}, "
                    f"last error: {getattr(stream, 'last_error', None)!r}"[:300]
                    + (f"; the missing were sent {_when(stamps.filter(lost), began_wall)}" if missing else "")
                )
            if sub.stream is not None:
                result.reconnects += int(sub.stream.reconnects)
                result.recovered += int(sub.stream.recovered)
    finally:
        for sub in subs[n_async:]:
            if sub.stream is not None:
                sub.stream.close()
        async_group.stop()
        for thread in threads:
            thread.join(15)
        if sender is not None:
            sender.finished.wait(5)
        # what survives every close: connections of the port still open on either side
        deadline = time.monotonic() + 10
        while (collector.connections() or _client_sockets(port)) and time.monotonic() < deadline:
            time.sleep(0.1)
        result.leaked = collector.connections()
        result.leaked_clients = _client_sockets(port)
        collector.stop()
        result.refused = _refusals(collector.log)
        if tmp is not None:
            tmp.cleanup()
    result.seconds = time.monotonic() - began
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subscribers", type=int, default=100)
    p.add_argument("--restarts", type=int, default=4)
    p.add_argument("--rate", type=float, default=2_000.0, help="events per second sent")
    p.add_argument("--every", type=float, default=8.0, help="seconds between restarts")
    p.add_argument("--down", type=float, default=0.5, help="seconds the collector stays down")
    p.add_argument("--settle", type=float, default=30.0, help="seconds the subscribers get to catch up at the end")
    p.add_argument("--cap", type=int, default=128, help="the collector's connections per address")
    p.add_argument("--consumer", choices=("sync", "async", "mixed"), default="mixed")
    args = p.parse_args(argv)
    print(f"$ python {' '.join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])}")
    print(f"theia_frames {theia_frames.__version__} from {os.path.dirname(theia_frames.__file__)}; "
          f"Python {platform.python_version()}, {os.cpu_count()} cores")
    result = run(
        subscribers=args.subscribers,
        restarts=args.restarts,
        rate=args.rate,
        every=args.every,
        down=args.down,
        settle=args.settle,
        cap=args.cap,
        consumer=args.consumer,
    )
    print(result.format())
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
