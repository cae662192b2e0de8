"""Attacks on the collector, full size: memory, latency of a normal client, nothing lost.

    python scripts/attack_collector.py                  # every attack
    python scripts/attack_collector.py --attack bomb    # one of them (see --help)

Each attack runs against a fresh collector in its own process (``theia-frames
serve`` on a database file, default limits). While it runs, a *normal client*
(theia_frames.Client, batched transfer) loops: ``send_many`` of 10 events with
``wait=True``, then a ``find`` of a narrow time range; every call's latency is
kept. The collector's RSS is sampled every 0.1 s. After the attackers leave,
the RSS is sampled again for a few seconds, the normal client's events are
read back (every confirmed one must be there), and the collector is stopped
with SIGTERM (the time that takes is printed). Each attack prints one line of
figures; RELIABILITY.md keeps them.

The attacks are those of issue 13, items 1-9:

- ``bomb``: batched ``/event`` messages whose ZSTD-compressed buffers declare
  256 MB and 512 MB events (9 KB and 18 KB on the wire), and one of 36 KB
  declaring 1.1 GB, while the normal client's events share the commits;
- ``patterns``: a ``/live`` filter of 20,000 tag patterns, four ``/find``s of
  100,000 ``.*`` patterns (both refused), then the worst that is accepted:
  four ``/find``s and a ``/live`` subscriber with 64 patterns each over a
  store of 200,000 events while 2,000 events/s arrive;
- ``compile``: eight distinct 9 MB content patterns (refused), then 300
  distinct 4 KB patterns (the largest accepted), each a subscriber that leaves;
- ``queue``: eight connections sending valid 13.4 MB messages as fast as
  they can for 20 s;
- ``wal``: a ``/find`` that stops reading on a store of 200,000 events while
  1.5 million more arrive (the write-ahead log's size is printed);
- ``connections``: the collector with ``ulimit -n 1024``; 1,100 connections
  from one address that then say nothing, and 300 raw TCP connections that
  never handshake;
- ``sigterm``: SIGTERM while four finds with 64 patterns, a stalled find, a
  costly live filter and ingest as fast as it goes all run; then a restart on
  the same file, where every event the normal client had confirmed must be;
- ``handshakes``: 5,000 handshakes with two Authorization headers, 5,000 to
  unknown paths, 100 batches with a 60,000-column schema (the collector's log
  size and traceback count are printed).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from fuzz_collector import CollectorProcess  # noqa: E402

__all__ = ["ATTACKS", "run", "main"]

_MB = 1024 * 1024
T_PROBE = 1_600_000_000.0  # the normal client's events: a time range of their own
T_ATTACK = 1_700_000_000.0


# --------------------------------------------------------------------------- measuring


class Sampler(threading.Thread):
    """The collector's RSS every 0.1 s."""

    def __init__(self, collector: CollectorProcess) -> None:
        super().__init__(daemon=True)
        self.collector = collector
        self.samples: list[int] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.samples.append(self.collector.rss())
            except Exception:
                return
            time.sleep(0.1)

    def peak(self) -> int:
        return max(self.samples, default=0)


def _probe(url: str, name: str, stop: Any, marks: Any, out: Any, token: str | None) -> None:
    """The normal client (in a process of its own, so the attackers' work in this
    one does not slow it): send_many(10, wait=True), then a narrow find, again and
    again. ``marks`` counts its calls (the parent reads it to know the warm-up is
    over); puts (sends, finds, confirmed ids, failures) on ``out`` when stopped."""
    from theia_frames import Client, Event, Filter

    sends: list[float] = []
    finds: list[float] = []
    confirmed: list[str] = []
    failures: list[str] = []
    n = 0
    with Client(url, timeout=60, token=token) as client:
        while not stop.is_set():
            events = [Event(id=f"{name}-{n + i}", timestamp=T_PROBE + n + i, source="/probe", tags=["p"],
                            content="normal") for i in range(10)]
            t = time.perf_counter()
            try:
                client.send_many(events, wait=True)
                sends.append(time.perf_counter() - t)
                confirmed.extend(e.id for e in events)
            except Exception as exc:
                failures.append(f"send: {exc}")
                time.sleep(0.1)
            t = time.perf_counter()
            try:
                got = list(client.find(Filter(T_PROBE + n).match_end(T_PROBE + n + 9)))
                finds.append(time.perf_counter() - t)
                if len(got) != 10 and not failures:
                    failures.append(f"find: {len(got)} of 10 events")
            except Exception as exc:
                failures.append(f"find: {exc}")
                time.sleep(0.1)
            marks.value = len(sends)
            n += 10
            time.sleep(0.02)
    out.put((sends, finds, confirmed, failures))


