"""The collector's side of a find, in one process: ``EventStore.query_ipc`` (the messages a
``/find`` sends) of each selective query of ``bench/run.py``, over a store of its workload,
with the CPU time the store's threads spent (best of ``--repeat``, by wall time).

    python bench/find.py --n 10000000 --dir /tmp/theia-bench-find
    PYTHONPATH=<other tree> python bench/find.py --n 10000000 --dir /tmp/theia-bench-find-other   # a before/after

No client, socket or DataFrame: what is left is reading, decompressing, matching and encoding,
the part of ``bench/run.py``'s (q) rows that the collector spends. The store is built once in
``--dir`` (``EventStore.add_batch`` of the workload's batches) and reused while it holds the
events; a tree that cannot open it (another store format) needs a folder of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402


def build(path: str, n: int) -> None:
    """The workload stored in ``path`` (unless it is there already)."""
    from theia_frames.server.store import EventStore

    with EventStore(path) as store:
        if store.count() == n:
            return
        if store.count():
            raise SystemExit(f"{path} holds {store.count():,} events, not {n:,}: give another --dir")
        for batch in run.workload_batches(n):
            store.add_batch(batch)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000_000, help="events in the workload")
    ap.add_argument("--workload", choices=run.WORKLOADS, default="realistic")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--queries", help="comma-separated names of bench/run.py's queries (default: all)")
    ap.add_argument("--dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "theia-bench-find"))
    ap.add_argument("--json", help="write the figures to this file too")
    args = ap.parse_args(argv)
    run.WORKLOAD = args.workload

    from theia_frames import EventFilter
    from theia_frames.protocol.arrow import ipc_to_batches
    from theia_frames.server.store import EventStore

    os.makedirs(args.dir, exist_ok=True)
    path = os.path.join(args.dir, f"find-{args.workload}-{args.n}.db")
    build(path, args.n)
    names = args.queries.split(",") if args.queries else list(run.queries(args.n))
    rows: list[dict[str, Any]] = []
    with EventStore(path) as store:
        for name in names:
            flt = EventFilter.from_dict(run.queries(args.n)[name][0])
            sum(len(m) for m in store.query_ipc(flt))  # warm: the file's pages in memory
            best: tuple[float, float, int] | None = None
            for _ in range(args.repeat):
                t0, c0 = time.perf_counter(), time.process_time()
                sent = sum(len(m) for m in store.query_ipc(flt))
                took = (time.perf_counter() - t0, time.process_time() - c0, sent)
                best = took if best is None or took[0] < best[0] else best
            assert best is not None
            # the events sent, checked against a count of the same filter by the store's scan
            found = sum(b.num_rows for m in store.query_ipc(flt) for b in ipc_to_batches(m))
            counted = sum(b.num_rows for b in store.scan(flt, ["timestamp"]))
            assert found == counted, (name, found, counted)
            row = {"query": name, "seconds": best[0], "cpu_seconds": best[1], "found": found, "bytes_sent": best[2],
                   "events": args.n}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"events": args.n, "workload": args.workload, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
