"""Proof: concurrent finds share a memory total, and the memory comes back when they end.

    python scripts/proof_find_memory.py                          # 50 readers of 2,000,000 events
    python scripts/proof_find_memory.py --events 500000 --readers 20 --seconds 20
    python scripts/proof_find_memory.py --root /tmp/old-tree     # the same on another checkout

The collector runs in its own process (``theia-frames serve`` of the tree at
``--root``, this checkout by default) on a fresh database file holding
``--events`` events (about 150 bytes each). Then ``--readers`` slow readers
(threads of another process) each start a batched ``/find`` of every event
and read it at ``--rate`` bytes per second for ``--seconds`` seconds, then
leave. The collector's RSS (psutil) is sampled every half second: before,
at its peak while they read, and 10 s after they left. ``--max-find-memory``
is passed to the collector when given (an older tree has no such flag).
It prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T0 = 1_600_000_000.0


def run_readers(url: str, readers: int, seconds: float, rate: int) -> None:
    import websocket

    from theia_frames.protocol.arrow import SUBPROTOCOL

    got = [0] * readers
    errors: list[str] = []

    def read(k: int) -> None:
        try:
            ws = websocket.create_connection(url + "/find", timeout=60, header=[f"Sec-WebSocket-Protocol: {SUBPROTOCOL}"])
            ws.send(json.dumps({"start": 1}))
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                data = ws.sock.recv(min(rate // 10, 1 << 20))
                if not data:
                    break
                got[k] += len(data)
                time.sleep(0.1)
            ws.sock.close()
        except Exception as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=read, args=(k,)) for k in range(readers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"bytes_read": sum(got), "errors": errors[:3]}), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--readers", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rate", type=int, default=1_000_000, help="bytes per second each reader takes")
    ap.add_argument("--max-find-memory", type=int, default=None)
    ap.add_argument("--root", default=HERE)
    ap.add_argument("--role", choices=("readers",), help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "readers":
        run_readers(args.url, args.readers, args.seconds, args.rate)
        return 0

    import psutil

    from theia_frames import Client, Event

    tmp = tempfile.mkdtemp(prefix="proof-find-memory-")
    env = dict(os.environ, PYTHONPATH=os.path.abspath(args.root), PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "theia_frames", "serve", "--db", os.path.join(tmp, "events.db"), "--port", "0", "--log-level", "warning"]
    if args.max_find_memory is not None:
        command += ["--max-find-memory", str(args.max_find_memory)]
    collector = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=tmp)
    try:
        url = collector.stdout.readline().split("listening on ", 1)[1].split()[0]  # type: ignore[union-attr]
        with Client(url) as client:
            step = 100_000
            for at in range(0, args.events, step):
                client.send_many(
                    [Event(id=f"e{i}", timestamp=T0 + i / 1000, source=f"/host/{i % 50}", tags=["a", "b"], content=f"GET /item/{i} 200 " + "x" * 80)
                     for i in range(at, min(at + step, args.events))],
                    wait=True,
                )
        process = psutil.Process(collector.pid)
        time.sleep(2.0)
        base = process.memory_info().rss
        samples: list[tuple[float, int]] = []
        done = threading.Event()
        start = time.monotonic()

        def sample() -> None:
            while not done.wait(0.5):
                try:
                    samples.append((time.monotonic() - start, process.memory_info().rss))
                except psutil.Error:
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        readers = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--role", "readers", "--url", url, "--readers", str(args.readers),
             "--seconds", str(args.seconds), "--rate", str(args.rate)],
            stdout=subprocess.PIPE, text=True,
        )
        out = json.loads(readers.communicate(timeout=args.seconds + 120)[0].strip().splitlines()[-1])
        left = time.monotonic() - start
        time.sleep(10.0)
        done.set()
        sampler.join()
        during = [rss for t, rss in samples if t <= left]
        after = [rss for t, rss in samples if t > left]
        result: dict[str, Any] = {
            "root": os.path.abspath(args.root),
            "events": args.events,
            "readers": args.readers,
            "rate_per_reader": args.rate,
            "max_find_memory": args.max_find_memory,
            "bytes_read": out["bytes_read"],
            "reader_errors": out["errors"],
            "rss_mb": {
                "before": base / 1e6,
                "peak_while_reading": max(during, default=0) / 1e6,
                "10s_after_they_left": after[-1] / 1e6 if after else None,
            },
        }
        print(json.dumps(result, indent=1))
        return 0
    finally:
        collector.terminate()
        try:
            collector.wait(timeout=30)
        except subprocess.TimeoutExpired:
            collector.kill()
            collector.wait()


if __name__ == "__main__":
    sys.exit(main())