class Probe:
    """The normal client, in its own process (see :func:`_probe`)."""

    def __init__(self, url: str, name: str = "probe", token: str | None = None) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.url = url
        self.token = token
        self._stop = ctx.Event()
        self._marks = ctx.Value("i", 0)
        self._out = ctx.Queue()
        self._proc = ctx.Process(target=_probe, args=(url, name, self._stop, self._marks, self._out, token), daemon=True)
        self.sends: list[float] = []
        self.finds: list[float] = []
        self.confirmed: set[str] = set()
        self.failures: list[str] = []

    def start(self) -> None:
        self._proc.start()

    def calls(self) -> int:
        return int(self._marks.value)

    def stop(self) -> None:
        self._stop.set()
        sends, finds, confirmed, failures = self._out.get(timeout=120)
        self._proc.join(30)
        self.sends, self.finds, self.confirmed, self.failures = sends, finds, set(confirmed), failures

    def missing(self) -> int:
        from theia_frames import Client, Filter

        with Client(self.url, timeout=60, token=self.token) as client:
            found = {e.id for e in client.find(Filter(T_PROBE).match_end(T_PROBE + 1e8).match_source("/probe"))}
        return len(self.confirmed - found)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


def latency(values: list[float]) -> str:
    if not values:
        return "no calls"
    return f"p50 {_pct(values, 0.5):.0f} / p99 {_pct(values, 0.99):.0f} / max {max(values) * 1000:.0f} ms ({len(values)} calls)"


# --------------------------------------------------------------------------- helpers


def ws(url: str, path: str, *, batched: bool = False, **kw: Any) -> Any:
    import websocket

    from theia_frames.protocol.arrow import SUBPROTOCOL

    header = [f"Sec-WebSocket-Protocol: {SUBPROTOCOL}"] if batched else []
    return websocket.create_connection(url + path, timeout=30, header=header + kw.pop("header", []), **kw)


def zstd_message(content_bytes: int, n: int = 1) -> bytes:
    import pyarrow as pa

    from theia_frames import Event
    from theia_frames.protocol.arrow import events_to_batch

    batch = events_to_batch([Event(id=f"bomb{i}", timestamp=T_ATTACK + i, content="x" * content_bytes) for i in range(n)])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
        writer.write(batch)
    return sink.getvalue().to_pybytes()


