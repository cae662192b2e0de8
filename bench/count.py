"""Per-minute counts where the data is: ``client.count`` on our collector against the
transfer of every event (``to_dataframe(find)`` + ``bucket``), DuckDB over a Parquet file
of the same events and Polars ``scan_parquet``, side by side in one run (best of ``--repeat``).

    python bench/count.py --events 10000000            # builds the store and the Parquet file once
    python bench/count.py --events 1000000 --repeat 3

The events: random 32-hex ids, 20 sources, 1 ms apart with up to 1 ms of jitter, 0-2 of
8 tags each, a content of about 40 bytes of which 1 in 50 says ``error``. They are
stored once into a collector's database (``--dir``, reused while it holds them) through
the store the collector serves, and written once to a Parquet file (the event time as a
UTC microsecond timestamp). Cases, each per minute: by source (time alone), by tag, by
source with a content filter (``error``). The baseline ``find`` + ``bucket`` runs for
the first case (``--no-baseline`` leaves it out).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import theia_frames as tf
from theia_frames.protocol.arrow import event_schema
from theia_frames.server.store import EventStore

T0 = 1_700_000_000.0
SOURCES = [f"/var/log/host-{i:02d}/app" for i in range(20)]
TAGS = ["auth", "db", "http", "cache", "queue", "disk", "net", "cron"]
BATCH = 500_000


def events(n: int, at: int, seed: int) -> pa.RecordBatch:
    rng = np.random.default_rng(seed)
    i = np.arange(at, at + n)
    ts = T0 + i * 0.001 + rng.random(n) * 0.001
    ids = pa.array([f"{a:016x}{b:016x}" for a, b in zip(rng.integers(0, 2**63, n), rng.integers(0, 2**63, n))])
    source = pa.DictionaryArray.from_arrays(pa.array(rng.integers(0, len(SOURCES), n), pa.int32()), pa.array(SOURCES))
    ntags = rng.integers(0, 3, n)
    offsets = np.concatenate([[0], np.cumsum(ntags)]).astype(np.int32)
    tags = pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.array(TAGS)[rng.integers(0, len(TAGS), offsets[-1])]))
    words = np.where(rng.random(n) < 0.02, "error", "ok")
    content = pa.array([f"request {k} finished {w} in {k % 997} ms" for k, w in zip(i.tolist(), words.tolist())])
    return pa.RecordBatch.from_arrays([ids, pa.array(ts), source, tags, content], schema=event_schema())


def build(
    directory: str, n: int, *, name: str = "count", more: Sequence[pa.RecordBatch] = ()
) -> tuple[str, str, dict[str, float]]:
    """The store (``{name}-{n}.db``) and the Parquet file of ``n`` events of :func:`events` and
    the batches ``more`` after them, each made once and reused while it holds them."""
    os.makedirs(directory, exist_ok=True)
    db = os.path.join(directory, f"{name}-{n}.db")
    parquet = os.path.join(directory, f"{name}-{n}.parquet")
    info: dict[str, float] = {}

    def batches() -> Iterator[pa.RecordBatch]:
        for at in range(0, n, BATCH):
            yield events(min(BATCH, n - at), at, at)
        yield from more

    store = EventStore(db)
    try:
        if store.count() != n + sum(b.num_rows for b in more):
            store.close()
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(db + suffix):
                    os.remove(db + suffix)
            store = EventStore(db)
            began = time.perf_counter()
            for b in batches():
                store.add_many(b)
            info["ingest_s"] = time.perf_counter() - began
    finally:
        store.close()
    info["db_bytes"] = float(os.path.getsize(db))
    if not os.path.exists(parquet):
        writer = None
        for b in batches():
            ts = pa.array((np.asarray(b.column("timestamp")) * 1e6).round().astype("int64"), pa.timestamp("us", tz="UTC"))
            table = pa.table({"ts": ts, "source": b.column("source").cast(pa.string()), "tags": b.column("tags"),
                              "content": b.column("content"), "id": b.column("id")})
            writer = writer or pq.ParquetWriter(parquet, table.schema)
            writer.write_table(table)
        assert writer is not None
        writer.close()
    return db, parquet, info


def best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeat):
        began = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - began)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "theia-bench-count"))
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--json", help="write the figures to this file too")
    args = ap.parse_args()

    import duckdb
    import polars as pl

    db, parquet, info = build(args.dir, args.events)
    con = duckdb.connect()
    pq_sql = parquet.replace("'", "''")
    duck = {
        "by source": f"SELECT time_bucket(INTERVAL '1 minute', ts) AS b, source, count(*) FROM read_parquet('{pq_sql}') GROUP BY ALL",
        "by tag": f"SELECT time_bucket(INTERVAL '1 minute', ts) AS b, tag, count(*) FROM "
        f"(SELECT ts, unnest(tags) AS tag FROM read_parquet('{pq_sql}')) GROUP BY ALL",
        "content filter, by source": f"SELECT time_bucket(INTERVAL '1 minute', ts) AS b, source, count(*) FROM "
        f"read_parquet('{pq_sql}') WHERE regexp_matches(content, 'error') GROUP BY ALL",
    }
    scan = pl.scan_parquet(parquet)
    polars = {
        "by source": lambda: scan.select(pl.col("ts").dt.truncate("1m"), "source").group_by(["ts", "source"]).len().collect(),
        "by tag": lambda: scan.select(pl.col("ts").dt.truncate("1m"), "tags").explode("tags").drop_nulls("tags")
        .group_by(["ts", "tags"]).len().collect(),
        "content filter, by source": lambda: scan.filter(pl.col("content").str.contains("error"))
        .select(pl.col("ts").dt.truncate("1m"), "source").group_by(["ts", "source"]).len().collect(),
    }
    ours = {
        "by source": (tf.Filter(1), "source"),
        "by tag": (tf.Filter(1), "tag"),
        "content filter, by source": (tf.EventFilter(start=1, content="error"), "source"),
    }
    rows: list[dict[str, Any]] = []
    with tf.serve(db=db, port=0) as collector, tf.Client(collector.url) as client:
        for case, (flt, by) in ours.items():
            t_ours, frame = best(lambda: client.count(flt, "1min", by), args.repeat)
            t_duck, duck_rows = best(lambda: con.sql(duck[case]).fetchall(), args.repeat)
            t_polars, pl_frame = best(polars[case], args.repeat)
            total = int(frame.to_numpy().sum())
            assert total == sum(r[-1] for r in duck_rows) == int(pl_frame["len"].sum()), case
            row = {"case": case, "events": args.events, "counted": total, "ours_s": t_ours, "duckdb_s": t_duck,
                   "polars_s": t_polars, "ours_vs_duckdb": t_ours / t_duck, "ours_vs_polars": t_ours / t_polars}
            if case == "by source" and not args.no_baseline:
                t_base, base = best(lambda: tf.bucket(tf.to_dataframe(client.find(flt), progress=False), "1min", by="source"),
                                    1)
                assert base.equals(frame)
                row["find_bucket_s"] = t_base
                row["find_bucket_vs_ours"] = t_base / t_ours
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {"events": args.events, **info, "rows": rows}
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=1)


if __name__ == "__main__":
    sys.exit(main())
