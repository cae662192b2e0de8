"""Storing events with the identity rule, into a file store, in two workloads:

- ``bulk``: 400,000 sensor events in 40 batches of 10,000, then the last 100,000 sent again
  (every one an exact repeat, told apart from copies with other content);
- ``flood``: 600 commits of 200 events, as the collector's writer makes them under many
  plain writers: groups of 50 events of one timestamp from one writer, each commit's times
  spread over the last ``--spread`` seconds, so every commit overlaps many stored chunks
  (merged after each commit, as the collector does).

Pass the root of the tree to measure, to compare two trees in one run (e.g. a
``git worktree`` of the commit before):

    python bench/store_identity.py /tmp/old    # the tree before
    python bench/store_identity.py .           # this tree
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", help="the tree whose theia_frames is measured")
    ap.add_argument("--runs", type=int, default=3, help="runs of each workload (the median is printed)")
    ap.add_argument("--spread", type=float, default=3.0, help="seconds a flood commit's times spread over")
    args = ap.parse_args()
    root = os.path.abspath(args.root)
    sys.path.insert(0, root)
    import numpy as np

    import theia_frames
    from theia_frames.event import Event
    from theia_frames.protocol.arrow import events_to_batch
    from theia_frames.server.store import EventStore
    from theia_frames.simulation import sensor_events

    assert theia_frames.__file__.startswith(root), theia_frames.__file__
    evs = list(sensor_events(400_000, sources=4, rate=10_000, start=1.7e9, seed=1))
    batches = [events_to_batch(evs[i : i + 10_000]) for i in range(0, len(evs), 10_000)]
    rng = np.random.default_rng(1)
    flood = []
    n = 0
    for c in range(600):
        group: list[Event] = []
        for _ in range(4):
            w, ts = int(rng.integers(50)), 1.7e9 + c * 0.01 - float(rng.random()) * args.spread
            group += [Event(id=f"w{w}-{n + i}", timestamp=ts, source=f"/host/w{w}", tags=["go"], content="GET /index.html 200 " + "x" * 80) for i in range(50)]
            n += 50
        flood.append(events_to_batch(group))
    bulk_times, repeat_times, flood_times = [], [], []
    for _ in range(args.runs):
        folder = tempfile.mkdtemp()
        with EventStore(os.path.join(folder, "bulk.db")) as store:
            t = time.perf_counter()
            for b in batches:
                store.add_batch(b, validated=True)
            t1 = time.perf_counter()
            for b in batches[-10:]:  # all repeats
                store.add_batch(b, validated=True)
            bulk_times.append(t1 - t)
            repeat_times.append(time.perf_counter() - t1)
        with EventStore(os.path.join(folder, "flood.db")) as store:
            t = time.perf_counter()
            for b in flood:
                store.add_batch(b, compact=False, validated=True)
                store.compact()
            flood_times.append(time.perf_counter() - t)
    med = statistics.median
    print(f"{root}: new events median {med(bulk_times):.3f} s, 100k repeats median {med(repeat_times):.3f} s, "
          f"flood of 600 commits of 200 median {med(flood_times):.3f} s ({120_000 / med(flood_times):,.0f} events/s)")


if __name__ == "__main__":
    main()