def feed(url: str, stop: threading.Event, rate: float | None, total: int | None = None, size: int = 100) -> Callable[[], int]:
    """A sender of events (``rate`` per second, or as fast as it can until ``total``); returns a counter."""
    from theia_frames import Client
    from theia_frames.protocol.arrow import columns_to_batch
    from theia_frames.protocol.codec import EventColumns

    sent = [0]
    first = next(_FEEDS) * 100_000_000  # ids and timestamps of its own

    def run() -> None:
        with Client(url, timeout=120) as client:
            step = 1000 if rate is None else max(1, int(rate // 10))
            while not stop.is_set() and (total is None or sent[0] < total):
                k = first + sent[0]
                cols = EventColumns([f"f{k + i}" for i in range(step)], [T_ATTACK + (k + i) * 1e-3 for i in range(step)],
                                    ["/feed"] * step, ["sensor,temp"] * step, ["y" * size] * step)
                client.send_many(columns_to_batch(cols), wait=rate is None and (k // step) % 20 == 0)
                sent[0] += step
                if rate is not None:
                    time.sleep(step / rate)
            client.flush()

    threading.Thread(target=run, daemon=True).start()
    return lambda: sent[0]


_FEEDS = itertools.count()


def preload(url: str, n: int, size: int = 100) -> None:
    stop = threading.Event()
    count = feed(url, stop, None, total=n, size=size)
    while count() < n:
        time.sleep(0.1)


# --------------------------------------------------------------------------- the attacks


def prepare_bomb() -> list[bytes]:
    return [zstd_message(256 * _MB), zstd_message(512 * _MB), zstd_message(1100 * _MB)]


def attack_bomb(url: str, note: dict[str, Any], messages: list[bytes]) -> None:
    note["sizes"] = ", ".join(f"{len(m) / 1024:.0f} KB" for m in messages)
    counts = [0, 0]  # sent, refused
    stop = threading.Event()

    def attacker() -> None:
        c = ws(url, "/event", batched=True)
        i = 0
        while not stop.is_set():
            c.send_binary(messages[i % 3])
            answer = c.recv()
            counts[0] += 1
            counts[1] += "decodes to more than" in answer
            i += 1
        c.close()

    threads = [threading.Thread(target=attacker, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(15)
    stop.set()
    for t in threads:
        t.join(30)
    note["refused"] = f"{counts[1]} of {counts[0]} (4 connections, 15 s)"


def attack_patterns(url: str, note: dict[str, Any]) -> None:
    refused = []
    c = ws(url, "/live")
    c.send(json.dumps({"start": 1, "tags": [f"tag{i}" for i in range(20_000)]}))
    refused.append("patterns" in c.recv())
    c.close()
    for _ in range(4):
        c = ws(url, "/find")
        c.send(json.dumps({"start": 1, "tags": [".*"] * 100_000}))
        refused.append("patterns" in c.recv())
        c.close()
    note["refused"] = f"{sum(refused)} of {len(refused)}"
    preload(url, 200_000)
    stop = threading.Event()
    count = feed(url, stop, 2000)
    live = ws(url, "/live")
    live.send(json.dumps({"start": 1, "tags": [f"(sensor|temp|x{i})" for i in range(63)], "content": "y+z?"}))
    assert live.recv() == "ok"
    got = [0]

    def read_live() -> None:
        try:
            while True:
                live.recv()
                got[0] += 1
        except Exception:
            pass

    threading.Thread(target=read_live, daemon=True).start()
    finds = []

    def heavy_find() -> None:
        try:
            f = ws(url, "/find", batched=True)
            finds.append(f)
            f.send(json.dumps({"start": 1, "tags": [".*"] * 63, "content": "y.*y"}))
            while f.recv_data()[0] != 8:
                pass
        except Exception:
            pass

    for _ in range(4):
        threading.Thread(target=heavy_find, daemon=True).start()
    time.sleep(20)
    stop.set()
    note["fed"] = count()
    note["live messages"] = got[0]
    live.close()
    for f in finds:
        f.close()


def attack_sigterm(collector: CollectorProcess, note: dict[str, Any]) -> CollectorProcess:
    """SIGTERM while it works hard: four finds with 64 patterns, a stalled find, a
    costly live filter, ingest as fast as it goes; then a restart on the same file."""
    url = collector.url
    preload(url, 200_000)
    stop = threading.Event()
    feed(url, stop, None, total=10_000_000)
    stalled = ws(url, "/find", sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
    stalled.send(json.dumps({"start": 1}))
    live = ws(url, "/live")
    live.send(json.dumps({"start": 1, "tags": [f"(sensor|temp|x{i})" for i in range(63)], "content": "y+z?"}))
    finds = []
    for _ in range(4):
        f = ws(url, "/find", batched=True)
        f.send(json.dumps({"start": 1, "tags": [".*"] * 63, "content": "y.*y"}))
        finds.append(f)
    time.sleep(5)
    t = time.monotonic()
    status = collector.stop(timeout=60)
    note["SIGTERM under load"] = f"stopped in {time.monotonic() - t:.1f} s, exit status {status}"
    stop.set()
    restarted = CollectorProcess(collector.db, options=collector.options).start()
    return restarted


def attack_compile(url: str, note: dict[str, Any]) -> None:
    refused = 0
    for i in range(8):
        c = ws(url, "/live")
        c.send(json.dumps({"start": 1, "content": f"a{i}" + "b" * (9 * _MB)}))
        refused += "longer than" in c.recv()
        c.close()
    note["9 MB patterns refused"] = f"{refused} of 8"
    accepted = 0
    for i in range(300):
        c = ws(url, "/live")
        pattern = f"(x{i}|" + "|".join(f"[a-z]{{{j % 20 + 1}}}q{j}" for j in range(400))
        pattern = pattern[:4090] + ")"
        try:
            c.send(json.dumps({"start": 1, "content": pattern}))
            accepted += c.recv() == "ok"
        finally:
            c.close()
    note["4 KB patterns accepted"] = f"{accepted} of 300"


def attack_queue(url: str, note: dict[str, Any], message: bytes) -> None:
    stop = threading.Event()
    sent = [0]

    def attacker(k: int) -> None:
        c = ws(url, "/event")
        try:
            while not stop.is_set():
                c.send_binary(message)  # the same event each time: stored once, decoded every time
                sent[0] += 1
        except Exception:
            pass
        finally:
            c.close()

    for k in range(8):
        threading.Thread(target=attacker, args=(k,), daemon=True).start()
    time.sleep(20)
    stop.set()
    note["13.4 MB messages sent"] = sent[0]


def attack_wal(url: str, note: dict[str, Any], db: str) -> None:
    preload(url, 200_000, size=200)
    f = ws(url, "/find", sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
    f.send(json.dumps({"start": 1}))
    assert f.recv() == "ok"
    wal = db + "-wal"
    sizes = []
    stop = threading.Event()
    count = feed(url, stop, 30_000, total=1_500_000)  # 50 s: past the 30 s stall timeout
    started = time.monotonic()
    while count() < 1_500_000:
        time.sleep(0.5)
        sizes.append((time.monotonic() - started, os.path.getsize(wal) if os.path.exists(wal) else 0))
    note["WAL max in the first 30 s"] = f"{max(s for t, s in sizes if t < 30) / _MB:.0f} MB"
    note["WAL max after 35 s"] = f"{max(s for t, s in sizes if t > 35) / _MB:.0f} MB"
    note["WAL every 5 s (MB)"] = ", ".join(f"{s / _MB:.0f}" for t, s in sizes[::10])
    time.sleep(2)
    f.close()
    preload(url, 10_000)  # a commit after it left: the next checkpoint cuts the log back
    time.sleep(1)
    note["WAL after"] = f"{os.path.getsize(wal) / _MB:.0f} MB"


def attack_connections(url: str, note: dict[str, Any]) -> None:
    import websocket

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    host, port = url.rsplit("//", 1)[1].rsplit(":", 1)

    def from_other_address() -> socket.socket:
        # the attacker's address is not the normal client's (loopback: 127.0.0.2)
        sock = socket.socket()
        sock.bind(("127.0.0.2", 0))
        sock.connect((host, int(port)))
        return sock

    held, refused = [], 0
    for _ in range(1100):
        try:
            held.append(ws(url, "/event", socket=from_other_address()))
        except websocket.WebSocketBadStatusException:
            refused += 1
    raw = [from_other_address() for _ in range(300)]
    note["accepted / refused (503)"] = f"{len(held)} / {refused}"
    time.sleep(15)
    for s in raw:
        s.close()
    for c in held:
        c.close()


def attack_handshakes(url: str, note: dict[str, Any]) -> None:
    import pyarrow as pa
    import websocket

    from theia_frames.protocol.arrow import batch_to_ipc

    statuses: dict[int, int] = {}
    for i in range(10_000):
        header = ["Authorization: Bearer s3cret", "Authorization: Bearer s3cret"] if i % 2 == 0 else ["Authorization: Bearer s3cret"]
        path = "/event" if i % 2 == 0 else f"/nowhere{i}"
        try:
            ws(url, path, header=header).close()
            statuses[101] = statuses.get(101, 0) + 1
        except websocket.WebSocketBadStatusException as exc:
            statuses[exc.status_code] = statuses.get(exc.status_code, 0) + 1
    schema = pa.schema([(f"column_{i}", pa.string()) for i in range(60_000)])
    message = batch_to_ipc(pa.RecordBatch.from_pylist([], schema=schema))
    c = ws(url, "/event", batched=True, header=["Authorization: Bearer s3cret"])
    longest = 0
    for _ in range(100):
        c.send_binary(message)
        longest = max(longest, len(c.recv()))
    c.close()
    note["HTTP statuses"] = ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))
    note["longest error echoed"] = f"{longest} bytes"


def prepare_queue() -> bytes:
    from theia_frames import Event
    from theia_frames.protocol.codec import encode

    return encode(Event(id="q", timestamp=T_ATTACK, content="z" * int(13.4 * _MB)))


PREPARE: dict[str, Callable[[], Any]] = {"bomb": prepare_bomb, "queue": prepare_queue}

ATTACKS: dict[str, Callable[..., None]] = {
    "bomb": attack_bomb,
    "patterns": attack_patterns,
    "compile": attack_compile,
    "queue": attack_queue,
    "wal": attack_wal,
    "connections": attack_connections,
    "handshakes": attack_handshakes,
    "sigterm": attack_sigterm,
}


def _limit_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


def run(name: str, workdir: str) -> dict[str, Any]:
    """Run one attack; returns its figures."""
    db = os.path.join(workdir, f"{name}.db")
    options = ["--log-level", "info"]
    env = None
    if name == "handshakes":
        options += ["--token", "s3cret"]
    collector = CollectorProcess(db, options=options, env=env)
    if name == "connections":
        # the collector's own ulimit -n, as on a common machine
        import subprocess

        real_popen = subprocess.Popen

        def popen(*args: Any, **kw: Any) -> Any:
            return real_popen(*args, preexec_fn=_limit_files, **kw)

        subprocess.Popen = popen  # type: ignore[misc]
        try:
            collector.start()
        finally:
            subprocess.Popen = real_popen  # type: ignore[misc]
    else:
        collector.start()
    note: dict[str, Any] = {}
    sampler = Sampler(collector)
    sampler.start()
    time.sleep(1.0)
    baseline = collector.rss()
    prepared = PREPARE[name]() if name in PREPARE else None
    probe = Probe(collector.url, token="s3cret" if name == "handshakes" else None)
    probe.start()
    deadline = time.monotonic() + 60
    while probe.calls() < 20 and time.monotonic() < deadline:
        time.sleep(0.1)
    warm = probe.calls()
    t = time.monotonic()
    if name == "wal":
        attack_wal(collector.url, note, db)
    elif name == "sigterm":
        collector = attack_sigterm(collector, note)
        sampler.stopped.set()
        sampler = Sampler(collector)
        probe.url = collector.url
    elif prepared is not None:
        ATTACKS[name](collector.url, note, prepared)
    else:
        ATTACKS[name](collector.url, note)
    during = time.monotonic() - t
    done = probe.calls()
    peak = sampler.peak()
    time.sleep(5.0)
    after = collector.rss()
    probe.stop()
    sends_during, finds_during = probe.sends[warm:done], probe.finds[warm:done]
    missing = probe.missing()
    sampler.stopped.set()
    t = time.monotonic()
    status = collector.stop(timeout=60)
    stop_seconds = time.monotonic() - t
    log = collector.log_text()
    return {
        "attack": name,
        "seconds": during,
        "rss": f"baseline {baseline / _MB:.0f} MB, peak {peak / _MB:.0f} MB, 5 s after {after / _MB:.0f} MB",
        "send_many(10, wait=True)": latency(sends_during),
        "find": latency(finds_during),
        "normal client": f"{len(probe.confirmed)} events confirmed, {missing} of them missing, {len(probe.failures)} failed calls"
        + (f" (first: {probe.failures[0][:120]})" if probe.failures else ""),
        "SIGTERM": f"stopped in {stop_seconds:.1f} s, exit status {status}",
        "log": f"{len(log.encode()) / 1024:.0f} KB, {log.count('Traceback')} tracebacks, "
               f"{log.count('dropping live subscriber')} subscriber(s) dropped, {log.count('cutting off /find')} find(s) cut off",
        **note,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attack", choices=sorted(ATTACKS), action="append", help="the attack(s) to run (default: all)")
    args = parser.parse_args(argv)
    import psutil
    import pyarrow
    import websockets

    print(f"{time.strftime('%Y-%m-%d')}: {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GB, "
          f"Linux {platform.release()}, Python {platform.python_version()}, pyarrow {pyarrow.__version__}, "
          f"websockets {websockets.__version__}", flush=True)
    failed = False
    with tempfile.TemporaryDirectory(prefix="theia-attack-") as workdir:
        for name in args.attack or list(ATTACKS):
            result = run(name, workdir)
            print(f"\n== {name} ({result.pop('attack')}, {result.pop('seconds'):.0f} s)", flush=True)
            for key, value in result.items():
                print(f"   {key}: {value}", flush=True)
            failed |= " 0 of them missing" not in result["normal client"] or "exit status 0" not in result["SIGTERM"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
