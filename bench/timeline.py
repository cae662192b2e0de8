"""``client.timeline`` over a store built by ``bench/count.py``: best of ``--repeat``, beside
``client.count(filter, "1s", "source")`` and, with ``--baseline``, ``tf.timeline`` of the frame of
every event (checked: the exact columns equal, ``max_gap`` within a second).

    python bench/count.py --events 10000000 --repeat 1 --dir /tmp/b10     # builds /tmp/b10/count-10000000.db
    python bench/timeline.py /tmp/b10/count-10000000.db --baseline
    python bench/timeline.py /tmp/b100/count-100000000.db --max-groups 3000000
"""

from __future__ import annotations

import argparse
import json
import time

import theia_frames as tf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("db", help="an event store (bench/count.py --dir)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--max-groups", type=int, default=1_000_000, help="the collector's max_groups")
    ap.add_argument("--baseline", action="store_true", help="also tf.timeline(to_dataframe(find)) (holds every event)")
    args = ap.parse_args()
    with tf.serve(db=args.db, port=0, max_groups=args.max_groups) as collector, tf.Client(collector.url) as client:
        runs = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            frame = client.timeline(tf.Filter(1))
            runs.append(time.perf_counter() - t)
        t = time.perf_counter()
        client.count(tf.Filter(1), "1s", "source", max_buckets=None)
        out: dict[str, object] = {
            "db": args.db,
            "timeline_s": min(runs),
            "timeline_runs": runs,
            "count_1s_by_source_s": time.perf_counter() - t,
            "sources": len(frame),
            "events": int(frame["count"].sum()),
        }
        if args.baseline:
            t = time.perf_counter()
            want = tf.timeline(tf.to_dataframe(client.find(tf.Filter(1)), progress=False))
            out["find_timeline_s"] = time.perf_counter() - t
            exact = ["first", "last", "count", "span", "rate"]
            out["exact_columns_equal"] = bool(frame[exact].equals(want[exact]))
            out["max_gap_within_1s"] = bool(((frame["max_gap"] - want["max_gap"]).abs() < "1s").all())
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
