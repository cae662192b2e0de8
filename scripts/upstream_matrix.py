"""Filters x servers: the differential matrix at full size, with counts.

Starts the real upstream collector (file store and SQL store, ``tests/upstream.py``)
and this project's collector, stores the same sensor-like events in each
(``--events``, default 10,000), runs every filter of ``tests/test_upstream.py``
through ``find`` on each, and prints one row per filter: the expected count,
each server's count, and whether every server gave exactly the expected events
in the expected order. Exits non-zero if any row disagrees.

    python scripts/upstream_matrix.py --events 10000
"""

from __future__ import annotations

import argparse
import concurrent.futures
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import theia_frames as tf  # noqa: E402
from test_upstream import FIND_FILTERS, dataset, expected, keys, load  # noqa: E402
from upstream import UpstreamCollector  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--idle-timeout", type=float, default=3.0, help="silence that ends an upstream find")
    args = parser.parse_args()
    events = dataset(args.events, step=180.0 / max(args.events, 1) * 1.2)
    with tempfile.TemporaryDirectory() as tmp, UpstreamCollector(Path(tmp) / "file") as up_file, \
            UpstreamCollector(Path(tmp) / "sql", store="sql") as up_sql, tf.serve(db=":memory:", port=0) as ours:
        servers = {"upstream-file": up_file.url, "upstream-sql": up_sql.url, "ours": ours.url}
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda url: load(url, events, timeout=900), servers.values()))
        print(f"stored {len(events):,} events in each of {len(servers)} servers in {time.monotonic() - started:.1f} s")

        def run(server: str) -> dict[str, list]:
            # One find at a time per server: upstream answers finds one after
            # another on its one store thread, and a find waiting behind another
            # hears silence, which ends it (docs/protocol.md).
            return {name: keys(tf.find(servers[server], f, idle_timeout=args.idle_timeout))
                    for name, f in FIND_FILTERS.items()}

        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(len(servers)) as pool:
            by_server = dict(zip(servers, pool.map(run, servers)))
        results = {(name, s): by_server[s][name] for s in servers for name in FIND_FILTERS}
        print(f"{len(FIND_FILTERS)} filters on each server in {time.monotonic() - started:.1f} s")
    print(f"| filter | expected | {' | '.join(servers)} | agree |")
    print(f"| --- | --- | {' | '.join('---' for _ in servers)} | --- |")
    bad = 0
    for name, f in FIND_FILTERS.items():
        want = keys(expected(f, events))
        same = all(results[(name, s)] == want for s in servers)
        bad += not same
        counts = " | ".join(f"{len(results[(name, s)]):,}" for s in servers)
        print(f"| {name} | {len(want):,} | {counts} | {'yes' if same else 'NO'} |")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
