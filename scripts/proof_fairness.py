"""Proof: a normal client is served promptly while many plain writers send flat out.

    python scripts/proof_fairness.py                        # 50 writers, 20 subscribers, 30 s
    python scripts/proof_fairness.py --seconds 10           # a quick run
    python scripts/proof_fairness.py --root /tmp/old-tree   # the same load on another checkout

The collector runs in its own process (``theia-frames serve`` of the tree at
``--root``, this checkout by default) on a fresh database file. The load runs
in other processes, so it never shares the collector's interpreter lock:

- ``--writers`` plain-dialect writers (as Go watchers send: one event per
  WebSocket message on ``/event``, never reading), spread over
  ``--writer-processes`` processes of threads, each sending as fast as its
  socket takes; every event is stamped with the time it was encoded;
- ``--subscribers`` plain ``/live`` subscribers in one process, each counting
  what it receives and how far behind its sender each event arrives (the
  writer lag: the time from encoding to delivery, i.e. commit and fan-out);
- the normal client (this process, :class:`theia_frames.Client`) in turn
  finds 10 stored events by time and sends one event with ``wait=True``
  (confirmed stored), timing each, for ``--seconds`` seconds;
- the collector's RSS (psutil) is sampled every half second.

The writer and subscriber processes run at a lower scheduling priority
(``--load-nice``, 10): on 2 shared cores they stand for machines of their own,
and unniced they take most of the CPU time before the collector gets any
(the collector then measures the machine, not its own fairness; ``--load-nice 0``
shows that case).

It prints p50/p99/max of both operations of the normal client, the events
stored per second (as the subscribers received them), the writer lag and the
peak RSS, as one JSON object at the end. The target: both p99 under 250 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED_T = 1_600_000_000.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --------------------------------------------------------------------------- writers (a process of threads)


def run_writers(url: str, threads: int, seconds: float, first: int) -> None:
    import websocket

    from theia_frames import Event
    from theia_frames.protocol.codec import encode

    sent = [0] * threads
    errors: list[str] = []

    def write(k: int) -> None:
        try:
            ws = websocket.create_connection(url + "/event", timeout=60)
        except Exception as exc:  # reported below
            errors.append(repr(exc))
            return
        end = time.monotonic() + seconds
        n = 0
        name = f"w{first + k}"
        try:
            while time.monotonic() < end:
                now = time.time()
                frames = b"".join(
                    websocket.ABNF.create_frame(
                        encode(Event(id=f"{name}-{n + i}", timestamp=now, source=f"/host/{name}", tags=["go"], content="GET /index.html 200 " + "x" * 80)),
                        websocket.ABNF.OPCODE_BINARY,
                    ).format()
                    for i in range(50)
                )
                ws.sock.sendall(frames)
                n += 50
                sent[k] = n
        except Exception as exc:
            errors.append(repr(exc))
        finally:
            try:
                ws.sock.close()
            except OSError:
                pass

    workers = [threading.Thread(target=write, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    print(json.dumps({"sent": sum(sent), "errors": errors[:3]}), flush=True)


# --------------------------------------------------------------------------- subscribers (a process of threads)


def run_subscribers(url: str, count: int, seconds: float) -> None:
    import websocket

    from theia_frames.protocol.codec import decode

    received = [0] * count
    lags: list[list[float]] = [[] for _ in range(count)]
    closes: list[str] = []

    def read(k: int) -> None:
        ws = websocket.create_connection(url + "/live", timeout=5)
        ws.send(json.dumps({"start": SEED_T + 1000}))
        assert ws.recv() == "ok"
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                opcode, data = ws.recv_data(control_frame=True)
            except (websocket.WebSocketTimeoutException, socket.timeout):
                continue
            except Exception as exc:
                closes.append(repr(exc))
                return
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                closes.append(f"closed {data[:2].hex()} {data[2:].decode(errors='replace')}")
                return
            if opcode not in (websocket.ABNF.OPCODE_BINARY, websocket.ABNF.OPCODE_TEXT):
                continue
            received[k] += 1
            if received[k] % 100 == 0:
                lags[k].append(time.time() - decode(data).timestamp)
        ws.close()

    readers = [threading.Thread(target=read, args=(k,)) for k in range(count)]
    for r in readers:
        r.start()
    for r in readers:
        r.join()
    every = [x for lag in lags for x in lag]
    print(json.dumps({
        "received": received,
        "lag_p50_s": percentile(every, 0.5),
        "lag_max_s": max(every) if every else None,
        "closes": closes[:3],
    }), flush=True)


# --------------------------------------------------------------------------- the proof


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--writers", type=int, default=50)
    ap.add_argument("--writer-processes", type=int, default=5)
    ap.add_argument("--subscribers", type=int, default=20)
    ap.add_argument("--load-nice", type=int, default=10, help="niceness of the load processes (default 10)")
    ap.add_argument("--root", default=HERE, help="the checkout whose collector runs (default: this one)")
    ap.add_argument("--role", choices=("writers", "subscribers"), help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=10, help=argparse.SUPPRESS)
    ap.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role is not None:
        os.nice(args.load_nice)
    if args.role == "writers":
        run_writers(args.url, args.threads, args.seconds, args.first)
        return 0
    if args.role == "subscribers":
        run_subscribers(args.url, args.threads, args.seconds)
        return 0

    import psutil

    from theia_frames import Client, Event, EventFilter
    from theia_frames.exceptions import TheiaError

    env = dict(os.environ, PYTHONPATH=os.path.abspath(args.root), PYTHONUNBUFFERED="1")
    tmp = tempfile.mkdtemp(prefix="proof-fairness-")
    collector = subprocess.Popen(
        [sys.executable, "-m", "theia_frames", "serve", "--db", os.path.join(tmp, "events.db"), "--port", "0",
         "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=tmp,
    )
    load: list[subprocess.Popen[str]] = []
    try:
        line = collector.stdout.readline()  # type: ignore[union-attr]
        url = line.split("listening on ", 1)[1].split()[0]
        client = Client(url)
        client.send_many([Event(id=f"seed{i}", timestamp=SEED_T + i, source="/seed", content="seed") for i in range(10)], wait=True)
        process = psutil.Process(collector.pid)
        rss0 = process.memory_info().rss
        cpu0 = sum(process.cpu_times()[:2])
        me = [sys.executable, os.path.abspath(__file__), "--url", url, "--seconds", str(args.seconds + 4), "--load-nice", str(args.load_nice)]
        per = -(-args.writers // args.writer_processes)
        load.append(subprocess.Popen(me + ["--role", "subscribers", "--threads", str(args.subscribers)], stdout=subprocess.PIPE, text=True))
        time.sleep(1.0)  # the subscribers are in
        for p in range(args.writer_processes):
            threads = min(per, args.writers - p * per)
            if threads > 0:
                load.append(subprocess.Popen(me + ["--role", "writers", "--threads", str(threads), "--first", str(p * per)], stdout=subprocess.PIPE, text=True))
        peak = [rss0]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.5):
                try:
                    peak[0] = max(peak[0], process.memory_info().rss)
                except psutil.Error:
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        time.sleep(2.0)  # the writers are at full speed
        finds: list[float] = []
        sends: list[float] = []
        short: list[int] = []
        failed: list[str] = []
        def stored() -> int:
            return int(client.count(EventFilter(start=SEED_T + 1000)).select_dtypes("number").to_numpy().sum())

        stored0, t0 = stored(), time.monotonic()
        end = time.monotonic() + args.seconds
        n = 0
        while time.monotonic() < end:
            t = time.perf_counter()
            try:
                got = list(client.find(EventFilter(start=SEED_T, end=SEED_T + 9.5)))
                if len(got) != 10:
                    short.append(len(got))
            except TheiaError as exc:  # a timeout counts with the time it took
                failed.append(f"find: {exc}"[:200])
            finds.append(time.perf_counter() - t)
            t = time.perf_counter()
            try:
                client.send(Event(id=f"normal{n}", timestamp=SEED_T + 100 + n, source="/normal", content="one"), wait=True)
            except TheiaError as exc:
                failed.append(f"send: {exc}"[:200])
            sends.append(time.perf_counter() - t)
            n += 1
        stored_rate = (stored() - stored0) / (time.monotonic() - t0)
        cpu = (sum(process.cpu_times()[:2]) - cpu0) / (args.seconds + 3)
        outputs = [json.loads((p.communicate(timeout=120)[0] or "{}").strip().splitlines()[-1]) for p in load]
        done.set()
        subs = outputs[0]
        sent = sum(o.get("sent", 0) for o in outputs[1:])
        per_sub = subs.get("received") or [0]
        result: dict[str, Any] = {
            "root": os.path.abspath(args.root),
            "writers": args.writers,
            "subscribers": args.subscribers,
            "seconds": args.seconds,
            "load_nice": args.load_nice,
            "find_ms": {"n": len(finds), "p50": 1000 * percentile(finds, 0.5), "p99": 1000 * percentile(finds, 0.99), "max": 1000 * max(finds)},
            "send_ms": {"n": len(sends), "p50": 1000 * percentile(sends, 0.5), "p99": 1000 * percentile(sends, 0.99), "max": 1000 * max(sends)},
            "finds_short": short[:5],
            "failed": len(failed),
            "first_failures": failed[:2],
            "events_sent": sent,
            "events_stored_per_s": stored_rate,
            "events_received_per_s_by_subscriber_min_max": [min(per_sub) / (args.seconds + 4), max(per_sub) / (args.seconds + 4)],
            "writer_lag_s": {"p50": subs.get("lag_p50_s"), "max": subs.get("lag_max_s")},
            "rss_mb": {"start": rss0 / 1e6, "peak": peak[0] / 1e6},
            "collector_cpu_s_per_s": cpu,
            "subscriber_closes": subs.get("closes"),
            "writer_errors": [e for o in outputs[1:] for e in o.get("errors", [])][:3],
        }
        result["pass"] = result["find_ms"]["p99"] < 250 and result["send_ms"]["p99"] < 250 and not short and not failed
        print(json.dumps(result, indent=1))
        client.close()
        return 0 if result["pass"] else 1
    finally:
        for p in load:
            if p.poll() is None:
                p.kill()
                p.wait()
        collector.terminate()
        try:
            collector.wait(timeout=30)
        except subprocess.TimeoutExpired:
            collector.kill()
            collector.wait()


if __name__ == "__main__":
    sys.exit(main())
