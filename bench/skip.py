"""A rare tag in a burst: a find and a count of the events tagged ``incident`` (1,000 of them,
in ten seconds) among 10,000,000 others, against DuckDB and Polars over a Parquet file of the
same events, side by side in one run (best of ``--repeat``).

    python bench/skip.py --events 10000000 --dir /tmp/theia-bench-skip

The events are those of ``bench/count.py`` (random 32-hex ids, 20 sources, 1 ms apart with
jitter, 0-2 of 8 tags each), with 1,000 more tagged ``incident`` (besides their usual tags)
in ten seconds at two thirds of the range: what an analyst looks for after an incident.
Stored once into a collector's database (``--dir``, reused while it holds them) and written
once to a Parquet file. Cases: ``to_dataframe(client.find(tag))`` and ``client.count(tag,
"1min", "source")``; DuckDB ``list_contains(tags, 'incident')``; Polars
``list.contains``. Every engine's answer is checked equal.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import pyarrow as pa

import theia_frames as tf
from theia_frames.protocol.arrow import event_schema

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from count import T0, best, build  # noqa: E402

BURST = 1_000


def burst(n: int) -> pa.RecordBatch:
    """``BURST`` events tagged ``incident`` in ten seconds at two thirds of the range."""
    rng = np.random.default_rng(99)
    ts = np.sort(T0 + (2 * n // 3) * 0.001 + rng.random(BURST) * 10.0)
    ids = pa.array([f"incident-{i:06d}" for i in range(BURST)])
    source = pa.DictionaryArray.from_arrays(pa.array(rng.integers(0, 3, BURST), pa.int32()), pa.array(["/var/log/db", "/var/log/api", "/var/log/lb"]))
    tags = pa.array([["incident", "db"] if i % 2 else ["incident"] for i in range(BURST)], pa.list_(pa.string()))
    content = pa.array([f"connection refused, retry {i}" for i in range(BURST)])
    return pa.RecordBatch.from_arrays([ids, pa.array(ts), source, tags, content], schema=event_schema())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "theia-bench-skip"))
    ap.add_argument("--json", help="write the figures to this file too")
    args = ap.parse_args()

    import duckdb
    import polars as pl

    db, parquet, _ = build(args.dir, args.events, name="skip", more=[burst(args.events)])
    con = duckdb.connect()
    pq_sql = parquet.replace("'", "''")
    scan = pl.scan_parquet(parquet)
    flt = tf.EventFilter(start=1, tags=("incident",))
    rows = []
    with tf.serve(db=db, port=0) as collector, tf.Client(collector.url) as client:
        t_find, frame = best(lambda: tf.to_dataframe(client.find(flt), progress=False), args.repeat)
        t_duck, duck = best(lambda: con.sql(f"SELECT * FROM read_parquet('{pq_sql}') WHERE list_contains(tags, 'incident')").df(), args.repeat)
        t_pl, polars = best(lambda: scan.filter(pl.col("tags").list.contains("incident")).collect(), args.repeat)
        assert len(frame) == len(duck) == len(polars) == BURST, (len(frame), len(duck), len(polars))
        rows.append({"case": "find -> frame", "ours_s": t_find, "duckdb_s": t_duck, "polars_s": t_pl})
        t_count, counted = best(lambda: client.count(flt, "1min", "source"), args.repeat)
        t_duck, duck = best(lambda: con.sql(
            f"SELECT time_bucket(INTERVAL '1 minute', ts) AS b, source, count(*) FROM read_parquet('{pq_sql}') "
            "WHERE list_contains(tags, 'incident') GROUP BY ALL").fetchall(), args.repeat)
        t_pl, polars = best(lambda: scan.filter(pl.col("tags").list.contains("incident"))
                            .select(pl.col("ts").dt.truncate("1m"), "source").group_by(["ts", "source"]).len().collect(), args.repeat)
        assert int(counted.to_numpy().sum()) == sum(r[-1] for r in duck) == int(polars["len"].sum()) == BURST
        rows.append({"case": "count by source", "ours_s": t_count, "duckdb_s": t_duck, "polars_s": t_pl})
    for row in rows:
        row.update(events=args.events, ours_vs_duckdb=row["ours_s"] / row["duckdb_s"], ours_vs_polars=row["ours_s"] / row["polars_s"])
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"events": args.events, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    sys.exit(main())
