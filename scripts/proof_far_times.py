"""Proof: events at far times (a sender's milliseconds taken as seconds) never cost a reader
its good events.

    python scripts/proof_far_times.py                  # 10,000 good events, 1 in 20 sent far
    python scripts/proof_far_times.py --events 2000 --no-upstream

For each collector (this package's, and the real upstream one of ``tests/upstream.py`` unless
``--no-upstream`` or it cannot be installed), a ``LiveFrame`` subscribes to everything, then a
plain-protocol writer (one event per WebSocket message on ``/event``, written by hand, as
the Go watchers and the upstream CLI write them) sends ``--events`` good events at the
current time with an event at ``now * 1000`` after every ``--every`` of them. Then:

- ``to_dataframe(find)`` of the time range must hold every good event, in order, and no far one;
- the ``LiveFrame`` must hold every good event and no far one;
- ours refuses each far event at ``/event`` (it is never stored); upstream stores it, and
  its find and live stream skip and report it.

It prints the figures of each collector and exits 1 when a good event is missing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.join(os.path.dirname(HERE), "tests")


def plain_event(id: str, seconds: float, content: str) -> bytes:
    """An event in the plain dialect written by hand (the client refuses to encode a far time)."""
    header = f"id:{id}\ntimestamp:{seconds:.7f}\nsource:/far-proof\ntags:\n".encode()
    body = content.encode()
    return b"event: %d %d %d\n" % (len(header) + len(body), len(header), len(body)) + header + body + b"\n"


def wait_until(check: Any, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.1)
    return bool(check())


def prove(name: str, url: str, events: int, every: int) -> dict[str, Any]:
    import websocket

    import theia_frames as tf
    from theia_frames import Client, Filter

    now = time.time()
    good = [f"g{i}" for i in range(events)]
    live = tf.LiveFrame(url, Filter(now - 60), window="1h", reconnect=False, max_rows=events + 1000)
    live.start()
    far_sent = 0
    try:
        if not wait_until(lambda: live.status().phase == "live", 30):
            raise SystemExit(f"{name}: the LiveFrame did not subscribe")
        ws = websocket.create_connection(url + "/event", timeout=30)
        t0 = time.perf_counter()
        try:
            for i, id in enumerate(good):
                ws.send_binary(plain_event(id, now + i * 1e-3, f"reading {i}"))
                if (i + 1) % every == 0:
                    ws.send_binary(plain_event(f"far{far_sent}", now * 1000 + far_sent, "milliseconds as seconds"))
                    far_sent += 1
        finally:
            ws.close()
        sent_s = time.perf_counter() - t0
        wait_until(lambda: len(live.df) >= events, 60)
        live_ids = live.df["id"].tolist()
        live_errors = live.status().errors
    finally:
        live.stop()
    span = Filter(now - 10)  # far times are inside it: a reader meets them
    wait_until(lambda: len(list(tf.find(url, span, idle_timeout=10))) >= events, 60)
    with Client(url) as client:
        result = client.find(span, idle_timeout=10)
        df = tf.to_dataframe(result)
        skipped = result.skipped
    found = df["id"].tolist()
    ok = found == good and sorted(live_ids, key=lambda s: int(s[1:])) == good
    return {
        "collector": name,
        "good sent": events,
        "far sent": far_sent,
        "sent in s": round(sent_s, 2),
        "found (to_dataframe)": len(found),
        "found in order, no far one": found == good,
        "find skipped and reported": skipped,
        "LiveFrame rows": len(live_ids),
        "LiveFrame holds every good one, no far one": sorted(live_ids, key=lambda s: int(s[1:])) == good,
        "LiveFrame errors": live_errors,
        "pass": ok,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000, help="good events sent to each collector")
    ap.add_argument("--every", type=int, default=20, help="a far event after every this many good ones")
    ap.add_argument("--no-upstream", action="store_true", help="this package's collector only")
    args = ap.parse_args()
    import theia_frames as tf

    results = []
    with tempfile.TemporaryDirectory(prefix="proof-far-") as tmp:
        with tf.serve(db=os.path.join(tmp, "events.db"), port=0) as ours:
            results.append(prove("theia_frames", ours.url, args.events, args.every))
        if not args.no_upstream:
            sys.path.insert(0, TESTS)
            try:
                from upstream import UpstreamCollector, UpstreamUnavailable

                with UpstreamCollector(os.path.join(tmp, "upstream")) as up:
                    results.append(prove("upstream (file store)", up.url, args.events, args.every))
            except UpstreamUnavailable as exc:  # reported, not proved
                print(f"upstream collector unavailable: {str(exc)[:200]}")
    for r in results:
        print("  ".join(f"{k}: {v}" for k, v in r.items()))
    return 0 if results and all(r["pass"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
